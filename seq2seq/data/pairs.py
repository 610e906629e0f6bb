"""The training pairs as training reads them: an index into the cache's token arrays.

No per-pair Python object exists: which pairs are used (the empty and too-long ones left out) is one integer
array (none when every pair is used), the lengths the batch plan needs are read from the cache's length arrays,
and a batch is read from the cache files when it is assembled (`collate`: pread, see SequenceReader), the sides
cut to their limits there (data.long_pairs=truncate).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from seq2seq.data.batching import Batch
from seq2seq.data.binarized import TokenArray
from seq2seq.data.prepare import check_long_pairs
from seq2seq.data.tokenizer import BOS, EOS, PAD

log = logging.getLogger(__name__)

class SequenceReader:
    """Sequence k of a token array, read with two pread calls (its two offsets, then its ids) when the array is on
    disk: no page of the cache is mapped into the process, so its resident memory does not grow with the pages
    that batches touch (a memory map would count every touched page, up to the whole file); the kernel's page
    cache still holds the pages once for every process on the machine. In-memory arrays are sliced."""

    def __init__(self, array: TokenArray):
        self.array = array
        self.on_disk = isinstance(array.ids, np.memmap) and isinstance(array.offsets, np.memmap)
        self._fds: tuple[int, int, int] | None = None  # (pid, ids fd, offsets fd): opened again in a new process

    def _files(self) -> tuple[int, int]:
        if self._fds is None or self._fds[0] != os.getpid():
            self._fds = (os.getpid(), os.open(self.array.ids.filename, os.O_RDONLY),
                         os.open(self.array.offsets.filename, os.O_RDONLY))
        return self._fds[1], self._fds[2]

    def __call__(self, k: int) -> np.ndarray:
        if not self.on_disk:
            return self.array[k]
        ids_fd, offsets_fd = self._files()
        start, end = np.frombuffer(os.pread(offsets_fd, 16, self.array.offsets.offset + 8 * k), dtype=np.int64)
        size = self.array.ids.dtype.itemsize
        raw = os.pread(ids_fd, int(end - start) * size, self.array.ids.offset + int(start) * size)
        return np.frombuffer(raw, dtype=self.array.ids.dtype).astype(np.int64)

    def __getstate__(self):  # a DataLoader worker started by spawn opens its own files
        return {**self.__dict__, "_fds": None}

    def __del__(self):
        if self._fds is not None and self._fds[0] == os.getpid():
            os.close(self._fds[1])
            os.close(self._fds[2])


@dataclass(frozen=True, eq=False)
class TrainingPairs:
    src: TokenArray
    tgt: TokenArray
    index: np.ndarray | None  # [n] the pairs in use, as positions in src and tgt; None: every pair
    src_cut: int        # longest source side used (EOS excluded); longer ones are cut to it
    tgt_cut: int
    readers: tuple[SequenceReader, SequenceReader] = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "readers", (SequenceReader(self.src), SequenceReader(self.tgt)))

    def __len__(self) -> int:
        return len(self.src) if self.index is None else len(self.index)

    def lengths(self) -> tuple[np.ndarray, np.ndarray]:
        """The used pairs' source and target lengths, EOS included (what the batch plan measures; 2 bytes a
        pair while the limits are below 65,535)."""
        out = []
        for side, cut in ((self.src, self.src_cut), (self.tgt, self.tgt_cut)):
            lengths = np.asarray(side.lengths) if self.index is None else np.asarray(side.lengths)[self.index]
            kind = np.uint16 if cut < (1 << 16) - 2 else np.int64
            out.append(np.minimum(lengths.astype(kind, copy=False), cut) + 1)
        return out[0], out[1]

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Pair i's source and target ids (int64, cut to the limits)."""
        k = int(i) if self.index is None else int(self.index[i])
        return self.readers[0](k)[: self.src_cut], self.readers[1](k)[: self.tgt_cut]

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
    n_empty, n_long = int(empty.sum()), int(too_long.sum()) if long_pairs == "drop" else 0
    index = None if n_empty + n_long == 0 else np.flatnonzero(keep).astype(np.int32 if len(keep) < 1 << 31 else np.int64)
    kept = len(keep) if index is None else len(index)
    if n_empty or n_long:
        log.warning("training data: dropped %d pairs with an empty side and %d longer than %d/%d subwords "
                    "(%d of %d kept)", n_empty, n_long, max_src_len, max_tgt_len, kept, len(keep))
    if long_pairs == "truncate" and too_long.any():
        log.warning("training data: truncated %d sources to %d and %d targets to %d subwords (EOS included; "
                    "data.long_pairs=truncate)", int(src_long.sum()), max_src_len, int(tgt_long.sum()), max_tgt_len)
    return TrainingPairs(split.src, split.tgt, index, max_src_len - 1, max_tgt_len - 1)
