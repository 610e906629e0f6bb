"""The seq2seq-serve command (serve run folders over HTTP); the work is seq2seq.serve."""
from __future__ import annotations

from omegaconf import DictConfig

from seq2seq.cli import entry_point


def _work(cfg: DictConfig) -> None:
    from seq2seq.serve import serve  # lazy: --help and config errors answer without importing torch

    serve(cfg)


main = entry_point("serve", _work)

if __name__ == "__main__":
    main()
