"""Preemption and exact resume, non-finite steps, checkpoint rotation and averaging (one process)."""
from __future__ import annotations

import logging
import signal
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from helpers.commands import REPO, command_env, losses, run_cli, wait_for_steps, weights
from helpers.corpora import overrides
from helpers.training import make_trainer


def test_sigterm_then_resume_gives_the_uninterrupted_loss_curve(corpus, tmp_path):
    """Bitwise on CPU in fp32, with dropout on: the checkpoint restores weights, optimizer, data position
    and RNG states."""
    steps = 60
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    run_cli("train", *overrides(corpus, straight, steps, "model.dropout=0.2"))

    args = overrides(corpus, stopped, steps, "model.dropout=0.2")
    proc = subprocess.Popen([sys.executable, "-m", "seq2seq.train", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=command_env())
    wait_for_steps(stopped, proc, 3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM" in err and "trainer.resume=true" in err
    interrupted_at = max(losses(stopped))
    assert interrupted_at < steps, "the run ended before the signal arrived"

    run_cli("train", *args, "trainer.resume=true")
    a, b = losses(straight), losses(stopped)
    assert sorted(a) == sorted(b) == list(range(1, steps + 1))
    assert [a[s] for s in a] == [b[s] for s in a]  # the same floats, before and after the stop
    assert weights(straight / "checkpoints" / "last.pt").keys() == weights(stopped / "checkpoints" / "last.pt").keys()
    for key, value in weights(straight / "checkpoints" / "last.pt").items():
        assert torch.equal(value, weights(stopped / "checkpoints" / "last.pt")[key]), key


def _poison_losses(trainer, bad_calls: set[int] | None):
    """Make the training loss NaN on the given calls (all calls when None)."""
    layer, real = trainer.model.output_layer, trainer.model.output_layer.loss
    calls = [0]

    def loss(rows, src_rows, target, smoothing):
        out = real(rows, src_rows, target, smoothing)
        if torch.is_grad_enabled():
            calls[0] += 1
            if bad_calls is None or calls[0] in bad_calls:
                return out[0] * float("nan"), out[1]
        return out

    layer.loss = loss


def test_non_finite_steps_are_skipped_with_a_warning(corpus, tmp_path, caplog):
    trainer = make_trainer(corpus, tmp_path, 8, max_bad_steps=3)
    _poison_losses(trainer, {3, 4})
    with caplog.at_level(logging.WARNING):
        summary = trainer.fit()
    assert summary["step"] == 8
    skipped = [r.message for r in caplog.records if "skipped: non-finite loss" in r.message]
    assert len(skipped) == 2 and "2 in a row" in skipped[1]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert sorted(losses(tmp_path)) == list(range(1, 9))


def test_consecutive_non_finite_steps_stop_training(corpus, tmp_path):
    trainer = make_trainer(corpus, tmp_path, 20, max_bad_steps=3)
    _poison_losses(trainer, None)
    with pytest.raises(FloatingPointError, match=r"3 updates in a row .*trainer.max_bad_steps=3"):
        trainer.fit()
    assert trainer.step == 0


def test_step_checkpoints_rotate_and_average_to_their_mean(corpus, tmp_path):
    from seq2seq.average import average
    from seq2seq.decode import load_run

    trainer = make_trainer(corpus, tmp_path, 8, valid_every=2, keep_last=2)
    trainer.fit()
    trainer.data.tokenizer.save(tmp_path / "tokenizer")
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*.pt")) == ["step_6.pt", "step_8.pt"]

    output = average(OmegaConf.create({"run": str(tmp_path), "last": 2, "output": str(tmp_path / "avg.pt")}))
    a, b = weights(tmp_path / "checkpoints" / "step_6.pt"), weights(tmp_path / "checkpoints" / "step_8.pt")
    averaged = weights(output)
    for key in a:
        torch.testing.assert_close(averaged[key], (a[key] + b[key]) / 2, rtol=0, atol=1e-7)
    model, _, path = load_run(tmp_path, checkpoint=str(output))  # what seq2seq-decode does
    assert path == output
    for key, value in model.state_dict().items():
        assert torch.equal(value, averaged[key])
    with pytest.raises(FileNotFoundError, match="fewer than last=3"):
        average(OmegaConf.create({"run": str(tmp_path), "last": 3, "output": None}))


def test_checkpoint_write_failing_midway_keeps_last_and_resume_is_exact(corpus, tmp_path, monkeypatch):
    """The disk fills up while last.pt is being rewritten at step 8: half a file is written, then the
    write fails. Training stops with a one-line reason, the step-4 last.pt is intact, no temporary file is
    left, and resuming from it gives the weights of a run that never failed."""
    import errno

    from seq2seq.cli import FAILURE, exit_code, one_line
    from seq2seq.training import checkpoint

    straight, failed = tmp_path / "straight", tmp_path / "failed"
    make_trainer(corpus, straight, 12, valid_every=4).fit()

    real_save, calls = torch.save, []

    def save_until_the_disk_is_full(obj, f, *args, **kwargs):
        calls.append(obj.get("step"))
        if obj.get("step") != 8:
            return real_save(obj, f, *args, **kwargs)
        import io
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    trainer = make_trainer(corpus, failed, 12, valid_every=4)
    monkeypatch.setattr(checkpoint.torch, "save", save_until_the_disk_is_full)
    with pytest.raises(checkpoint.CheckpointWriteError) as info:
        trainer.fit()
    monkeypatch.undo()
    message = one_line(info.value)
    assert message.startswith(f"cannot write checkpoint {failed / 'checkpoints' / 'last.pt'}: no space left on device")
    assert "the previous last.pt is intact" in message and "trainer.resume=true" in message
    assert exit_code(info.value) == FAILURE
    assert calls[-1] == 8 and trainer.step == 8
    assert sorted(p.name for p in (failed / "checkpoints").iterdir()) == ["best.pt", "last.pt", "step_4.pt"]
    assert torch.load(failed / "checkpoints" / "last.pt", weights_only=True)["step"] == 4

    make_trainer(corpus, failed, 12, valid_every=4, resume=True).fit()
    a, b = losses(straight), losses(failed)
    assert [a[s] for s in range(5, 13)] == [b[s] for s in range(5, 13)]
    for key, value in weights(straight / "checkpoints" / "last.pt").items():
        assert torch.equal(value, weights(failed / "checkpoints" / "last.pt")[key]), key
