"""A run folder is read one way (seq2seq.runs): one rule for checkpoint names, the saved config read strictly,
and a run written by an earlier version of the code still loads and decodes as it did."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from helpers.commands import run_cli
from helpers.corpora import toy_corpus_lines
from seq2seq.runs import RunFolder

LEGACY = Path(__file__).resolve().parent / "data" / "legacy_run"  # written by the code at 32745e1 (2026-12-03)


@pytest.fixture()
def legacy(tmp_path) -> Path:
    run = tmp_path / "legacy_run"
    shutil.copytree(LEGACY, run)
    return run


def test_one_rule_names_a_checkpoint(legacy):
    run = RunFolder(legacy)
    assert run.checkpoint("best") == legacy / "checkpoints" / "best.pt"
    shutil.copy(legacy / "checkpoints" / "best.pt", legacy / "checkpoints" / "step_200.pt")
    assert run.checkpoint("step_200") == legacy / "checkpoints" / "step_200.pt"  # any name in checkpoints/
    assert run.load("step_200").checkpoint.name == "step_200.pt"
    outside = legacy / "elsewhere.pt"
    shutil.copy(legacy / "checkpoints" / "best.pt", outside)
    assert run.checkpoint(str(outside)) == outside  # a path is a file
    with pytest.raises(FileNotFoundError, match=r"checkpoint=last; this run has best, step_200"):
        run.checkpoint("last")
    with pytest.raises(FileNotFoundError, match="run folder not found"):
        RunFolder(legacy / "nothing")


def test_saved_generation_settings_are_read_strictly(legacy):
    run = RunFolder(legacy)
    assert run.generation_options().beam_size == 5
    composed = {**run.saved_generation(), "beam_size": 2, "len_penalty": 0.5}
    settings = run.generation_settings(composed, ["generation.beam_size=2"])
    assert settings["beam_size"] == 2 and settings["len_penalty"] == 1.0  # only what the command line set wins
    config = yaml.safe_load((legacy / "config.yaml").read_text())
    config["generation"]["beam_width"] = 3
    (legacy / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=r"config.yaml: unknown generation setting\(s\) beam_width"):
        RunFolder(legacy).saved_generation()


@pytest.mark.parametrize("strategy", ["beam", "greedy"])
def test_a_run_written_before_the_redesign_decodes_as_it_did(legacy, tmp_path, strategy):
    """The inputs are write_corpus's test split (toy_corpus_lines(40, seed=3)), which the expected outputs decode."""
    out, source = tmp_path / "out.txt", tmp_path / "test.src"
    source.write_text("\n".join(toy_corpus_lines(40, seed=3)[0]) + "\n")
    run_cli("decode", f"run={legacy}", f"input={source}", f"output={out}", f"generation={strategy}",
            "generation.nbest=1")
    expected = (LEGACY / f"expected.{strategy}.txt").read_text().splitlines()
    assert len(expected) == 40 and len(set(expected)) > 30  # real, varied outputs
    assert out.read_text().splitlines() == expected


def test_a_checkpoint_naming_a_moved_class_builds_it():
    """Model configs saved before RNNEncoder moved to seq2seq.models.rnn_encoder name it seq2seq.models.rnn."""
    from seq2seq.models.model import build_model
    from seq2seq.models.rnn_encoder import RNNEncoder

    cfg = {"embed_dim": 8, "dropout": 0.0, "max_positions": 16, "share_embeddings": True, "tie_output": False,
           "encoder": {"_target_": "seq2seq.models.rnn.RNNEncoder", "cell": "lstm", "layers": 1, "hidden_size": 8,
                       "bidirectional": True, "dropout": 0.0},
           "decoder": {"_target_": "seq2seq.models.rnn.RNNDecoder", "cell": "lstm", "layers": 1, "hidden_size": 16,
                       "bridge": "learned", "input_feeding": True, "dropout": 0.0},
           "attention": {"_target_": "seq2seq.models.luong.LuongAttention", "score": "general"}}
    assert isinstance(build_model(cfg, 20, 20).encoder, RNNEncoder)
