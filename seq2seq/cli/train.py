"""The seq2seq-train command (train a model into a run folder); the work is seq2seq.train.

Also `python -m seq2seq.train`, which is how torchrun launches it
(`torchrun --nproc_per_node=N -m seq2seq.train recipe=...`; see docs/distributed.md).
A run stopped by SIGTERM or SIGINT saves a checkpoint and exits with 128 + the signal's number.
"""
from __future__ import annotations

import os
import signal
import sys
import tempfile
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from seq2seq.cli import entry_point


def _work(cfg: DictConfig) -> None:
    from seq2seq.train import train  # lazy: --help and config errors answer without importing torch

    summary = train(cfg, Path(HydraConfig.get().runtime.output_dir))
    if summary.get("signal"):
        sys.exit(128 + signal.Signals[summary["signal"]].value)


_main = entry_point("train", _work)


def main() -> None:
    """Ranks other than 0 point their Hydra folder at one shared, always empty scratch folder
    (output_subdir=null, no log files), so that a torchrun run makes a single run folder: rank
    0's, which train() hands to every rank. Nothing is left behind even when a rank is killed."""
    if int(os.environ.get("RANK", "0")) != 0:
        scratch = Path(tempfile.gettempdir()) / f"seq2seq-hydra-scratch-{os.getuid()}"
        sys.argv = [a for a in sys.argv if not a.startswith(("hydra.run.dir=", "hydra.output_subdir="))]
        sys.argv += [f"hydra.run.dir={scratch}", "hydra.output_subdir=null"]
    _main()


if __name__ == "__main__":
    main()
