"""The seq2seq-score command (BLEU, chrF, TER, ROUGE of hypotheses against references); the work is seq2seq.score."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from seq2seq.cli import Command
from seq2seq.config import config_dir

COMMAND = Command("score")  # one-line error reports and exit codes: seq2seq.cli


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="score")
@COMMAND.task
def _hydra_main(cfg: DictConfig) -> None:
    from seq2seq.score import score_files  # lazy: --help and config errors answer without importing torch

    score_files(cfg)


def main() -> None:
    COMMAND.run(_hydra_main)


if __name__ == "__main__":
    main()
