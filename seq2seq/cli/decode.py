"""The seq2seq-decode command (decode a file or stdin with a trained run); the work is seq2seq.decode."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from seq2seq.cli import Command
from seq2seq.config import config_dir

COMMAND = Command("decode")  # one-line error reports and exit codes: seq2seq.cli


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="decode")
@COMMAND.task
def _hydra_main(cfg: DictConfig) -> None:
    from seq2seq.decode import decode  # lazy: --help and config errors answer without importing torch

    decode(cfg)


def main() -> None:
    COMMAND.run(_hydra_main)


if __name__ == "__main__":
    main()
