"""Shared fixtures: small generated data and a tiny Transformer trained on a toy task."""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seq2seq.data.batching import collate
from seq2seq.data.tokenizer import EOS
from seq2seq.models.model import build_model
from seq2seq.training.trainer import Trainer, TrainerOptions

REPO = Path(__file__).resolve().parents[1]

# In-process tests run the products on oneDNN where it works (what kernels.linear=onednn configures; a
# process that configures nothing uses MKL), as the suite did before the kernel plan was configurable.
from seq2seq.models import gemm  # noqa: E402

gemm.configure("onednn")
TOY_SYMBOLS = 10  # ids 4 .. 13


def transformer_config(layers: int = 2, dim: int = 64, heads: int = 4, ffn: int = 128, dropout: float = 0.0,
                       max_positions: int = 64) -> dict:
    return {
        "embed_dim": dim, "dropout": dropout, "max_positions": max_positions, "share_embeddings": True,
        "tie_output": True,
        "encoder": {"_target_": "seq2seq.models.transformer.TransformerEncoder", "name": "transformer",
                    "layers": layers, "heads": heads, "ffn_dim": ffn, "dropout": dropout},
        "decoder": {"_target_": "seq2seq.models.transformer.TransformerDecoder", "name": "transformer",
                    "layers": layers, "heads": heads, "ffn_dim": ffn, "dropout": dropout},
        "attention": {"_target_": "seq2seq.models.attention.MultiHeadAttention", "name": "multihead", "heads": heads},
    }


def toy_pairs(n: int, seed: int, min_len: int = 3, max_len: int = 8) -> list[tuple[list[int], list[int]]]:
    """Reversal task over symbols 4..13: target is the source reversed."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        src = [rng.randrange(4, 4 + TOY_SYMBOLS) for _ in range(rng.randint(min_len, max_len))]
        pairs.append((src, src[::-1]))
    return pairs


def train_toy_model(model, steps: int = 400, batch_size: int = 64, lr: float = 2e-3, seed: int = 0, pairs=None,
                    decay: bool = False):
    """Adam on (source, target) id pairs (default: the reversal task), batch_size pairs a step; with decay the
    rate falls linearly to zero over the steps (the last updates settle instead of jumping at the full rate)."""
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps if decay else 1.0)
    data = pairs if pairs is not None else toy_pairs(steps * batch_size, seed)
    model.train()
    for step in range(steps):
        chunk = data[step * batch_size : (step + 1) * batch_size]
        batch = collate([s for s, _ in chunk], [t for _, t in chunk])
        loss = model(batch.src, batch.prev_tokens, batch.target).loss
        optimizer.zero_grad()
        (loss / batch.ntokens).backward()
        optimizer.step()
        schedule.step()
    model.eval()
    return model


@pytest.fixture(scope="session")
def toy_model():
    """A 2-layer Transformer that has learned to reverse sequences (trained once per test session).

    500 Adam steps at 3e-3 decaying linearly to zero: over seeds 0-7 this learns 99.5-100% of the reversals at
    one thread and at two. The former 400 steps at a constant 2e-3 learned 91.5-100% depending on the seed and on
    the host's summation order (seed 4: 100% on one host at two threads, 54% on another), which made the
    exact-reversal test a coin toss across machines. Seed 4 also leaves some beam hypotheses' source positions
    under-covered, which the coverage-penalty test needs (tests/test_generation_controls.py)."""
    torch.manual_seed(4)
    model = build_model(transformer_config(), 4 + TOY_SYMBOLS, 4 + TOY_SYMBOLS)
    return train_toy_model(model, steps=500, lr=3e-3, seed=4, decay=True)


# ---------------------------------------------------------------- corpora on disk
WORDS = "the a cat dog sees eats red blue small big house tree runs sleeps under over".split()
TRANSLATE = {w: w.upper()[::-1] for w in WORDS}


def toy_corpus_lines(n: int, seed: int) -> tuple[list[str], list[str]]:
    """A word-substitution 'translation' task: target words are the reversed, upper-cased source words."""
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(2, 7))]
        src.append(" ".join(words))
        tgt.append(" ".join(TRANSLATE[w] for w in words))
    return src, tgt


def write_corpus(root: Path, name: str = "toy", n_train: int = 1500, n_valid: int = 40) -> Path:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("val", n_valid, 2), ("test", n_valid, 3)):
        src, tgt = toy_corpus_lines(n, seed)
        (folder / f"{split}.src").write_text("\n".join(src) + "\n")
        (folder / f"{split}.tgt").write_text("\n".join(tgt) + "\n")
    return folder


def tiny_train_overrides(root: Path, run_dir: Path, name: str = "toy", steps: int = 40) -> list[str]:
    """Command-line overrides that train a tiny model on write_corpus's data in seconds."""
    return [
        f"data.root={root}", f"data.path={name}", "data.src=src", "data.tgt=tgt",
        "data.splits.train=train", "data.splits.valid=val", "data.splits.test=test",
        f"data.cache_dir={root / 'cache'}", "data.batch_tokens=600",
        "tokenizer.vocab_size=80", "model.embed_dim=32", "model.max_positions=128",
        "model.encoder.layers=1", "model.encoder.heads=2", "model.encoder.ffn_dim=64",
        "model.decoder.layers=1", "model.decoder.heads=2", "model.decoder.ffn_dim=64",
        "model.attention.heads=2", "optim.lr=0.005", "lr_scheduler.warmup_steps=10",
        f"trainer.max_steps={steps}", "trainer.valid_every=20", "trainer.log_every=1", "trainer.progress=false",
        "threads=1", f"run_dir={run_dir}",
        # fixed choices: two runs compared float for float (resume) must not measure their way to different ones
        "kernels.linear=onednn", "trainer.precision=fp32",
    ]


