"""Running the commands in tests: as subprocesses (run_cli), or composed in this process (compose), and
reading what a run wrote."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir

from seq2seq.config import config_dir

REPO = Path(__file__).resolve().parents[2]


def compose(command: str, *overrides: str):
    """conf/<command>.yaml composed with these overrides, as the command line would (no Hydra run)."""
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose(command, overrides=list(overrides))


def run_cli(module: str, *args: str, stdin: bytes | None = None, cwd: Path | None = None, check: bool = True):
    """Run `python -m seq2seq.<module> args...` and return the CompletedProcess (text stdout/stderr).

    seq2seq-decode gets precision=fp32, kernels.linear=onednn and kernels.attention=fused unless the test names
    them: precision=auto and the kernels' auto are chosen by timing on the host, and the CLI tests compare outputs float for float
    (alone vs batched, decode vs serve), which must not depend on what a host measured."""
    if module == "decode" and "--help" not in args:
        named = {a.split("=", 1)[0] for a in args}
        args = (*args, *(f"{k}={v}" for k, v in (("precision", "fp32"), ("kernels.linear", "onednn"),
                                                                ("kernels.attention", "fused")) if k not in named))
    env = command_env()
    proc = subprocess.run([sys.executable, "-m", f"seq2seq.{module}", *args], input=stdin, capture_output=True,
                          cwd=cwd or REPO, env=env, timeout=600)
    proc.stdout, proc.stderr = proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
    if check and proc.returncode != 0:
        raise AssertionError(f"seq2seq.{module} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def command_env() -> dict:
    """The environment of a command run by a test: one thread, no SEQ2SEQ_DATA."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("SEQ2SEQ_DATA", None)
    return env


def steps_logged(run: Path) -> int:
    path = run / "metrics.jsonl"
    return sum('"loss"' in line for line in path.read_text().splitlines()) if path.is_file() else 0


def wait_for_steps(run: Path, proc: subprocess.Popen, n: int, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while steps_logged(run) < n:
        assert proc.poll() is None, f"training ended early with {proc.returncode}"
        assert time.time() < deadline, "training did not start in time"
        time.sleep(0.05)


def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
