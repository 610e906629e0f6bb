"""Token ids on disk: one flat array of ids per side of a split, read through memory maps.

A side of a split (say the training sources) is three files beside a manifest:

    <name>.ids.bin      every sequence's ids one after another (uint16 while the vocabulary fits, else uint32)
    <name>.offsets.npy  int64 [n + 1]: sequence i is ids[offsets[i]:offsets[i + 1]]
    <name>.lengths.npy  uint16/uint32 [n]: the sequences' lengths (what the batch plan reads; it never
                        touches ids or offsets)
    <name>.json         the manifest: dtype, sequences, tokens (written last: a side without it is unfinished)

No pickle anywhere: numpy reads .npy files with allow_pickle=False and the ids are raw. Reading checks every
file against the manifest (sizes, first and last offset), so a truncated or foreign file is refused with a
message (CacheError) instead of being read as garbage; the preparing code rebuilds the entry then.
Nothing here imports torch: the preparing workers are plain processes.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from seq2seq.data.cachefiles import write_atomic
from seq2seq.data.corpus import DataError

MANIFEST_VERSION = 1


class CacheError(DataError):
    """A cache file that is missing, truncated or not what its manifest says; the message names it."""


def id_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id below vocab_size."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def _files(prefix: Path) -> dict[str, Path]:
    return {"ids": prefix.with_name(prefix.name + ".ids.bin"), "offsets": prefix.with_name(prefix.name + ".offsets.npy"),
            "lengths": prefix.with_name(prefix.name + ".lengths.npy"), "manifest": prefix.with_name(prefix.name + ".json")}


@dataclass(frozen=True, eq=False)
class TokenArray:
    """Sequences of token ids as one flat array and offsets (memory maps when read from disk)."""

    ids: np.ndarray       # [tokens] uint16 / uint32
    offsets: np.ndarray   # [n + 1] int64
    lengths: np.ndarray   # [n] the sequences' lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = int(i)
        return self.ids[int(self.offsets[i]) : int(self.offsets[i + 1])].astype(np.int64)

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __eq__(self, other) -> bool:
        return (isinstance(other, TokenArray) and np.array_equal(self.offsets, other.offsets)
                and np.array_equal(self.ids, other.ids))

    def tolist(self) -> list[list[int]]:
        return [self[i].tolist() for i in range(len(self))]

    @classmethod
    def from_lists(cls, sequences: Iterable[Sequence[int]], vocab_size: int = 1 << 16) -> "TokenArray":
        """An in-memory array of the sequences (tests, small splits)."""
        sequences = [list(s) for s in sequences]
        lengths = np.array([len(s) for s in sequences], dtype=np.int64)
        offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = [i for s in sequences for i in s]
        return cls(np.array(flat, dtype=id_dtype(vocab_size)), offsets, lengths.astype(_length_dtype(lengths)))


def _length_dtype(lengths: np.ndarray) -> np.dtype:
    return np.dtype(np.uint16 if not len(lengths) or int(lengths.max()) < 1 << 16 else np.uint32)


class TokenArrayWriter:
    """Appends sequences to one side's files as they come (bounded memory); close() writes the offsets,
    the lengths and last the manifest. Every file is written under a temporary name and renamed."""

    def __init__(self, prefix: Path, vocab_size: int):
        self.prefix, self.dtype = prefix, id_dtype(vocab_size)
        self.files = _files(prefix)
        self.tmp = self.files["ids"].with_name(f".{self.files['ids'].name}.{os.getpid()}.tmp")
        self.stream = open(self.tmp, "wb")
        self.lengths: list[np.ndarray] = []

    def add(self, sequences: Sequence[Sequence[int]]) -> None:
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        flat = np.fromiter((i for s in sequences for i in s), dtype=np.int64, count=int(lengths.sum()))
        if flat.size and int(flat.max()) > np.iinfo(self.dtype).max:
            raise ValueError(f"id {int(flat.max())} does not fit {self.dtype}")
        self.stream.write(flat.astype(self.dtype).tobytes())
        self.lengths.append(lengths)

    def add_array(self, other: "TokenArray") -> None:
        """Append a whole array (the joining of chunks), copied in slices of a few million ids."""
        step = 1 << 22
        for start in range(0, len(other.ids), step):
            self.stream.write(np.asarray(other.ids[start : start + step], dtype=self.dtype).tobytes())
        self.lengths.append(np.asarray(other.lengths, dtype=np.int64))

    def close(self) -> TokenArray:
        self.stream.close()
        lengths = np.concatenate(self.lengths) if self.lengths else np.zeros(0, dtype=np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        os.replace(self.tmp, self.files["ids"])
        write_atomic(self.files["offsets"], lambda tmp: _save_npy(tmp, offsets))
        write_atomic(self.files["lengths"], lambda tmp: _save_npy(tmp, lengths.astype(_length_dtype(lengths))))
        manifest = {"version": MANIFEST_VERSION, "dtype": self.dtype.name, "sequences": len(lengths),
                    "tokens": int(offsets[-1])}
        write_atomic(self.files["manifest"], lambda tmp: tmp.write_text(json.dumps(manifest) + "\n"))
        return open_token_array(self.prefix)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would add .npy to the temporary name
        np.save(f, array, allow_pickle=False)


def write_token_array(prefix: Path, sequences: Sequence[Sequence[int]], vocab_size: int) -> TokenArray:
    writer = TokenArrayWriter(prefix, vocab_size)
    writer.add(sequences)
    return writer.close()


def open_token_array(prefix: Path) -> TokenArray:
    """The side written at prefix, memory-mapped; CacheError when a file is missing or does not match
    the manifest (truncated, from another build)."""
    files = _files(prefix)
    try:
        manifest = json.loads(files["manifest"].read_text())
        dtype, n, tokens = np.dtype(manifest["dtype"]), int(manifest["sequences"]), int(manifest["tokens"])
        if manifest.get("version") != MANIFEST_VERSION or dtype not in (np.uint16, np.uint32):
            raise ValueError(f"unknown manifest version or dtype: {manifest}")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CacheError(f"{files['manifest']}: not a readable manifest ({err})") from None
    size = files["ids"].stat().st_size if files["ids"].is_file() else -1
    if size != tokens * dtype.itemsize:
        raise CacheError(f"{files['ids']}: {size} bytes, its manifest says {tokens} ids of {dtype} "
                         f"({tokens * dtype.itemsize} bytes): truncated or from another build")
    ids = np.memmap(files["ids"], dtype=dtype, mode="r", shape=(tokens,)) if tokens else np.zeros(0, dtype)
    offsets, lengths = _read_npy(files["offsets"], n + 1), _read_npy(files["lengths"], n)
    if offsets[0] != 0 or offsets[-1] != tokens:
        raise CacheError(f"{files['offsets']}: offsets run from {offsets[0]} to {offsets[-1]}, not 0 to {tokens}")
    return TokenArray(ids, offsets, lengths)


def _read_npy(path: Path, count: int) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise CacheError(f"{path}: not a readable array ({err})") from None
    if array.ndim != 1 or len(array) != count:
        raise CacheError(f"{path}: {array.shape} values, expected {count}: truncated or from another build")
    return array
