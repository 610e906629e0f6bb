"""Data-parallel training on CPU with gloo: the same code path as NCCL on GPUs, another backend.

Several processes are launched with torchrun (subprocesses), on a tiny model and a
generated corpus, so each run takes seconds.
"""
from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, run_cli, tiny_train_overrides, transformer_config, write_corpus
from seq2seq.data.batching import epoch_shard
from seq2seq.training.trainer import Trainer, TrainerOptions


def _env() -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("SEQ2SEQ_DATA", None)
    return env


def torchrun_cmd(*args: str, nproc: int = 2, launcher: tuple[str, ...] = ("--standalone",)) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher, f"--nproc_per_node={nproc}",
            "-m", "seq2seq.train", *args]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=REPO, env=_env(),
                            start_new_session=True)


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


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    write_corpus(root)
    return root


def make_trainer(root: Path, run: Path, steps: int, dist=None, config=None, optim=None, **options) -> Trainer:
    """A tiny Trainer in this process (for what needs no second process); config: a model config
    (default a 1-layer Transformer), optim: optim keys to change."""
    from seq2seq.data.prepare import prepare_data
    from seq2seq.generation.search import GenerationOptions
    from seq2seq.models.model import build_model

    splits = {"train": "train", "valid": "val", "test": "test"}
    data = prepare_data({"root": str(root), "path": "toy", "format": "text", "src": "src", "tgt": "tgt",
                         "splits": splits, "cache_dir": str(root / "cache")},
                        {"model_type": "unigram", "vocab_size": 80, "joint": True, "character_coverage": 1.0,
                         "max_sentences": 10_000})
    config = config or transformer_config(layers=1, dim=32, heads=2, ffn=64, dropout=0.1, max_positions=128)
    torch.manual_seed(1)
    model = build_model(config, data.tokenizer.src_vocab_size, data.tokenizer.tgt_vocab_size)
    opts = TrainerOptions(**{"max_steps": steps, "valid_every": 1000, "valid_max_sentences": 4, "log_every": 1,
                             "progress": False, **options})
    optim = {"lr": 0.005, "betas": (0.9, 0.98), "eps": 1e-9, "weight_decay": 0.0, "clip_norm": 1.0,
             "label_smoothing": 0.1, **(optim or {})}
    return Trainer(model, data, run, opts, optim=optim, schedule={"warmup_steps": 10, "warmup_init_lr": 1e-7},
                   batch_tokens=600, valid_batch_tokens=2000, generation=GenerationOptions(strategy="greedy"),
                   model_config=config, seed=1, device=torch.device("cpu"), **({"dist": dist} if dist else {}))


def overrides(root: Path, run: Path, steps: int, *extra: str) -> list[str]:
    return [*tiny_train_overrides(root, run, steps=steps), "trainer.valid_every=1000",
            "trainer.valid_max_sentences=4", *extra]


