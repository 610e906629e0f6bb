"""Checkpoints are written atomically and loaded without running pickled code, with clear errors."""
from __future__ import annotations

import os
import pickle

import pytest
import torch

from helpers.models import transformer_config
from seq2seq.models.model import build_model
from seq2seq.training.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_round_trip_and_no_temporary_files_left(tmp_path):
    model = build_model(transformer_config(), 20, 20)
    save_checkpoint({"model": model.state_dict(), "step": 3}, tmp_path / "c.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]
    state = load_checkpoint(tmp_path / "c.pt")
    other = build_model(transformer_config(), 20, 20)
    load_model_state(other, state["model"], tmp_path / "c.pt")
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot be pickled")


def test_failed_write_keeps_the_old_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)
    with pytest.raises(RuntimeError, match="cannot be pickled"):
        save_checkpoint({"step": 2, "bad": Unpicklable()}, path)
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_truncated_checkpoint_is_reported(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint({"model": build_model(transformer_config(), 20, 20).state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupt"):
        load_checkpoint(path)


def test_pickled_code_is_not_executed(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"payload": Exploit()}, path)
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_checkpoint(path)
    path.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "none.pt")


def test_checkpoint_from_another_config_is_refused(tmp_path):
    save_checkpoint({"model": build_model(transformer_config(dim=64), 20, 20).state_dict()}, tmp_path / "c.pt")
    state = load_checkpoint(tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="does not fit this model.*shape mismatch"):
        load_model_state(build_model(transformer_config(dim=32), 20, 20), state["model"], tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="unexpected parameters"):
        load_model_state(build_model(transformer_config(layers=1), 20, 20), state["model"], tmp_path / "c.pt")
