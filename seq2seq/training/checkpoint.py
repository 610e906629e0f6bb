"""Checkpoints: written atomically (temporary file, fsync, rename), read without executing pickled code."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import torch

from seq2seq.errors import CheckpointError, CheckpointWriteError
from seq2seq.models.embeddings import POSITIONS_LAYOUT, SinusoidalPositions
from seq2seq.models.model import renamed_parameters

__all__ = ["CheckpointError", "CheckpointWriteError"]  # defined in seq2seq.errors, raised here


def save_checkpoint(state: dict, path: Path) -> None:
    """Write to a temporary file in the same folder, fsync, rename: a write that fails midway (full
    disk, a kill) leaves the previous file at `path` as it was, and no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and not isinstance(err, CheckpointWriteError):
            raise CheckpointWriteError(err.errno, _write_failure(err, path)) from err
        raise


def _write_failure(err: OSError, path: Path) -> str:
    kept = f"the previous {path.name} is intact" if path.exists() else f"no {path.name} was written"
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(path.parent).free / 2**20
        then = " and continue with trainer.resume=true" if path.name == "last.pt" and path.exists() else ""
        return (f"cannot write checkpoint {path}: no space left on device ({free:.0f} MiB free in "
                f"{path.parent}); {kept}. Free some space (or lower trainer.keep_last){then}")
    return f"cannot write checkpoint {path}: {err.strerror or err}; {kept}"


def load_checkpoint(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad magic, or a pickle that asks for arbitrary objects
        raise CheckpointError(f"cannot read checkpoint {path} (truncated, corrupt or not a seq2seq checkpoint): "
                              f"{str(err).splitlines()[0]}") from None


def load_model_state(model: torch.nn.Module, state: dict, path: Path) -> None:
    """Load weights (under today's parameter names), or say exactly which parameters do not fit (another config or
    vocabulary)."""
    state = renamed_parameters(state)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} parameters (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected parameters (e.g. {', '.join(unexpected[:3])})")
        if shapes:
            parts.append("shape mismatch: " + "; ".join(shapes[:3]))
        raise CheckpointError(f"checkpoint {path} does not fit this model (was it trained with another config?): "
                              + "; ".join(parts))
    model.load_state_dict(state)


def check_positions_layout(model: torch.nn.Module, weights: dict, path) -> None:
    """Refuse a checkpoint whose Transformer was trained with another position layout than this version computes
    (CheckpointError); weights: the checkpoint's state dict for model."""
    for name, module in model.named_modules():
        if not isinstance(module, SinusoidalPositions):
            continue
        saved = weights.get(f"{name}.layout")
        if saved is None:
            raise CheckpointError(
                f"{path} predates the change of the Transformer's sinusoidal position layout (interleaved sin/cos, "
                f"now sin | cos halves, which exports need): this version would compute other positions than it "
                f"was trained with. Retrain the model, or decode or export it with the seq2seq version that "
                f"trained it")
        if float(saved) != POSITIONS_LAYOUT:
            raise CheckpointError(f"{path}: position layout {float(saved):g} is not the one this version computes "
                                  f"({POSITIONS_LAYOUT}); decode it with the seq2seq version that trained it")


# ---------------------------------------------------------------- step checkpoints and their average
def step_checkpoints(folder: Path) -> list[Path]:
    """A run's checkpoints/step_N.pt files, oldest (lowest N) first."""
    folder = Path(folder)
    steps = sorted(int(p.stem[5:]) for p in folder.glob("step_*.pt") if p.stem[5:].isdigit())
    return [folder / f"step_{s}.pt" for s in steps]


def last_step_checkpoints(run: str | Path, last: int) -> list[Path]:
    """The run's newest `last` checkpoints/step_N.pt files, oldest first."""
    folder = Path(run) / "checkpoints"
    if last < 1:
        raise ValueError(f"last={last}: average at least one checkpoint")
    paths = step_checkpoints(folder)
    if len(paths) < last:
        raise FileNotFoundError(f"{folder} has {len(paths)} step checkpoints, fewer than last={last} "
                                "(train with trainer.keep_last >= the number to average)")
    return paths[-last:]


def average_checkpoints(paths: list[Path]) -> dict:
    """A checkpoint whose weights are the elementwise mean of the given checkpoints' (summed in float64;
    integer buffers are the first checkpoint's). Used by seq2seq-average and by trainer.average_last."""
    first = load_checkpoint(paths[0])
    if "model" not in first or "model_config" not in first:
        raise CheckpointError(f"{paths[0]} is not a seq2seq checkpoint (no model weights or model config)")
    # tied weights (shared embeddings and output layer) are one tensor under several names: averaged once,
    # and stored once, as in the checkpoints averaged
    alias, seen = {}, {}
    for k, v in first["model"].items():
        if v.is_floating_point():
            alias[k] = seen.setdefault((v.untyped_storage().data_ptr(), v.storage_offset(), v.shape, v.stride()), k)
    sums = {k: first["model"][k].to(torch.float64) for k in set(alias.values())}
    for path in paths[1:]:
        state = load_checkpoint(path)
        if state.get("model_config") != first["model_config"] or set(state.get("model", {})) != set(first["model"]):
            raise CheckpointError(f"{path} holds another model than {paths[0]}: cannot average them")
        for k in sums:
            sums[k] += state["model"][k].to(torch.float64)
    means = {k: (total / len(paths)).to(first["model"][k].dtype) for k, total in sums.items()}
    model = {k: means[alias[k]] if k in alias else v for k, v in first["model"].items()}
    return {"model": model, "model_config": first["model_config"], "step": _newest_step(paths),
            "averaged": [str(p) for p in paths]}


def _newest_step(paths: list[Path]) -> int:
    """The newest averaged step (from step_N.pt names; 0 for other names)."""
    steps = [int(Path(p).stem[5:]) for p in paths if Path(p).stem.startswith("step_") and Path(p).stem[5:].isdigit()]
    return max(steps, default=0)
