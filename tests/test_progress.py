"""The budget-aware schedule position (seq2seq/training/progress.py) and the trainer following it:
steps binding (the step schedule exactly), the clock binding (the schedule compressed into the minutes,
ending at its final rate; validations and the coverage switch moving with it), and resume keeping the clock."""
from __future__ import annotations

import json
import signal

import pytest

from helpers.training import make_trainer
from seq2seq.training import trainer as trainer_module
from seq2seq.training import validation as validation_module
from seq2seq.training.optim import LinearSchedule
from seq2seq.training.progress import Budget
from seq2seq.training.trainer import Trainer

SCHEDULE = {"name": "linear", "warmup_steps": 10, "warmup_init_lr": 0.0, "total_steps": 200}


def test_the_position_is_the_step_unless_the_clock_is_further_along():
    both = Budget(max_steps=200, max_minutes=1.0)
    assert both.adapts and not Budget(200, 0).adapts and not Budget(0, 1.0).adapts
    assert both.position(50, elapsed=6.0) == 50.0            # 10% of the time, 25% of the steps: steps bind
    assert both.position(50, elapsed=30.0) == 100.0          # half the time: half the schedule
    assert both.position(50, elapsed=30.0, reserve=20.0) == 150.0  # 30 of the 40 usable seconds
    assert both.position(50, elapsed=999.0) == 200.0         # never past the end
    assert both.time_binds(50, 30.0) and not both.time_binds(50, 6.0)
    assert Budget(200, 0).position(50, elapsed=1e6) == 50.0  # one limit alone: the step
    assert Budget(0, 1.0).position(7, elapsed=59.0) == 7.0


class FakeClock:
    """The trainer module's clock: each training update takes `step_seconds`, everything else no time."""

    def __init__(self, step_seconds: float):
        self.now, self.step_seconds = 1000.0, step_seconds

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    def install(step_seconds: float, stop_after: int = 0) -> FakeClock:
        fake = FakeClock(step_seconds)
        monkeypatch.setattr(trainer_module, "time", fake)
        monkeypatch.setattr(validation_module, "time", fake)  # validation's seconds count on the same clock
        real_step = Trainer._train_step

        def timed_step(self, batches):
            out = real_step(self, batches)
            fake.now += fake.step_seconds
            if stop_after and self.step == stop_after:
                self.stop_signal = signal.SIGTERM  # what the handler sets: save at the step boundary and stop
            return out

        monkeypatch.setattr(Trainer, "_train_step", timed_step)
        return fake

    return install


def rows_of(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_with_time_to_spare_the_step_schedule_is_reproduced_exactly(corpus, tmp_path, clock):
    clock(step_seconds=0.01)  # 40 steps in 0.4 s of a 37.5 s budget
    summary = make_trainer(corpus, tmp_path / "a", 40, schedule={**SCHEDULE, "total_steps": 40},
                           max_minutes=0.625).fit()
    expected = LinearSchedule(0.005, 10, 40, warmup_init_lr=0.0)
    lr = {r["step"]: r["lr"] for r in rows_of(tmp_path / "a") if "lr" in r}
    assert sorted(lr) == list(range(1, 41))
    assert all(lr[s] == pytest.approx(expected(s), abs=1e-12) for s in lr)
    assert summary["position"] == 40 and summary["final_lr"] == 0.0
    assert summary["stop_reason"] == "reached trainer.max_steps=40"


def test_when_the_clock_binds_the_schedule_is_compressed_into_the_minutes(corpus, tmp_path, clock):
    """200 steps scheduled, 0.375 s each in a 37.5 s budget (exact in binary): time for 100. The position runs at twice the
    step, warm-up ends at step 5, validations (every 50 positions) come every 25 steps, and the last
    update is made at the schedule's final rate."""
    clock(step_seconds=0.375)
    trainer = make_trainer(corpus, tmp_path / "b", 200, schedule=SCHEDULE, max_minutes=0.625, valid_every=50)
    summary = trainer.fit()
    rows = rows_of(tmp_path / "b")
    steps = {r["step"]: r for r in rows if "lr" in r}
    expected = LinearSchedule(0.005, 10, 200, warmup_init_lr=0.0)
    assert summary["step"] == 100 and summary["stop_reason"].startswith("reached trainer.max_minutes=0.625")
    for step, row in steps.items():
        want = 1 if step == 1 else min(2 * step, 200)  # the first update has no duration to go by yet
        assert row["position"] == pytest.approx(want), step
        assert row["lr"] == pytest.approx(expected(want), abs=1e-12), step
    assert steps[5]["lr"] == pytest.approx(0.005)  # the peak: warm-up over 10 positions = 5 steps
    assert steps[100]["lr"] == 0.0 and summary["final_lr"] == 0.0
    validated = [r["step"] for r in rows if "valid_nll" in r]
    assert validated == [25, 50, 75, 100]


def test_the_coverage_switch_moves_with_the_position(corpus, tmp_path, clock):
    clock(step_seconds=0.375)
    trainer = make_trainer(corpus, tmp_path / "c", 200, schedule=SCHEDULE, max_minutes=0.625,
                           optim={"coverage_loss": 1.0, "coverage_from_step": 120})
    seen = []
    real_forward = trainer.model.forward

    def forward(*args, **kwargs):
        if trainer.model.training:  # (update number, the coverage phase flag); validation passes no flag
            seen.append((trainer.step + 1, kwargs["coverage_vector"]))
        return real_forward(*args, **kwargs)

    trainer.model.forward = forward
    trainer.fit()
    switched = [step for step, phase in seen if phase]
    assert switched and switched[0] == 60  # position 120 at update 60 (not at step 120, which never comes)
    assert all(phase == (step >= 60) for step, phase in seen)


def test_resume_keeps_the_clock_and_continues_the_compressed_schedule(corpus, tmp_path, clock):
    fake = clock(step_seconds=0.375)
    whole = make_trainer(corpus, tmp_path / "whole", 200, schedule=SCHEDULE, max_minutes=0.625).fit()
    fake.now = 0.0
    clock(step_seconds=0.375, stop_after=30)
    part = make_trainer(corpus, tmp_path / "part", 200, schedule=SCHEDULE, max_minutes=0.625).fit()
    assert part["step"] == 30 and part["signal"] == "SIGTERM"
    clock(step_seconds=0.375)  # a new process: the clock starts anywhere, the run's elapsed time comes from last.pt
    resumed = make_trainer(corpus, tmp_path / "part", 200, schedule=SCHEDULE, max_minutes=0.625, resume=True).fit()
    assert resumed["step"] == whole["step"] == 100
    a = {r["step"]: r for r in rows_of(tmp_path / "whole") if "lr" in r}
    b = {r["step"]: r for r in rows_of(tmp_path / "part") if "lr" in r}
    assert sorted(b) == sorted(a)
    for step in a:
        assert b[step]["position"] == pytest.approx(a[step]["position"]), step
        assert b[step]["lr"] == pytest.approx(a[step]["lr"], abs=1e-12), step
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-6), step
