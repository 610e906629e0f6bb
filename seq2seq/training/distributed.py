"""Process-group setup and the few collective helpers the trainer needs.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them everything runs in one
process and these helpers do nothing.

Two timeouts, because two kinds of waiting differ: a collective during training
should fail soon when a peer has died or hung (`timeout_minutes`), while the other
ranks may legitimately wait a long time for rank 0 to prepare data, validate and
write checkpoints (`main_wait_minutes`). The long wait runs on a separate gloo group
so that neither timeout has to compromise; gloo also notices at once when the peer
it waits for has died (the socket closes), so a long wait never means a hang.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

_main_wait_group = None  # gloo group with the long timeout, set by init()


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def from_environment() -> DistInfo:
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                    int(os.environ.get("WORLD_SIZE", 1)))


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto': NCCL for CUDA tensors and gloo for the small CPU ones on a GPU, gloo on a CPU."""
    if backend != "auto":
        return backend
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def init(info: DistInfo, device: torch.device, backend: str = "auto", timeout_minutes: float = 10.0,
         main_wait_minutes: float = 240.0) -> None:
    """Join the process group (torchrun's rendezvous gives the address) and create the long-wait group."""
    global _main_wait_group
    if not info.enabled or dist.is_initialized():
        return
    dist.init_process_group(backend=resolve_backend(backend, device), timeout=timedelta(minutes=timeout_minutes))
    _main_wait_group = dist.new_group(backend="gloo", timeout=timedelta(minutes=main_wait_minutes))


def shutdown() -> None:
    global _main_wait_group
    if dist.is_initialized():
        dist.destroy_process_group()
    _main_wait_group = None


def _collective_device(info: DistInfo) -> torch.device:
    """CPU unless the default group is NCCL alone, which only moves CUDA tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: list[float], info: DistInfo) -> list[float]:
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=_collective_device(info))
    dist.all_reduce(t)
    return t.tolist()


def all_reduce_max(values: list[int], info: DistInfo) -> list[int]:
    """Each value's maximum over the ranks: a stop wanted by any rank (a signal, the clock) stops all."""
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.int64, device=_collective_device(info))
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [int(v) for v in t.tolist()]


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    """Rank 0's decision, seen by every rank."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=_collective_device(info))
    dist.broadcast(t, src=0)
    return bool(t.item())


def broadcast_object(obj, info: DistInfo):
    """Rank 0's (picklable) object on every rank, over the gloo wait group."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_main_wait_group)
    return box[0]


def gather_objects(obj, info: DistInfo) -> list:
    """Every rank's object, in rank order, on every rank (small things: RNG states, fingerprints)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj, group=_main_wait_group)
    return out


def wait_for_main(info: DistInfo) -> None:
    """Barrier with the long timeout: the other ranks wait while rank 0 alone works."""
    if info.enabled:
        dist.barrier(group=_main_wait_group)
