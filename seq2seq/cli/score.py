"""The seq2seq-score command (BLEU, chrF, TER, ROUGE of hypotheses against references); the work is seq2seq.score."""
from __future__ import annotations

from omegaconf import DictConfig

from seq2seq.cli import entry_point


def _work(cfg: DictConfig) -> None:
    from seq2seq.score import score_files  # lazy: --help and config errors answer without importing torch

    score_files(cfg)


main = entry_point("score", _work)

if __name__ == "__main__":
    main()
