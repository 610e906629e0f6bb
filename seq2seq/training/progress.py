"""How far a run is through its budget: the position (in steps) that the schedules read.

A recipe states its schedule in optimizer steps (warm-up, decay, validation interval, the
coverage switch-on) and guards it with a wall-clock limit. On a host slower than its author's
the clock runs out first, and a schedule read by the step alone is cut off midway (the learning
rate still high, the averaged checkpoints from the middle of the decay). With both
trainer.max_steps and trainer.max_minutes set, the schedules read instead

    position = max_steps * max(step / max_steps, elapsed / usable_seconds)

where usable_seconds is trainer.max_minutes less the time kept for the final validation(s).
A host fast enough to finish the steps in time gets position == step at every step, so it
reproduces the step schedule exactly; a slower one has the same schedule compressed into its
minutes, and ends with the decay complete. With only one of the two limits the position is the
step. The position never goes back (a validation that turns out faster than the last one lowers
the time kept for the final one, and so would lower the clock's share).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    max_steps: int = 0
    max_minutes: float = 0.0

    @property
    def adapts(self) -> bool:
        """Whether the clock can move the schedules: both limits are set."""
        return self.max_steps > 0 and self.max_minutes > 0

    def position(self, step: float, elapsed: float, reserve: float = 0.0) -> float:
        """The schedules' step for optimizer step `step` after `elapsed` seconds of the run (resumed
        runs count the time before the resume), `reserve` seconds being kept for the final validation."""
        if not self.adapts:
            return float(step)
        usable = max(self.max_minutes * 60.0 - reserve, 1e-9)
        return max(float(step), self.max_steps * min(elapsed / usable, 1.0))

    def time_binds(self, step: float, elapsed: float, reserve: float = 0.0) -> bool:
        """Whether the clock, not the step count, sets the position now."""
        return self.adapts and self.position(step, elapsed, reserve) > step
