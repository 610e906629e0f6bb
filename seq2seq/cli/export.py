"""The seq2seq-export command (a trained Transformer for Hugging Face or CTranslate2); the work is seq2seq.export."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from seq2seq.cli import Command
from seq2seq.config import config_dir, setup_logging

COMMAND = Command("export")  # one-line error reports and exit codes: seq2seq.cli


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="export")
@COMMAND.task
def _hydra_main(cfg: DictConfig) -> None:
    from seq2seq.export import export_run  # lazy: --help and config errors answer without importing torch

    setup_logging()
    export_run(cfg.run, cfg.format, cfg.output, cfg.checkpoint)


def main() -> None:
    COMMAND.run(_hydra_main)


if __name__ == "__main__":
    main()
