"""The seq2seq-serve command (serve run folders over HTTP); the work is seq2seq.serve."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from seq2seq.cli import Command
from seq2seq.config import config_dir

COMMAND = Command("serve")  # one-line error reports and exit codes: seq2seq.cli


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="serve")
@COMMAND.task
def _hydra_main(cfg: DictConfig) -> None:
    from seq2seq.serve import serve  # lazy: --help and config errors answer without importing torch

    serve(cfg)


def main() -> None:
    COMMAND.run(_hydra_main)


if __name__ == "__main__":
    main()
