"""Token-count batches with length bucketing, deterministic per epoch and shardable across ranks."""
from __future__ import annotations

from dataclasses import dataclass

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


def bucket_batches(
    src_lens: list[int], tgt_lens: list[int], max_tokens: int, *, shuffle: bool, seed: int = 0, epoch: int = 0
) -> list[list[int]]:
    """Group pair indices into batches of at most max_tokens padded tokens.

    Pairs are sorted by length (ties broken by a seeded permutation, so batches differ
    between epochs) and cut greedily; the batch order is shuffled when shuffle is set.
    The same (seed, epoch) always gives the same batches.
    """
    n = len(src_lens)
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    lengths = [max(src_lens[i], tgt_lens[i]) + 1 for i in range(n)]
    order.sort(key=lambda i: (src_lens[i], tgt_lens[i]))
    batches, current, longest = [], [], 0
    for i in order:
        longest_if_added = max(longest, lengths[i])
        if current and longest_if_added * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest_if_added = [], lengths[i]
        current.append(i)
        longest = longest_if_added
    if current:
        batches.append(current)
    if shuffle:
        perm = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in perm]
    return batches


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
    mine = [list(b) for b in shard(batches, rank, world_size)]
    rest = [i for b in batches[usable:] for i in b]
    if len(rest) >= world_size:
        mine.append(rest[rank::world_size])
    elif rest:
        if not mine:
            raise ValueError(f"{len(rest)} training pairs cannot be shared by {world_size} processes")
        mine[-1].extend(rest[rank : rank + 1])
    return mine
