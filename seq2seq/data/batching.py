"""Token-count batches with length bucketing, deterministic per epoch and shardable across ranks."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from seq2seq.data.tokenizer import BOS, EOS, PAD


@dataclass
class Batch:
    src: torch.Tensor          # [B, S] source ids ending in EOS, right-padded
    prev_tokens: torch.Tensor  # [B, T] BOS + target (teacher forcing input)
    target: torch.Tensor       # [B, T] target + EOS
    ntokens: int               # non-pad target tokens

    def to(self, device) -> "Batch":
        return Batch(self.src.to(device, non_blocking=True), self.prev_tokens.to(device, non_blocking=True),
                     self.target.to(device, non_blocking=True), self.ntokens)

    def pin_memory(self) -> "Batch":  # what a DataLoader with pin_memory=True calls
        return Batch(self.src.pin_memory(), self.prev_tokens.pin_memory(), self.target.pin_memory(), self.ntokens)


def _pad(seqs: list, first: int | None, last: int | None) -> torch.Tensor:
    """Right-padded [B, W] tensor of the sequences, each with an optional token before and after."""
    extra = (first is not None) + (last is not None)
    out = torch.full((len(seqs), max(len(s) for s in seqs) + extra), PAD, dtype=torch.long)
    offset = 1 if first is not None else 0
    if first is not None:
        out[:, 0] = first
    for i, s in enumerate(seqs):
        n = len(s)
        if n:
            out[i, offset : offset + n] = s if isinstance(s, torch.Tensor) else torch.as_tensor(s, dtype=torch.long)
        if last is not None:
            out[i, offset + n] = last
    return out


def pad_source(seqs: list, max_len: int | None = None) -> torch.Tensor:
    """Right-padded [B, S] tensor of the sequences, each followed by EOS (truncated to max_len first)."""
    if max_len is not None:
        seqs = [s[: max_len - 1] for s in seqs]
    return _pad(seqs, None, EOS)


def collate(src: list, tgt: list) -> Batch:
    """A training batch; sequences are lists or 1-d tensors of ids."""
    return Batch(_pad(src, None, EOS), _pad(tgt, BOS, None), _pad(tgt, None, EOS), int(sum(len(t) + 1 for t in tgt)))


def bucket_batches(src_lens, tgt_lens, max_tokens: int, *, shuffle: bool, seed: int = 0,
                   epoch: int = 0) -> list[np.ndarray]:
    """Group pair indices into batches of at most max_tokens padded tokens (each an int array).

    Pairs are sorted by length (ties broken by a seeded permutation, so batches differ
    between epochs) and cut greedily; the batch order is shuffled when shuffle is set.
    The same (seed, epoch) always gives the same batches. Vectorised: the sort is numpy's (stable), and each
    cut is found with one running maximum over the window that can fill a batch, so a plan of millions of
    pairs takes about a second.
    """
    src_lens, tgt_lens = np.asarray(src_lens), np.asarray(tgt_lens)  # int32 from TrainingPairs: half the memory
    n = len(src_lens)
    index_type = np.int32 if n < 1 << 31 else np.int64
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    torch_type = torch.int32 if index_type == np.int32 else torch.int64  # the same permutation in either type
    order = torch.randperm(n, generator=generator, dtype=torch_type).numpy() if shuffle else np.arange(n, dtype=index_type)
    order = _sorted_by_lengths(order, src_lens, tgt_lens)
    lengths = (np.maximum(src_lens, tgt_lens) + 1)[order]
    bounds, start = [0], 0
    while start < n:
        window = lengths[start : start + max_tokens // int(lengths[start]) + 1]  # the most a batch can hold
        cost = np.maximum.accumulate(window) * np.arange(1, len(window) + 1)
        over = np.flatnonzero(cost > max_tokens)
        start += max(int(over[0]) if over.size else len(window), 1)
        bounds.append(start)
    batches = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    if shuffle:
        perm = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in perm]
    return batches


def _sorted_by_lengths(order: np.ndarray, src_lens: np.ndarray, tgt_lens: np.ndarray) -> np.ndarray:
    """order stably sorted by (source length, target length): two stable passes, the second key last (numpy's
    stable sort of 16-bit keys is a radix sort: linear time); np.lexsort where a length does not fit 16 bits."""
    if len(order) and max(int(src_lens.max()), int(tgt_lens.max())) >= 1 << 16:
        return order[np.lexsort((tgt_lens[order], src_lens[order]))]
    for lengths in (tgt_lens, src_lens):
        order = order[np.argsort(lengths[order].astype(np.uint16), kind="stable")]
    return order


def shard(batches: list, rank: int, world_size: int) -> list:
    """Rank's share of the batches: every world_size-th one, trimmed so all ranks take the same number of steps."""
    if world_size == 1:
        return batches
    usable = len(batches) - len(batches) % world_size
    return batches[rank:usable:world_size]


def epoch_shard(batches: list, rank: int, world_size: int) -> list:
    """Rank's share of an epoch's batches: every pair exactly once across the ranks, and the same
    number of batches on every rank (DDP needs all of them in every step).

    Whole batches are dealt round-robin (as shard does); the fewer than world_size
    left over are pooled and dealt again as one smaller batch per rank, or, when there are
    fewer pairs than ranks, added one pair each to the ranks' last batches.
    """
    if world_size == 1:
        return batches
    usable = len(batches) - len(batches) % world_size
    mine = [np.asarray(b) for b in shard(batches, rank, world_size)]
    rest = np.concatenate([np.asarray(b) for b in batches[usable:]] or [np.zeros(0, dtype=np.int64)])
    if len(rest) >= world_size:
        mine.append(rest[rank::world_size])
    elif len(rest):
        if not mine:
            raise ValueError(f"{len(rest)} training pairs cannot be shared by {world_size} processes")
        mine[-1] = np.concatenate([mine[-1], rest[rank : rank + 1]])
    return mine


class PlanBatches(torch.utils.data.Dataset):
    """The batches of a plan (lists of pair positions) as a DataLoader reads them: item k is batch k,
    assembled by collate (TrainingPairs.collate: read from the cache files)."""

    def __init__(self, plan: list, collate_fn):
        self.plan, self.collate_fn = plan, collate_fn

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, k: int) -> Batch:
        return self.collate_fn(self.plan[k])
