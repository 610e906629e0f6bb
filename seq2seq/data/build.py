"""Building a training split into the cache: chunks of lines, sampled and encoded by worker processes, joined.

The training files (parallel text, or JSON Lines) are never read whole. One scan of each file's bytes finds
where every chunk of `chunk_lines` lines starts (numpy over 16 MB blocks; the two sides of parallel text must
have the same number of lines). Then, in `data.workers` processes:
  1. the SentencePiece sample: `tokenizer.max_sentences` line numbers drawn once from a seeded generator
     (all lines, in order, when there are fewer), each chunk returning the text of the drawn lines it holds;
  2. the encoding: each chunk written as its own token arrays (binarized.py) with a marker file, so that a
     build killed midway starts again from the chunks without a marker;
and last the chunks are joined, in order, into the split's arrays. Memory holds a chunk per worker and the
SentencePiece sample, whatever the corpus size.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from seq2seq.data import binarized
from seq2seq.data.cachefiles import write_atomic
from seq2seq.data.corpus import DataError, jsonl_record, line_text
from seq2seq.data.tokenizer import Tokenizer

log = logging.getLogger(__name__)

CHUNK_LINES = 100_000
BLOCK = 1 << 24


@dataclass(frozen=True)
class Chunk:
    """Lines [first, first + lines) of one file group (a source file and its target, or one JSON Lines file)."""

    index: int
    format: str                    # text | jsonl
    paths: tuple[str, str]         # source and target file (the same JSON Lines file twice)
    ranges: tuple[tuple[int, int], tuple[int, int]]  # byte range of the lines in each file
    first: int                     # the first line's number in its file, from 0
    lines: int
    fields: tuple[str, str]        # the JSON Lines fields (unused for text)


def line_starts(path: str, every: int) -> tuple[list[int], int]:
    """(byte offsets of lines 0, every, 2 * every, ... and the file's size; the number of lines), read in blocks."""
    starts, count, position, last = [0], 0, 0, b""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            newlines = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10)
            # line number (count + j + 1) starts after the j-th newline of this block
            numbers = count + np.arange(1, len(newlines) + 1)
            for j in np.flatnonzero(numbers % every == 0):
                if position + newlines[j] + 1 < size:
                    starts.append(position + int(newlines[j]) + 1)
            count += len(newlines)
            position += len(block)
            last = block[-1:]
    lines = count + (1 if size and last != b"\n" else 0)
    starts.append(size)
    return starts, lines


def plan_chunks(groups: list[tuple[str, str]], format: str, fields: tuple[str, str],
                chunk_lines: int | None = None) -> list[Chunk]:
    """The chunks of every file group, in order; parallel text whose sides differ in lines is an error."""
    chunk_lines = chunk_lines or CHUNK_LINES
    chunks: list[Chunk] = []
    for src, tgt in groups:
        for path in {src, tgt}:
            if not Path(path).is_file():
                raise DataError(f"file not found: {path}")
        src_starts, src_lines = line_starts(src, chunk_lines)
        tgt_starts, tgt_lines = (src_starts, src_lines) if tgt == src else line_starts(tgt, chunk_lines)
        if src_lines != tgt_lines:
            raise DataError(f"source and target differ in length: {src} has {src_lines} lines, "
                            f"{tgt} has {tgt_lines} lines")
        for k in range(len(src_starts) - 1):
            first = k * chunk_lines
            chunks.append(Chunk(len(chunks), format, (src, tgt),
                                ((src_starts[k], src_starts[k + 1]), (tgt_starts[k], tgt_starts[k + 1])),
                                first, min(chunk_lines, src_lines - first), fields))
    return chunks


def _raw_lines(path: str, span: tuple[int, int], expected: int) -> list[bytes]:
    with open(path, "rb") as f:
        f.seek(span[0])
        data = f.read(span[1] - span[0])
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    if len(lines) != expected:
        raise DataError(f"{path} changed while it was read (expected {expected} lines at byte {span[0]})")
    return lines


def read_chunk(chunk: Chunk) -> tuple[list[str], list[str]]:
    """The chunk's source and target texts; invalid UTF-8 or JSON is an error naming the file and the line."""
    sides = []
    for side in (0, 1) if chunk.format == "text" else (0,):
        path = chunk.paths[side]
        raw = _raw_lines(path, chunk.ranges[side], chunk.lines)
        sides.append([line_text(line, chunk.first + i + 1, path) for i, line in enumerate(raw)])
    if chunk.format == "text":
        return sides[0], sides[1]
    records = [jsonl_record(line, chunk.first + i + 1, chunk.paths[0], chunk.fields) for i, line in enumerate(sides[0])]
    return [r[0] for r in records], [r[1] for r in records]


