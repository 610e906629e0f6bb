"""The trainer config group (TrainerOptions, conf/trainer/default.yaml) and what one update reports."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from seq2seq.metrics import VALID_METRICS


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # autocast dtype of each
# auto: bf16 where the model's step measured faster in it on this host (seq2seq.training.precision)


@dataclass
class TrainerOptions:
    max_steps: int = 0
    max_epochs: int = 0
    max_minutes: float = 0.0
    accum_steps: int = 1
    valid_every: int = 1000
    valid_beam_size: int = 1
    valid_max_sentences: int = 0
    valid_metric: str = "bleu"
    patience: int = 0
    log_every: int = 50
    keep_last: int = 1
    average_last: int = 0
    resume: bool = False
    progress: bool = True
    precision: str = "auto"
    max_bad_steps: int = 5
    num_workers: int = 0

    def __post_init__(self):
        if not (self.max_steps or self.max_epochs or self.max_minutes):
            raise ValueError("set at least one of trainer.max_steps, trainer.max_epochs, trainer.max_minutes")
        if self.num_workers < 0:
            raise ValueError(f"trainer.num_workers={self.num_workers}: expected 0 (batches made in the training "
                             "process) or more")
        if self.accum_steps < 1 or self.valid_every < 1 or self.log_every < 1 or self.max_bad_steps < 1:
            raise ValueError("trainer.accum_steps, trainer.valid_every, trainer.log_every and "
                             "trainer.max_bad_steps must be >= 1")
        if self.precision not in (*PRECISIONS, "auto"):
            raise ValueError(f"trainer.precision={self.precision}: expected auto or one of {', '.join(PRECISIONS)}")
        if self.valid_metric not in VALID_METRICS:
            raise ValueError(f"trainer.valid_metric={self.valid_metric}: expected one of {', '.join(VALID_METRICS)}")
        if self.keep_last < 0:
            raise ValueError(f"trainer.keep_last={self.keep_last}: expected 0 (no step checkpoints) or more")
        if self.average_last < 0:
            raise ValueError(f"trainer.average_last={self.average_last}: expected 0 (off) or the number of step "
                             "checkpoints to average")
        if self.average_last > self.keep_last:
            raise ValueError(f"trainer.average_last={self.average_last} averages more step checkpoints than "
                             f"trainer.keep_last={self.keep_last} keeps: set trainer.keep_last>={self.average_last} "
                             "(or lower trainer.average_last)")


@dataclass
class StepStats:
    """One optimizer step, summed over micro-batches and ranks."""

    loss: float      # what was minimised (label-smoothed, + weighted coverage loss)
    nll: float
    coverage: float  # coverage loss (unweighted; 0 without attention)
    tokens: int      # target tokens
    updated: bool    # False: skipped (non-finite loss or gradient, or the fp16 scaler found inf/NaN)
