"""trainer.precision=auto: bf16 autocast where it is measured faster for this model on this host, else fp32.

A CPU flag alone does not say it: bf16 products are several times faster than fp32 on a CPU with
AMX and about twice as fast with AVX512_BF16, but a step also runs attention, normalisation, the
loss and the optimizer, and casts between them. So the model's own training step (forward and
backward on a few real batches, no update) is timed in both precisions at start-up, alternating,
and bf16 is taken only when it is at least MARGIN faster. The answer is kept in the cache folder
per host (seq2seq.host), so a run on the same machine does not time again. The timing leaves the
model's weights, gradients and every random generator as it found them. A CUDA GPU with bf16 takes
bf16 without timing (its tensor cores); one without takes fp32.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import time
from pathlib import Path
from typing import Callable

import torch

from seq2seq.generation.decoding import decode_ids
from seq2seq.host import measured
from seq2seq.models.kernels import attention as attention_kernels
from seq2seq.models.kernels import gemm

log = logging.getLogger(__name__)

MARGIN = 0.05  # bf16 must save at least 5% of the step
ROUNDS = 2


def step_seconds(model: torch.nn.Module, batches: list, dtype, device: torch.device, label_smoothing: float = 0.1,
                 rounds: int = ROUNDS) -> float:
    """Seconds of forward + backward over the batches (autocast dtype, None = fp32), best of rounds."""
    ctx = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    best = float("inf")
    for r in range(rounds + 1):  # the first is a warm-up (kernels compile, caches fill)
        start = time.perf_counter()
        for batch in batches:
            with ctx():
                out = model(batch.src, batch.prev_tokens, batch.target, label_smoothing=label_smoothing,
                            coverage_vector=False)
            out.loss.backward()
        if r:
            best = min(best, time.perf_counter() - start)
    return best


def measure_step(model, batches, device) -> dict:
    """{"fp32": seconds, "bf16": seconds} of the training step on batches, alternating the precisions;
    the model's weights, gradients, mode and the random generators left as they were."""
    grads = {p: p.grad for p in model.parameters()}

    def one(name):
        seconds = step_seconds(model, batches, torch.bfloat16 if name == "bf16" else None, device, rounds=1)
        for p in model.parameters():
            p.grad = None
        return seconds

    try:
        return _alternating(model, one, train=True)
    finally:
        for p, g in grads.items():
            p.grad = g


def measure_decoding(model, sources: list, options, device, batch_tokens: int) -> dict:
    """{"fp32": seconds, "bf16": seconds} of decoding sources (a few of the input's) with these settings."""
    def one(name):
        ctx = torch.autocast(device.type, dtype=torch.bfloat16) if name == "bf16" else contextlib.nullcontext()
        best = float("inf")
        for r in range(2):  # the first warms up
            start = time.perf_counter()
            with ctx:
                decode_ids(model, sources, options, batch_tokens=batch_tokens, device=device)
            if r:
                best = min(best, time.perf_counter() - start)
        return best

    with torch.no_grad():
        return _alternating(model, one, train=False)


def _alternating(model, one: Callable[[str], float], train: bool) -> dict:
    rng = torch.get_rng_state(), random.getstate()
    was_training = model.training
    model.train(train)
    try:
        times = {"fp32": [], "bf16": []}
        for order in (("fp32", "bf16"), ("bf16", "fp32")):
            for name in order:
                times[name].append(one(name))
        return {name: min(v) for name, v in times.items()}
    finally:
        model.train(was_training)
        torch.set_rng_state(rng[0])
        random.setstate(rng[1])


def choose(requested: str, device: torch.device, measure: Callable[[], dict], cache_dir=None,
           key: dict | None = None, what: str = "trainer.precision") -> tuple[str, dict]:
    """(precision, record for the logs and metrics) for `what`=requested (fp32, bf16, fp16 or auto); auto
    on a CPU calls measure() -> {"fp32": seconds, "bf16": seconds} once per host and key (seq2seq.host)."""
    if requested != "auto":
        return requested, {"precision": requested, "chosen_by": what}
    if device.type == "cuda":
        chosen = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return chosen, {"precision": chosen, "chosen_by": "auto: CUDA device " + ("with" if chosen == "bf16" else
                                                                                    "without") + " bf16"}
    digest = hashlib.sha1(json.dumps(key or {}, sort_keys=True, default=str).encode()).hexdigest()[:16]
    start = time.perf_counter()
    seconds, cached = measured(cache_dir, "precision", {"what": what, "model": digest}, measure)
    speedup = seconds["fp32"] / max(seconds["bf16"], 1e-12)
    chosen = "bf16" if speedup >= 1.0 / (1.0 - MARGIN) else "fp32"
    return chosen, {"precision": chosen, "chosen_by": "auto: measured", "bf16_speedup": round(speedup, 3),
                    "cached": cached, "seconds": round(time.perf_counter() - start, 2)}


DECODING_PRECISIONS = ("auto", "fp32", "bf16")


def check_decoding(requested: str) -> None:
    if requested not in DECODING_PRECISIONS:
        raise ValueError(f"precision={requested}: expected auto, fp32 or bf16")


def decoding_paths(model, sample: list, options, device: torch.device, *, requested: str, kernels: dict,
                   batch_tokens: int, checkpoint, settings: dict, what: str):
    """The host's paths for decoding one checkpoint or an ensemble's (a list; seq2seq-decode, seq2seq-serve): on a
    CPU kernels.linear and kernels.attention (kernels: linear, attention, onednn_cache_capacity, cache_dir), then
    the autocast dtype (None: fp32). precision=auto times decoding `sample` (source id lists) in fp32 and bf16,
    once per host, checkpoint and settings."""
    check_decoding(requested)
    if device.type == "cpu":
        plan = gemm.configure(kernels["linear"], kernels["onednn_cache_capacity"], model,
                              rows=(min(batch_tokens, 256), 32), cache_dir=kernels["cache_dir"])
        log.info("%s: matrix products (kernels.linear=%s): %s", what, kernels["linear"], plan)
        plan = attention_kernels.configure(kernels["attention"], model, min(batch_tokens, 2048), kernels["cache_dir"])
        log.info("%s: attention (kernels.attention=%s): %s", what, kernels["attention"], plan)
    if requested == "auto" and not sample:
        return None
    if isinstance(checkpoint, (str, Path)):
        checkpoint = Path(checkpoint)
        key = {"checkpoint": str(checkpoint.resolve()), "mtime": checkpoint.stat().st_mtime}
    else:  # an ensemble's checkpoints
        key = {"checkpoint": [str(Path(c).resolve()) for c in checkpoint],
               "mtime": [Path(c).stat().st_mtime for c in checkpoint]}
    chosen, record = choose(
        requested, device, lambda: measure_decoding(model, sample, options, device, batch_tokens),
        kernels["cache_dir"], key={**key, "generation": settings}, what=what)
    log.info("%s: %s (%s)", what, chosen, ", ".join(f"{k} {v}" for k, v in record.items() if k != "precision"))
    return torch.bfloat16 if chosen == "bf16" else None
