"""The training pairs as training reads them: an index into the cache's memory-mapped token arrays.

No per-pair Python object exists: which pairs are used (the empty and too-long ones left out) is one integer
array, the lengths the batch plan needs are read from the cache's length arrays, and a batch is sliced out of
the maps when it is assembled (`collate`), the sides cut to their limits there (data.long_pairs=truncate).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from seq2seq.data.batching import Batch
from seq2seq.data.binarized import TokenArray
from seq2seq.data.prepare import check_long_pairs
from seq2seq.data.tokenizer import BOS, EOS, PAD

log = logging.getLogger(__name__)

@dataclass(frozen=True, eq=False)
class TrainingPairs:
    src: TokenArray
    tgt: TokenArray
    index: np.ndarray   # [n] the pairs in use, as positions in src and tgt
    src_cut: int        # longest source side used (EOS excluded); longer ones are cut to it
    tgt_cut: int

    def __len__(self) -> int:
        return len(self.index)

    def lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """The used pairs' source and target lengths, EOS included (what the batch plan measures)."""
        return tuple(np.minimum(np.asarray(side.lengths)[self.index].astype(np.int32), cut) + 1
                     for side, cut in ((self.src, self.src_cut), (self.tgt, self.tgt_cut)))

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Pair i's source and target ids (int64, cut to the limits)."""
        k = int(self.index[i])
        return self.src[k][: self.src_cut], self.tgt[k][: self.tgt_cut]

    def collate(self, batch) -> Batch:
        """The training batch of the used pairs at positions batch (as collate in batching.py makes it)."""
        rows = [self.pair(i) for i in batch]
        src = _padded([s for s, _ in rows], bos=False)
        prev, target = _padded([t for _, t in rows], bos=True), _padded([t for _, t in rows], bos=False)
        return Batch(torch.from_numpy(src), torch.from_numpy(prev), torch.from_numpy(target),
                     int(sum(len(t) + 1 for _, t in rows)))


def _padded(seqs: list[np.ndarray], bos: bool) -> np.ndarray:
    """[B, longest + 1]: BOS + ids (bos) or ids + EOS, right-padded with PAD."""
    out = np.full((len(seqs), max(len(s) for s in seqs) + 1), PAD, dtype=np.int64)
    for i, s in enumerate(seqs):
        if bos:
            out[i, 1 : 1 + len(s)] = s
        else:
            out[i, : len(s)] = s
            out[i, len(s)] = EOS
    if bos:
        out[:, 0] = BOS
    return out


def filter_training_pairs(split, max_src_len: int, max_tgt_len: int, long_pairs: str = "drop") -> TrainingPairs:
    """The pairs of split (an EncodedSplit) that training uses: none with an empty side; one with a side longer
    than its limit (EOS included) cut (long_pairs='truncate') or left out ('drop'); logs how many of each."""
    check_long_pairs(long_pairs)
    src_len, tgt_len = np.asarray(split.src.lengths), np.asarray(split.tgt.lengths)  # as stored: 2 bytes a pair
    empty = (src_len == 0) | (tgt_len == 0)
    src_long, tgt_long = (src_len >= max_src_len) & ~empty, (tgt_len >= max_tgt_len) & ~empty  # + EOS > limit
    too_long = src_long | tgt_long
    keep = ~empty & ~too_long if long_pairs == "drop" else ~empty
    index = np.flatnonzero(keep).astype(np.int32 if len(keep) < 1 << 31 else np.int64)
    n_empty, n_long = int(empty.sum()), int(too_long.sum()) if long_pairs == "drop" else 0
    if n_empty or n_long:
        log.warning("training data: dropped %d pairs with an empty side and %d longer than %d/%d subwords "
                    "(%d of %d kept)", n_empty, n_long, max_src_len, max_tgt_len, len(index), len(keep))
    if long_pairs == "truncate" and too_long.any():
        log.warning("training data: truncated %d sources to %d and %d targets to %d subwords (EOS included; "
                    "data.long_pairs=truncate)", int(src_long.sum()), max_src_len, int(tgt_long.sum()), max_tgt_len)
    return TrainingPairs(split.src, split.tgt, index, max_src_len - 1, max_tgt_len - 1)
