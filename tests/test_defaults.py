"""One source of defaults: the YAML under conf/. A dataclass that reads a config group either has no default
for a key or the YAML's value, so code that builds it in Python gets what the command line gets."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from seq2seq.config import config_dir
from seq2seq.generation.options import GenerationOptions
from seq2seq.models.model import SOFTMAX_OUTPUT
from seq2seq.serve import Limits
from seq2seq.training.optim import InverseSqrtSchedule, LinearSchedule, OptimOptions
from seq2seq.training.trainer import TrainerOptions

CONF = Path(config_dir())


def defaults_of(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def plain(value):
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("cls, file", [
    (OptimOptions, "optim/adamw.yaml"),
    (TrainerOptions, "trainer/default.yaml"),
    (GenerationOptions, "generation/beam.yaml"),
    (Limits, "serve.yaml"),
    (InverseSqrtSchedule, "lr_scheduler/inverse_sqrt.yaml"),
    (LinearSchedule, "lr_scheduler/linear.yaml"),
])
def test_python_defaults_agree_with_the_yaml(cls, file):
    node = yaml.safe_load((CONF / file).read_text())
    compared = {name: value for name, value in defaults_of(cls).items()
                if name in node and "${" not in str(node[name])}  # an interpolation is resolved by Hydra
    disagree = {name: (value, node[name]) for name, value in compared.items() if plain(value) != node[name]}
    assert not disagree, f"{cls.__name__} (Python, YAML): {disagree}"
    assert len({f.name for f in dataclasses.fields(cls)} & set(node)) >= 2  # the file is the group's


def test_every_field_of_the_groups_is_in_its_yaml():
    for cls, file in ((OptimOptions, "optim/adamw.yaml"), (TrainerOptions, "trainer/default.yaml"),
                      (GenerationOptions, "generation/beam.yaml")):
        node = yaml.safe_load((CONF / file).read_text())
        assert {f.name for f in dataclasses.fields(cls)} == set(node), file


def test_optim_options_take_no_default_from_python():
    assert defaults_of(OptimOptions) == {}


def test_the_fallback_output_layer_is_the_softmax_group():
    node = yaml.safe_load((CONF / "model" / "output" / "softmax.yaml").read_text())
    assert SOFTMAX_OUTPUT == node


def test_greedy_and_sampling_are_beam_with_another_search():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        beam, greedy, sampling, mbr = (compose("decode", overrides=["run=x", f"generation={g}"]).generation
                                       for g in ("beam", "greedy", "sampling", "mbr"))
    differ = lambda a, b: {k for k in a if a[k] != b[k]}  # noqa: E731
    assert differ(beam, greedy) == {"strategy", "beam_size"}
    assert differ(beam, sampling) == {"strategy", "beam_size", "top_k"}
    assert differ(beam, mbr) == {"strategy", "epsilon"}
    from seq2seq.runs import SEARCH_KEYS  # what generation=<group> sets over a run's saved settings

    for group in (greedy, sampling, mbr):
        assert differ(beam, group) <= set(SEARCH_KEYS)


def test_sentencepiece_threads_default_is_the_yaml_s():
    from seq2seq.data.tokenizer import SPM_THREADS

    for name in ("unigram_joint", "bpe_separate"):
        assert yaml.safe_load((CONF / "tokenizer" / f"{name}.yaml").read_text())["threads"] == SPM_THREADS
