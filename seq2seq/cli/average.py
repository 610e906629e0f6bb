"""The seq2seq-average command (average a run's last step checkpoints); the work is seq2seq.average."""
from __future__ import annotations

from omegaconf import DictConfig

from seq2seq.cli import entry_point


def _work(cfg: DictConfig) -> None:
    from seq2seq.average import average  # lazy: --help and config errors answer without importing torch

    average(cfg)


main = entry_point("average", _work)

if __name__ == "__main__":
    main()
