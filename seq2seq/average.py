"""`seq2seq-average run=<run folder> [last=N] [output=<file>]`: average the last N step checkpoints.

The mean of the weights of the last few checkpoints usually translates a little better
than any one of them. The result is an ordinary checkpoint (model and model_config),
so `seq2seq-decode run=<run folder> checkpoint=<file>` decodes with it.
"""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from seq2seq.config import setup_logging
from seq2seq.training.checkpoint import average_checkpoints, last_step_checkpoints, save_checkpoint

__all__ = ["average", "average_checkpoints", "last_step_checkpoints"]

log = logging.getLogger("seq2seq.average")


def average(cfg: DictConfig) -> Path:
    setup_logging()
    paths = last_step_checkpoints(cfg.run, cfg.last)
    output = Path(cfg.output) if cfg.output else Path(cfg.run) / "checkpoints" / f"average_last{cfg.last}.pt"
    save_checkpoint(average_checkpoints(paths), output)
    log.info("averaged %s into %s", ", ".join(p.name for p in paths), output)
    return output


if __name__ == "__main__":  # python -m seq2seq.average: the seq2seq-average command
    from seq2seq.cli.average import main

    main()
