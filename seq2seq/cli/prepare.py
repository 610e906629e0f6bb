"""The seq2seq-prepare command: build the preprocessing cache of a training config ahead of training.

`seq2seq-prepare recipe=<name> [data.workers=N] [key=value ...]` takes the same configuration as
seq2seq-train (its data and tokenizer groups decide the cache entry), builds the entry that
seq2seq-train will then find (SentencePiece and the binarized splits; docs/data.md),
and prints where it is. Writes no run folder. Like fairseq-preprocess, but the same config as training.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from omegaconf import DictConfig

from seq2seq.cli import entry_point
from seq2seq.config import setup_logging, to_dict


def _work(cfg: DictConfig) -> None:
    from seq2seq.data.prepare import describe, prepare_data  # lazy: --help and config errors answer at once

    setup_logging(0)
    prepared = prepare_data(to_dict(cfg.data), to_dict(cfg.tokenizer), seed=cfg.seed)
    print(describe(prepared))


_main = entry_point("prepare", _work, config_name="train")


def main() -> None:
    """Hydra's folder is a scratch one (no run folder, no .hydra/): this command's only output is the cache."""
    if not any(a.startswith("hydra.run.dir=") for a in sys.argv):
        scratch = Path(tempfile.gettempdir()) / "seq2seq-prepare-scratch"
        sys.argv += [f"hydra.run.dir={scratch}", "hydra.output_subdir=null"]
    _main()


if __name__ == "__main__":
    main()