def _sample_task(args) -> tuple[list[str], list[str]]:
    chunk, src_wanted, tgt_wanted = args
    src, tgt = read_chunk(chunk)
    return [src[i] for i in src_wanted], [tgt[i] for i in tgt_wanted]


def vocab_size(tok: Tokenizer) -> int:
    """The id range both sides' token arrays must hold."""
    return max(tok.src_vocab_size, tok.tgt_vocab_size)


def _encode_task(args) -> int:
    chunk, tokenizer_folder, prefix = args
    tok = Tokenizer.load(Path(tokenizer_folder))
    src, tgt = read_chunk(chunk)
    vocab = vocab_size(tok)
    binarized.write_token_array(Path(prefix + ".src"), tok.encode_src(src, threads=1), vocab)
    binarized.write_token_array(Path(prefix + ".tgt"), tok.encode_tgt(tgt, threads=1), vocab)
    write_atomic(Path(prefix + ".done"), lambda tmp: tmp.write_text("ok\n"))
    return chunk.index


def _run(task: Callable, jobs: list, workers: int) -> list:
    """task over jobs in order, in `workers` fresh processes (in this one for a single worker)."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    if workers > 1 and main_file and not os.path.isfile(main_file):
        # spawned processes re-import __main__ from its file: a program read from stdin has none, and a pool of
        # such workers dies and restarts forever. Do the work here instead.
        log.warning("data.workers=%d: the program (%s) is not a file that worker processes can import; "
                    "encoding in this process", workers, main_file)
        workers = 1
    if workers <= 1 or len(jobs) <= 1:
        return [task(job) for job in jobs]
    context = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch's threads
    with context.Pool(min(workers, len(jobs))) as pool:
        return pool.map(task, jobs, chunksize=1)


def sample_lines(chunks: list[Chunk], max_sentences: int, joint: bool, seed: int,
                 workers: int) -> tuple[list[str], list[str]]:
    """SentencePiece's training text: max_sentences lines drawn at random (seeded) from the sources and targets
    (joint) or the same pairs of both (separate); every line, in order, when there are no more than that."""
    total = sum(c.lines for c in chunks)
    population = 2 * total if joint else total
    if population <= max_sentences:
        drawn = np.arange(population)
    else:
        drawn = np.sort(np.random.default_rng(seed).choice(population, max_sentences, replace=False))
    jobs, start = [], 0
    for chunk in chunks:
        src = drawn[(drawn >= start) & (drawn < start + chunk.lines)] - start
        tgt = (drawn[(drawn >= total + start) & (drawn < total + start + chunk.lines)] - total - start) if joint else src
        jobs.append((chunk, src.tolist(), tgt.tolist()))
        start += chunk.lines
    src_lines, tgt_lines = [], []
    for s, t in _run(_sample_task, jobs, workers):
        src_lines.extend(s)
        tgt_lines.extend(t)
    log.info("SentencePiece sample: %d of %d lines", len(src_lines) + (len(tgt_lines) if joint else 0), population)
    return src_lines, tgt_lines


def encode_chunks(chunks: list[Chunk], tokenizer_folder: Path, cache: Path, name: str,
                  workers: int) -> tuple[binarized.TokenArray, binarized.TokenArray]:
    """Encode the chunks without a marker in cache/chunks/, then join all of them into cache/<name>.src|.tgt."""
    folder = cache / "chunks"
    folder.mkdir(parents=True, exist_ok=True)
    prefixes = [str(folder / f"{name}.{c.index:05d}") for c in chunks]
    todo = [(c, str(tokenizer_folder), p) for c, p in zip(chunks, prefixes) if not Path(p + ".done").is_file()]
    if len(todo) < len(chunks):
        log.info("%d of %d chunks already encoded by an interrupted build: encoding the other %d",
                 len(chunks) - len(todo), len(chunks), len(todo))
    log.info("encoding %d chunks of up to %d lines in %d processes", len(todo), chunks[0].lines if chunks else 0,
             min(workers, max(len(todo), 1)))
    _run(_encode_task, todo, workers)
    vocab = vocab_size(Tokenizer.load(tokenizer_folder))
    joined = []
    for side in ("src", "tgt"):
        writer = binarized.TokenArrayWriter(cache / f"{name}.{side}", vocab)
        for prefix in prefixes:
            writer.add_array(binarized.open_token_array(Path(f"{prefix}.{side}")))
        joined.append(writer.close())
    shutil.rmtree(folder, ignore_errors=True)
    return joined[0], joined[1]


def default_workers(workers: int | None) -> int:
    """data.workers: null = every core this process may use."""
    if workers:
        return int(workers)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
