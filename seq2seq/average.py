"""`seq2seq-average run=<run folder> [last=N] [output=<file>]`: average the last N step checkpoints.

The mean of the weights of the last few checkpoints usually translates a little better
than any one of them. The result is an ordinary checkpoint (model and model_config),
so `seq2seq-decode run=<run folder> checkpoint=<file>` decodes with it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from seq2seq.cli import Command
from seq2seq.config import config_dir, setup_logging

log = logging.getLogger("seq2seq.average")


def __getattr__(name: str):
    """average_checkpoints and last_step_checkpoints live in seq2seq.training.checkpoint (shared with
    training's trainer.average_last); imported on first use, so that `--help` needs no torch."""
    if name in ("average_checkpoints", "last_step_checkpoints"):
        from seq2seq.training import checkpoint

        return getattr(checkpoint, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def average(cfg: DictConfig) -> Path:
    from seq2seq.training.checkpoint import average_checkpoints, last_step_checkpoints, save_checkpoint

    setup_logging()
    paths = last_step_checkpoints(cfg.run, cfg.last)
    output = Path(cfg.output) if cfg.output else Path(cfg.run) / "checkpoints" / f"average_last{cfg.last}.pt"
    save_checkpoint(average_checkpoints(paths), output)
    log.info("averaged %s into %s", ", ".join(p.name for p in paths), output)
    return output


COMMAND = Command("average")  # one-line error reports and exit codes: seq2seq.cli


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="average")
@COMMAND.task
def _hydra_main(cfg: DictConfig) -> None:
    average(cfg)


def main() -> None:
    COMMAND.run(_hydra_main)


if __name__ == "__main__":
    main()
