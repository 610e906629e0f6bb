"""The seq2seq-decode command (decode a file or stdin with a trained run); the work is seq2seq.decode."""
from __future__ import annotations

from omegaconf import DictConfig

from seq2seq.cli import entry_point


def _work(cfg: DictConfig) -> None:
    from seq2seq.decode import decode  # lazy: --help and config errors answer without importing torch

    decode(cfg)


main = entry_point("decode", _work)

if __name__ == "__main__":
    main()
