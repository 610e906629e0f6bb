"""trainer.average_last=N at the end of training: the newest N step checkpoints averaged into averaged.pt,
validated, and made best.pt when they validate better than the best single checkpoint (a tie keeps the single)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from seq2seq.metrics import higher_is_better
from seq2seq.training.checkpoint import average_checkpoints, load_checkpoint, save_checkpoint, step_checkpoints

log = logging.getLogger("seq2seq.training.trainer")


def average_and_compare(model, checkpoints: Path, n: int, metric: str, best_single: float | None, epoch: int,
                        validate: Callable[[], dict]) -> dict | None:
    """The metrics row of the comparison ({"averaged", "best_single", "best_is", ...}), None without step
    checkpoints. validate() validates `model` as it is; the model's own weights are put back afterwards."""
    paths = step_checkpoints(checkpoints)[-n:]
    if not paths:
        log.warning("trainer.average_last=%d: no step checkpoints in %s, nothing to average", n, checkpoints)
        return None
    if len(paths) < n:
        log.warning("trainer.average_last=%d: the run wrote only %d step checkpoint(s) (one per validation); "
                    "averaging those", n, len(paths))
    averaged = average_checkpoints(paths)
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        model.load_state_dict(averaged["model"])
        valid = validate()
    finally:
        model.load_state_dict(trained)
    score = valid[f"valid_{metric}"]
    better = (lambda a, b: a > b) if higher_is_better(metric) else (lambda a, b: a < b)
    wins = best_single is None or better(score, best_single)
    averaged.update(epoch=epoch, valid_metric=metric, valid_score=score, best_score=score)
    save_checkpoint(averaged, checkpoints / "averaged.pt")
    if wins:
        save_checkpoint(averaged, checkpoints / "best.pt")
        # last.pt carries the best score on: a resumed run replaces best.pt only with something better
        last = load_checkpoint(checkpoints / "last.pt")
        last["best_score"] = score
        save_checkpoint(last, checkpoints / "last.pt")
    steps = [int(p.stem[5:]) for p in paths]
    log.info("averaged step checkpoints %s into %s: %s %.2f vs best single checkpoint %s; best.pt is the %s",
             ", ".join(map(str, steps)), checkpoints / "averaged.pt", metric, score,
             "none" if best_single is None else f"{best_single:.2f}", "average" if wins else "best single checkpoint")
    return {"valid_metric": metric, "averaged": score, "best_single": best_single,
            "best_is": "averaged" if wins else "single", "averaged_steps": steps,
            "averaged_valid_nll": valid["valid_nll"], "averaged_valid_seconds": valid["valid_seconds"]}
