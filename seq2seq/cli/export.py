"""The seq2seq-export command (a trained Transformer for Hugging Face or CTranslate2); the work is seq2seq.export."""
from __future__ import annotations

from omegaconf import DictConfig

from seq2seq.cli import entry_point


def _work(cfg: DictConfig) -> None:
    from seq2seq.export import export_command  # lazy: --help and config errors answer without importing torch

    export_command(cfg)


main = entry_point("export", _work)

if __name__ == "__main__":
    main()