def run_cli(module: str, *args: str, stdin: bytes | None = None, cwd: Path | None = None, check: bool = True):
    """Run `python -m seq2seq.<module> args...` and return the CompletedProcess (text stdout/stderr).

    seq2seq-decode gets precision=fp32 and kernels.linear=onednn unless the test names them: precision=auto
    and kernels.linear=auto are chosen by timing on the host, and the CLI tests compare outputs float for float
    (alone vs batched, decode vs serve), which must not depend on what a host measured."""
    if module == "decode" and "--help" not in args:
        named = {a.split("=", 1)[0] for a in args}
        args = (*args, *(f"{k}={v}" for k, v in (("precision", "fp32"), ("kernels.linear", "onednn")) if k not in named))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("SEQ2SEQ_DATA", None)
    proc = subprocess.run([sys.executable, "-m", f"seq2seq.{module}", *args], input=stdin, capture_output=True,
                          cwd=cwd or REPO, env=env, timeout=600)
    proc.stdout, proc.stderr = proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    if check and proc.returncode != 0:
        raise AssertionError(f"seq2seq.{module} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def greedy_reference(model, src: list[int], max_len: int = 20) -> list[int]:
    """Plain greedy decoding by full recomputation, the slow obvious way (a test oracle)."""
    from seq2seq.data.batching import pad_source
    from seq2seq.data.tokenizer import BOS

    source = pad_source([src])
    prev = [BOS]
    with torch.no_grad():
        for _ in range(max_len):
            scores = model(source, torch.tensor([prev]))
            logp = scores[0, -1].log_softmax(-1)
            logp[:4] = torch.where(torch.arange(4) == EOS, logp[:4], torch.tensor(float("-inf")))
            token = int(logp.argmax())
            if token == EOS:
                break
            prev.append(token)
    return prev[1:]


# ---------------------------------------------------------------- tiny training runs shared by several test modules


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("SEQ2SEQ_DATA", None)
    return env


def steps_logged(run: Path) -> int:
    path = run / "metrics.jsonl"
    return sum('"loss"' in line for line in path.read_text().splitlines()) if path.is_file() else 0


def wait_for_steps(run: Path, proc: subprocess.Popen, n: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while steps_logged(run) < n:
        assert proc.poll() is None, f"training ended early with {proc.returncode}"
        assert time.time() < deadline, "training did not start in time"
        time.sleep(0.05)


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    write_corpus(root)
    return root


def make_trainer(root: Path, run: Path, steps: int, dist=None, config=None, optim=None, schedule=None,
                 **options) -> Trainer:
    """A tiny Trainer in this process (for what needs no second process); config: a model config
    (default a 1-layer Transformer), optim: optim keys to change, schedule: the lr_scheduler group."""
    from seq2seq.data.prepare import prepare_data
    from seq2seq.generation.search import GenerationOptions
    from seq2seq.models.model import build_model

    splits = {"train": "train", "valid": "val", "test": "test"}
    data = prepare_data({"root": str(root), "path": "toy", "format": "text", "src": "src", "tgt": "tgt",
                         "splits": splits, "cache_dir": str(root / "cache")},
                        {"model_type": "unigram", "vocab_size": 80, "joint": True, "character_coverage": 1.0,
                         "max_sentences": 10_000})
    config = config or transformer_config(layers=1, dim=32, heads=2, ffn=64, dropout=0.1, max_positions=128)
    torch.manual_seed(1)
    model = build_model(config, data.tokenizer.src_vocab_size, data.tokenizer.tgt_vocab_size)
    opts = TrainerOptions(**{"max_steps": steps, "valid_every": 1000, "valid_max_sentences": 4, "log_every": 1,
                             "progress": False, "precision": "fp32", **options})
    optim = {"lr": 0.005, "betas": (0.9, 0.98), "eps": 1e-9, "weight_decay": 0.0, "clip_norm": 1.0,
             "label_smoothing": 0.1, **(optim or {})}
    return Trainer(model, data, run, opts, optim=optim,
                   schedule=schedule or {"warmup_steps": 10, "warmup_init_lr": 1e-7},
                   batch_tokens=600, valid_batch_tokens=2000, generation=GenerationOptions(strategy="greedy"),
                   model_config=config, seed=1, device=torch.device("cpu"), **({"dist": dist} if dist else {}))


def overrides(root: Path, run: Path, steps: int, *extra: str) -> list[str]:
    return [*tiny_train_overrides(root, run, steps=steps), "trainer.valid_every=1000",
            "trainer.valid_max_sentences=4", *extra]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """(data root, run folder) of a tiny Transformer trained for 60 steps through the real CLI, once per module."""
    root = tmp_path_factory.mktemp("data")
    write_corpus(root)
    run_dir = root / "run"
    run_cli("train", *tiny_train_overrides(root, run_dir, steps=60))
    return root, run_dir
