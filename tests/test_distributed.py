"""Data-parallel training on CPU with gloo: the same code path as NCCL on GPUs, another backend.

Several processes are launched with torchrun (subprocesses), on a tiny model and a
generated corpus, so each run takes seconds.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from helpers.commands import REPO, command_env, free_port, losses, run_cli, wait_for_steps, weights
from helpers.corpora import overrides
from helpers.training import make_trainer
from seq2seq.data.batching import epoch_shard
from seq2seq.training.trainer import TrainerOptions


def torchrun_cmd(*args: str, nproc: int = 2, launcher: tuple[str, ...] = ("--standalone",)) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher, f"--nproc_per_node={nproc}",
            "-m", "seq2seq.train", *args]


def start(cmd: list[str], log: Path, cwd: Path = REPO) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, cwd=cwd, env=command_env(),
                            start_new_session=True)


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
            assert all(len(batch) for plan in plans for batch in plan)


def test_same_world_size_plan_is_unchanged_by_resuming():
    batches = [[i, i + 100] for i in range(11)]
    whole = [b.tolist() for b in epoch_shard(batches, 1, 2)]
    assert [b.tolist() for b in epoch_shard(batches[6:], 1, 2)] == whole[3:]  # resume after 3 steps of 2 ranks


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
    # each node works in an empty folder of its own: a rank other than 0 that made a run or Hydra folder
    # (relative to its working directory, where Hydra puts one by default) would leave something there
    workdirs = [corpus / f"workdir{i}" for i in range(2)]
    for workdir in workdirs:
        workdir.mkdir()
    nodes = [start(torchrun_cmd(*args, nproc=1, launcher=launcher), corpus / f"node{i}.log", cwd=workdirs[i])
             for i in range(2)]
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
    assert [sorted(p.name for p in w.rglob("*")) for w in workdirs] == [[], []]  # no folder of any rank's own


RNN_MODEL = ("model/encoder=lstm", "model/decoder=rnn", "model/attention=luong_local_p",
             "model.encoder.hidden_size=16", "model.decoder.hidden_size=32", "model.attention.window=3")


# the pointer-generator with coverage as the SAMSum recipe trains it: the coverage weight w_c takes
# no part before the coverage phase (step 3 here), so DDP must allow an unused parameter until then
COVERAGE_MODEL = ("model/encoder=lstm", "model/decoder=rnn", "model/attention=bahdanau", "model/output=pointer_generator",
                  "model.encoder.hidden_size=16", "model.decoder.hidden_size=32", "model.decoder.input_feeding=false",
                  "model.attention.timing=current", "model.attention.coverage=true", "optim.coverage_loss=1.0",
                  "optim.coverage_from_step=3")


def rnn_overrides(root: Path, run: Path, steps: int, *extra: str, model=RNN_MODEL) -> list[str]:
    """overrides() for an attentional LSTM (the Transformer-only keys left out)."""
    keep = [o for o in overrides(root, run, steps) if ".heads=" not in o and ".ffn_dim=" not in o]
    return [*keep, *model, *extra]


@pytest.mark.slow
@pytest.mark.parametrize("model", [RNN_MODEL, COVERAGE_MODEL], ids=["local_p", "copy_coverage_late"])
def test_ddp_trains_an_attentional_lstm_like_one_process(corpus, model):
    """DDP needs a gradient for every parameter on every rank: the RNN family's bridge, input feeding
    and local-p's position predictor (reached only through the Gaussian) must all get one, or be
    declared unused (coverage before its phase). Two ranks must then match one process accumulating
    the same two micro-batches per step."""
    name = "local_p" if model is RNN_MODEL else "coverage"
    ddp, single = corpus / f"rnn_ddp_{name}", corpus / f"rnn_single_{name}"
    same = ("model.dropout=0", "optim.eps=1e-4")  # eps: see the two-node test above
    proc = start(torchrun_cmd(*rnn_overrides(corpus, ddp, 3, *same, model=model)), corpus / f"rnn_ddp_{name}.log")
    run_cli("train", *rnn_overrides(corpus, single, 3, *same, "trainer.accum_steps=2", model=model))
    assert proc.wait(timeout=300) == 0, (corpus / f"rnn_ddp_{name}.log").read_text()[-3000:]
    a, b = weights(ddp / "checkpoints" / "last.pt"), weights(single / "checkpoints" / "last.pt")
    key = "position_proj" if model is RNN_MODEL else "coverage_proj"
    assert any(key in k for k in a)  # the local-p predictor / the coverage weight is really in the model
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


def _shared_validation_worker(rank: int, root: Path, port: int) -> None:
    import json

    from seq2seq.training import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    info = distributed.from_environment()
    distributed.init(info, torch.device("cpu"), "gloo", timeout_minutes=1, main_wait_minutes=1)
    try:
        trainer = make_trainer(root, root / f"shared_valid{rank}", 1, dist=info, valid_max_sentences=7)
        row = trainer.validate()
        (root / f"shared_valid{rank}.json").write_text(json.dumps(row))
    finally:
        distributed.shutdown()


def test_validation_shared_by_two_ranks_gives_the_figures_of_one_process(corpus):
    """Each rank decodes every other pair of the seeded subset; the gathered figures equal one process's."""
    import json

    alone = make_trainer(corpus, corpus / "valid_alone", 1, valid_max_sentences=7)
    assert alone.validator.subset.tolist() != list(range(7))  # a seeded random subset, not the first pairs
    expected = alone.validate()
    torch.multiprocessing.spawn(_shared_validation_worker, args=(corpus, free_port()), nprocs=2)
    for rank in (0, 1):
        row = json.loads((corpus / f"shared_valid{rank}.json").read_text())
        assert row["valid_bleu"] == expected["valid_bleu"]
        assert abs(row["valid_nll"] - expected["valid_nll"]) < 1e-5  # float32 sums over other batches


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
