"""AdamW and the learning-rate schedules (a function of the step alone, so resuming needs only the step)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from seq2seq.config import options_from


@dataclass
class OptimOptions:
    """The optim config group: AdamW, clipping, and the training loss's label smoothing and coverage term."""

    lr: float
    betas: tuple
    eps: float
    weight_decay: float
    clip_norm: float = 1.0
    label_smoothing: float = 0.0
    coverage_loss: float = 0.0
    coverage_from_step: int = 0

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
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, fused=False)


class InverseSqrtSchedule:
    """Linear warm-up from warmup_init_lr to peak_lr, then peak_lr * sqrt(warmup_steps / step)."""

    def __init__(self, peak_lr: float, warmup_steps: int, warmup_init_lr: float = 0.0, name: str = "inverse_sqrt"):
        self.peak_lr, self.warmup_steps, self.warmup_init_lr = peak_lr, max(warmup_steps, 1), warmup_init_lr

    def __call__(self, step: int) -> float:
        """Learning rate for optimizer step number step (1-based)."""
        if step <= self.warmup_steps:
            return self.warmup_init_lr + (self.peak_lr - self.warmup_init_lr) * step / self.warmup_steps
        return self.peak_lr * math.sqrt(self.warmup_steps / step)
