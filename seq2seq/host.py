"""This machine, as the start-up measurements (kernel and precision choices) see it, and their cache.

A choice measured once is kept as a small JSON file in the cache folder, named by a digest of
everything that could change the answer: the CPU model and its flags, the torch version, the
number of threads and what was measured (the model's shapes). Another host, another torch or
another thread count measures anew.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Callable

import torch

from seq2seq.data.cachefiles import write_atomic

log = logging.getLogger(__name__)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; the platform's word elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.split(":", 1)[1].split()
    except OSError:
        pass
    return []


def describe() -> dict:
    """What a measured figure should be recorded with."""
    flags = set(cpu_flags())
    return {"cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "avx512": "avx512f" in flags, "avx512_bf16": "avx512_bf16" in flags, "amx": "amx_bf16" in flags}


def measured(cache_dir: str | Path | None, what: str, key: dict, measure: Callable[[], dict]) -> tuple[dict, bool]:
    """(result, from the cache) of measure() for this host and key, computed once per cache folder.
    cache_dir None or empty: measured every time. A cache file that cannot be read is measured anew."""
    identity = {**describe(), "flags": hashlib.sha1(" ".join(sorted(cpu_flags())).encode()).hexdigest()[:12],
                "key": key}
    digest = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / "host" / f"{what}-{digest}.json" if cache_dir else None
    if path is not None and path.is_file():
        try:
            return json.loads(path.read_text())["result"], True
        except (OSError, ValueError, KeyError):
            log.warning("%s is unreadable: measuring again", path)
    result = measure()
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            text = json.dumps({"identity": identity, "result": result}, indent=1)
            write_atomic(path, lambda p: p.write_text(text))
        except OSError as err:  # a read-only cache folder costs a measurement next time, nothing else
            log.warning("could not keep the %s measurement in %s: %s", what, path, err)
    return result, False


def fastest(function: Callable[[], object], repeats: int) -> float:
    """Seconds of function()'s fastest of `repeats` calls after one untimed call (kernels compile, caches fill)."""
    function()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def resolve_device(name: str) -> torch.device:
    """`device`: auto (CUDA where there is one, else the CPU) or a torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_threads(threads: int) -> None:
    """`threads`: torch's CPU threads; 0 = every core this process may use (unless OMP_NUM_THREADS says)."""
    if threads and threads > 0:
        torch.set_num_threads(threads)
    elif os.environ.get("OMP_NUM_THREADS") is None:
        torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
