"""`seq2seq-average run=<run folder> [last=N] [output=<file>]`: average the last N step checkpoints.

The mean of the weights of the last few checkpoints usually translates a little better
than any one of them. The result is an ordinary checkpoint (model and model_config),
so `seq2seq-decode run=<run folder> checkpoint=<file>` decodes with it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

from seq2seq.config import config_dir, setup_logging

log = logging.getLogger("seq2seq.average")


def last_step_checkpoints(run: str | Path, last: int) -> list[Path]:
    """The run's newest `last` checkpoints/step_N.pt files, oldest first."""
    folder = Path(run) / "checkpoints"
    steps = sorted(int(p.stem[5:]) for p in folder.glob("step_*.pt") if p.stem[5:].isdigit())
    if last < 1:
        raise ValueError(f"last={last}: average at least one checkpoint")
    if len(steps) < last:
        raise FileNotFoundError(f"{folder} has {len(steps)} step checkpoints, fewer than last={last} "
                                "(train with trainer.keep_last >= the number to average)")
    return [folder / f"step_{s}.pt" for s in steps[-last:]]


def average_checkpoints(paths: list[Path]) -> dict:
    """A checkpoint whose weights are the mean of the given checkpoints' (summed in float64)."""
    import torch

    from seq2seq.training.checkpoint import CheckpointError, load_checkpoint

    first = load_checkpoint(paths[0])
    if "model" not in first or "model_config" not in first:
        raise CheckpointError(f"{paths[0]} is not a seq2seq checkpoint (no model weights or model config)")
    sums = {k: v.to(torch.float64) for k, v in first["model"].items() if v.is_floating_point()}
    for path in paths[1:]:
        state = load_checkpoint(path)
        if state.get("model_config") != first["model_config"] or set(state.get("model", {})) != set(first["model"]):
            raise CheckpointError(f"{path} holds another model than {paths[0]}: cannot average them")
        for k in sums:
            sums[k] += state["model"][k].to(torch.float64)
    model = {k: (sums[k] / len(paths)).to(v.dtype) if k in sums else v for k, v in first["model"].items()}
    return {"model": model, "model_config": first["model_config"], "step": _newest_step(paths),
            "averaged": [str(p) for p in paths]}


def _newest_step(paths: list[Path]) -> int:
    """The newest averaged step (from step_N.pt names; 0 for other names)."""
    steps = [int(p.stem[5:]) for p in paths if p.stem.startswith("step_") and p.stem[5:].isdigit()]
    return max(steps, default=0)


def average(cfg: DictConfig) -> Path:
    from seq2seq.training.checkpoint import save_checkpoint

    setup_logging()
    paths = last_step_checkpoints(cfg.run, cfg.last)
    output = Path(cfg.output) if cfg.output else Path(cfg.run) / "checkpoints" / f"average_last{cfg.last}.pt"
    save_checkpoint(average_checkpoints(paths), output)
    log.info("averaged %s into %s", ", ".join(p.name for p in paths), output)
    return output


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="average")
def _hydra_main(cfg: DictConfig) -> None:
    average(cfg)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
