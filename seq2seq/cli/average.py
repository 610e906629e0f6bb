"""The seq2seq-average command (average a run's last step checkpoints); the work is seq2seq.average."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from seq2seq.cli import Command
from seq2seq.config import config_dir

COMMAND = Command("average")  # one-line error reports and exit codes: seq2seq.cli


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="average")
@COMMAND.task
def _hydra_main(cfg: DictConfig) -> None:
    from seq2seq.average import average  # lazy: --help and config errors answer without importing torch

    average(cfg)


def main() -> None:
    COMMAND.run(_hydra_main)


if __name__ == "__main__":
    main()
