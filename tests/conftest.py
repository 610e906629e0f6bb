"""The shared fixtures (small generated data, a tiny Transformer trained on a toy task); the helpers the test
modules share are in tests/helpers/."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers.commands import run_cli
from helpers.corpora import tiny_train_overrides, write_corpus
from helpers.models import TOY_SYMBOLS, train_toy_model, transformer_config

# In-process tests run the products on oneDNN where it works (what kernels.linear=onednn configures; a
# process that configures nothing uses MKL), as the suite did before the kernel plan was configurable.
from seq2seq.models.kernels import gemm  # noqa: E402
from seq2seq.models.model import build_model  # noqa: E402

gemm.configure("onednn")


@pytest.fixture(scope="session")
def toy_model():
    """A 2-layer Transformer that has learned to reverse sequences (trained once per test session).

    500 Adam steps at 3e-3 decaying linearly to zero: over seeds 0-7 this learns 99.5-100% of the reversals at
    one thread and at two. The former 400 steps at a constant 2e-3 learned 91.5-100% depending on the seed and on
    the host's summation order (seed 4: 100% on one host at two threads, 54% on another), which made the
    exact-reversal test a coin toss across machines. No test depends on this seed's particular model."""
    torch.manual_seed(4)
    model = build_model(transformer_config(), 4 + TOY_SYMBOLS, 4 + TOY_SYMBOLS)
    return train_toy_model(model, steps=500, lr=3e-3, seed=4, decay=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    write_corpus(root)
    return root


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """(data root, run folder) of a tiny Transformer trained for 60 steps through the real CLI, once per module."""
    root = tmp_path_factory.mktemp("data")
    write_corpus(root)
    run_dir = root / "run"
    run_cli("train", *tiny_train_overrides(root, run_dir, steps=60))
    return root, run_dir
