"""AdamW and the learning-rate schedules (a function of the step alone, so resuming needs only the step)."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch

from seq2seq.config import options_from

log = logging.getLogger(__name__)


@dataclass
class OptimOptions:
    """The optim config group: AdamW, clipping, and the training loss's label smoothing and coverage term.
    No defaults here: conf/optim/adamw.yaml is their one source."""

    lr: float
    betas: tuple
    eps: float
    weight_decay: float
    clip_norm: float
    label_smoothing: float
    coverage_loss: float
    coverage_from_step: int

    @classmethod
    def from_config(cls, node: dict) -> "OptimOptions":
        options = options_from(cls, "optim", node)
        if options.coverage_loss < 0 or options.coverage_from_step < 0:
            raise ValueError("optim.coverage_loss and optim.coverage_from_step must be >= 0")
        return options


def build_optimizer(model: torch.nn.Module, lr: float, betas, eps: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; 1-d parameters (biases, norm gains) get no weight decay, every matrix does, the (shared)
    embedding matrix included."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    try:  # one kernel per parameter instead of ~10 ops: 3-5 against 12-19 ms a step on the Multi30k Transformer (CPU)
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=True)
    except RuntimeError:  # a device or torch (< 2.4 on a CPU) without the fused kernel
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps)


def _warming_up(step: int, warmup: int, init_lr: float, peak_lr: float) -> float:
    """The linear warm-up both schedules start with: init_lr at step 0, peak_lr at step warmup."""
    return init_lr + (peak_lr - init_lr) * step / warmup


@dataclass
class InverseSqrtSchedule:
    """Linear warm-up from warmup_init_lr to peak_lr, then peak_lr * sqrt(warmup_steps / step)."""

    peak_lr: float
    warmup_steps: int
    warmup_init_lr: float = 1e-7  # = conf/lr_scheduler/inverse_sqrt.yaml (tests/test_defaults.py)

    def __call__(self, step: int) -> float:
        """Learning rate for optimizer step number step (1-based)."""
        warmup = max(self.warmup_steps, 1)
        if step <= warmup:
            return _warming_up(step, warmup, self.warmup_init_lr, self.peak_lr)
        return self.peak_lr * math.sqrt(warmup / step)


@dataclass
class LinearSchedule:
    """Linear warm-up from warmup_init_lr to peak_lr, then a straight line down to final_lr at total_steps
    (final_lr after it): the schedule for a known budget of updates, which ends where it is lowest."""

    peak_lr: float
    warmup_steps: int
    total_steps: int
    warmup_init_lr: float = 1e-7  # = conf/lr_scheduler/linear.yaml (tests/test_defaults.py)
    final_lr: float = 0.0

    def __post_init__(self):
        if self.total_steps < 1:
            raise ValueError(f"lr_scheduler=linear: total_steps={self.total_steps}; it needs the number of updates "
                             "(it defaults to trainer.max_steps: set one of them)")
        if self.warmup_steps >= self.total_steps:  # a smoke test of a recipe (trainer.max_steps=50)
            shorter = self.total_steps // 10
            log.warning("lr_scheduler.warmup_steps=%d is not below total_steps=%d: warming up over %d steps instead",
                        self.warmup_steps, self.total_steps, shorter)
            self.warmup_steps = shorter
        if not 0 <= self.final_lr <= self.peak_lr:
            raise ValueError(f"lr_scheduler.final_lr={self.final_lr} must lie in [0, optim.lr={self.peak_lr}]")

    def __call__(self, step: int) -> float:
        """Learning rate for optimizer step number step (1-based)."""
        warmup = max(self.warmup_steps, 1)
        if step <= warmup:
            return _warming_up(step, warmup, self.warmup_init_lr, self.peak_lr)
        left = max(self.total_steps - step, 0) / max(self.total_steps - warmup, 1)
        return self.final_lr + (self.peak_lr - self.final_lr) * left


SCHEDULES = {"inverse_sqrt": InverseSqrtSchedule, "linear": LinearSchedule}


def build_schedule(peak_lr: float, node: dict):
    """The lr_scheduler config group (name and its settings) as a function step -> learning rate."""
    node = dict(node)
    name = node.pop("name", None)
    if name not in SCHEDULES:
        raise ValueError(f"lr_scheduler={name}: choose one of {', '.join(SCHEDULES)}")
    return options_from(SCHEDULES[name], "lr_scheduler", {**node, "peak_lr": peak_lr})