# ---------------------------------------------------------------- sharding


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_every_pair_of_an_epoch_is_seen_exactly_once_across_ranks(world_size):
    """Whole batches are dealt round-robin, the remainder is pooled, and fewer pairs than ranks is refused."""
    rng = random.Random(world_size)
    for n_batches in (1, 2, 5, 7, 12):
        sizes = [rng.randint(1, 4) for _ in range(n_batches)]
        pairs = list(range(sum(sizes)))
        rng.shuffle(pairs)
        batches = [pairs[sum(sizes[:i]) : sum(sizes[: i + 1])] for i in range(n_batches)]
        for resumed_at in (0, n_batches // 2):  # a resumed run shards the rest of the epoch
            rest = batches[resumed_at:]
            if len(rest) < world_size and sum(map(len, rest)) < world_size:
                with pytest.raises(ValueError, match="cannot be shared"):
                    epoch_shard(rest, 0, world_size)
                continue
            plans = [epoch_shard(rest, r, world_size) for r in range(world_size)]
            assert len({len(p) for p in plans}) == 1  # same number of steps on every rank
            seen = [i for plan in plans for batch in plan for i in batch]
            assert sorted(seen) == sorted(i for b in rest for i in b)
            assert all(batch for plan in plans for batch in plan)


def test_same_world_size_plan_is_unchanged_by_resuming():
    batches = [[i, i + 100] for i in range(11)]
    whole = epoch_shard(batches, 1, 2)
    assert epoch_shard(batches[6:], 1, 2) == whole[3:]  # resume after 3 steps of 2 ranks


# ---------------------------------------------------------------- DDP


@pytest.mark.slow
def test_ddp_over_two_nodes_equals_one_process_accumulating_the_same_micro_batches(corpus):
    """Two torchrun launches meet through the c10d rendezvous (one process each, as on two machines);
    their 2-rank DDP run, accumulating 2 micro-batches per rank (the first under no_sync), must match
    one process that accumulates the same 4 micro-batches per step."""
    ddp, single = corpus / "two_nodes", corpus / "single"
    port = free_port()
    launcher = ("--nnodes=2", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=test")
    # Adam's eps is raised because the key biases' gradients are zero in exact arithmetic (softmax
    # ignores a constant shift): their float noise, summed in another order, would become lr-sized steps
    same = ("model.dropout=0", "optim.eps=1e-4")
    args = overrides(corpus, ddp, 3, *same, "trainer.accum_steps=2")
    nodes = [start(torchrun_cmd(*args, nproc=1, launcher=launcher), corpus / f"node{i}.log") for i in range(2)]
    run_cli("train", *overrides(corpus, single, 3, *same, "trainer.accum_steps=4"))
    for node in nodes:
        node.wait(timeout=300)
    assert [n.returncode for n in nodes] == [0, 0], (corpus / "node0.log").read_text()[-3000:]

    a, b = weights(ddp / "checkpoints" / "last.pt"), weights(single / "checkpoints" / "last.pt")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    la, lb = losses(ddp), losses(single)
    assert sorted(la) == sorted(lb) == list(range(1, 4))
    assert all(abs(la[s] - lb[s]) <= 1e-5 * abs(lb[s]) for s in la)  # logged losses are global sums
    state = torch.load(ddp / "checkpoints" / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2  # every rank's generators
    assert not [p for p in corpus.iterdir() if p.name not in ("cache", "toy", "two_nodes", "single", "rnn_ddp",
                                                               "rnn_single", "preempted", "slow_valid", "warm")
                and p.is_dir()]  # the other rank made no run folder of its own


RNN_MODEL = ("model/encoder=lstm", "model/decoder=rnn", "model/attention=luong_local_p",
             "model.encoder.hidden_size=16", "model.decoder.hidden_size=32", "model.attention.window=3")


def rnn_overrides(root: Path, run: Path, steps: int, *extra: str) -> list[str]:
    """overrides() for an attentional LSTM (the Transformer-only keys left out)."""
    keep = [o for o in overrides(root, run, steps) if ".heads=" not in o and ".ffn_dim=" not in o]
    return [*keep, *RNN_MODEL, *extra]


@pytest.mark.slow
def test_ddp_trains_an_attentional_lstm_like_one_process(corpus):
    """DDP needs a gradient for every parameter on every rank: the RNN family's bridge, input feeding
    and local-p's position predictor (reached only through the Gaussian) must all get one. Two ranks
    must then match one process accumulating the same two micro-batches per step."""
    ddp, single = corpus / "rnn_ddp", corpus / "rnn_single"
    same = ("model.dropout=0", "optim.eps=1e-4")  # eps: see the two-node test above
    proc = start(torchrun_cmd(*rnn_overrides(corpus, ddp, 3, *same)), corpus / "rnn_ddp.log")
    run_cli("train", *rnn_overrides(corpus, single, 3, *same, "trainer.accum_steps=2"))
    assert proc.wait(timeout=300) == 0, (corpus / "rnn_ddp.log").read_text()[-3000:]
    a, b = weights(ddp / "checkpoints" / "last.pt"), weights(single / "checkpoints" / "last.pt")
    assert any("position_proj" in k for k in a)  # the local-p predictor is really in the model
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-5
    la, lb = losses(ddp), losses(single)
    assert sorted(la) == sorted(lb) == [1, 2, 3] and all(abs(la[s] - lb[s]) <= 1e-5 * abs(lb[s]) for s in la)


# ---------------------------------------------------------------- preemption, resume across sizes, faults


@pytest.mark.slow
def test_sigterm_resume_across_world_sizes_and_a_killed_rank(corpus, tmp_path):
    """torchrun passes SIGTERM to every rank: rank 0 saves, all exit non-zero; the 2-process checkpoint
    resumes in 1 process, that one in 2 processes; killing one of those ranks ends the job fast."""
    run = corpus / "preempted"
    args = overrides(corpus, run, 100_000, "trainer.keep_last=0")
    proc = start(torchrun_cmd(*args), tmp_path / "first.log")
    wait_for_steps(run, proc, 4)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=90) != 0
    log = (tmp_path / "first.log").read_text()
    assert "stopped by SIGTERM" in log and "continue with trainer.resume=true" in log
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    stopped, first_epoch, first_done = state["step"], state["epoch"], state["global_batches_done"]
    assert state["world_size"] == 2 and stopped >= 4 and not list((run / "checkpoints").glob("step_*.pt"))

    one = run_cli("train", *overrides(corpus, run, stopped + 3, "trainer.keep_last=0"), "trainer.resume=true")
    assert "resuming a 2-process run with 1 processes" in one.stderr
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["world_size"] == 1 and state["step"] == stopped + 3
    if state["epoch"] == first_epoch:  # one process continues right after the batches both ranks took
        assert state["global_batches_done"] == first_done + 3

    proc = start(torchrun_cmd(*args, "trainer.resume=true"), tmp_path / "second.log")
    wait_for_steps(run, proc, stopped + 3 + 3)
    assert sorted(losses(run))[: stopped + 6] == list(range(1, stopped + 7))
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    rank1 = [pid for pid in children if b"RANK=1" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")]
    assert len(rank1) == 1
    killed = time.time()
    os.kill(int(rank1[0]), signal.SIGKILL)
    assert proc.wait(timeout=60) != 0 and time.time() - killed < 60
    log = (tmp_path / "second.log").read_text()
    assert "resuming a 1-process run with 2 processes" in log
    assert "FAILED" in log and "SIGKILL" in log


def _slow_validation_worker(rank: int, root: Path, port: int, seconds: float) -> None:
    from seq2seq.training import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    info = distributed.from_environment()
    distributed.init(info, torch.device("cpu"), "gloo", timeout_minutes=seconds / 60 / 2, main_wait_minutes=1)
    trainer = make_trainer(root, root / "slow_valid", 2, dist=info, valid_every=2)
    validate = trainer.validate

    def slow_validate():
        time.sleep(seconds)
        return validate()

    trainer.validate = slow_validate
    try:
        assert trainer.fit()["step"] == 2
    finally:
        distributed.shutdown()


@pytest.mark.slow
def test_a_validation_longer_than_the_collective_timeout_does_not_fail(corpus):
    """Rank 1 waits for rank 0's validation on the long-timeout group, not the short one."""
    make_trainer(corpus, corpus / "warm", 1)  # fill the data cache before the ranks read it
    torch.multiprocessing.spawn(_slow_validation_worker, args=(corpus, free_port(), 12.0), nprocs=2)
    assert (corpus / "slow_valid" / "checkpoints" / "last.pt").is_file()


# ---------------------------------------------------------------- precision


def test_bf16_training_on_cpu_reduces_the_loss(corpus, tmp_path):
    trainer = make_trainer(corpus, tmp_path / "bf16", 30, precision="bf16")
    trainer.fit()
    curve = losses(tmp_path / "bf16")
    assert all(v == v for v in curve.values())  # no NaN
    assert sum(curve[s] for s in range(26, 31)) < 0.8 * sum(curve[s] for s in range(1, 6))


def test_fp16_needs_cuda(corpus, tmp_path):
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        make_trainer(corpus, tmp_path, 1, precision="fp16")
    with pytest.raises(ValueError, match="trainer.precision=fp8"):
        TrainerOptions(max_steps=1, precision="fp8")


def test_fused_loss_under_autocast_keeps_fp32_loss_and_weight_gradient():
    from seq2seq.models.model import DecoderOut, OutputSizes
    from seq2seq.models.output import OutputLayer

    torch.manual_seed(0)
    layer = OutputLayer(OutputSizes(16, 16, 16, 50, True), chunk=7)
    features = torch.randn(20, 16, requires_grad=True)
    target = torch.randint(0, 50, (20,))
    reference, _ = layer.loss(DecoderOut(features), None, target, 0.1)
    reference.backward()
    expected = features.grad.clone(), layer.weight.grad.clone()
    for dtype in (torch.float32, torch.bfloat16):  # features from an fp32 or a bf16 op
        layer.weight.grad = None
        x = features.detach().to(dtype).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, nll = layer.loss(DecoderOut(x), None, target, 0.1)
        loss.backward()
        assert loss.dtype == nll.dtype == torch.float32
        assert x.grad.dtype == dtype and layer.weight.grad.dtype == torch.float32
        torch.testing.assert_close(loss, reference, rtol=2e-2, atol=0)
        torch.testing.assert_close(x.grad.float(), expected[0], rtol=0, atol=5e-2)
        torch.testing.assert_close(layer.weight.grad, expected[1], rtol=0, atol=5e-2)
