"""Reading corpora: local parallel text, TSV or JSON Lines files, or a Hugging Face hub id.

Every reader returns the source and target sides as two lists of strings of equal
length, and fails with a message that names the file, the line and the counts.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Input data that cannot be used as it is; the message says where and why."""


@dataclass
class ParallelCorpus:
    src: list[str]
    tgt: list[str]

    def __len__(self) -> int:
        return len(self.src)


def _decode_lines(raw: bytes, name: str) -> list[str]:
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = []
    for number, line in enumerate(lines, start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{name}, line {number}: invalid UTF-8 ({err.reason} at byte {err.start})") from None
        out.append(text.rstrip("\r"))
    return out


def read_lines(path: str) -> list[str]:
    """All lines of a UTF-8 text file (or stdin for '-'), without line endings."""
    if path == "-":
        return _decode_lines(sys.stdin.buffer.read(), "<stdin>")
    file = Path(path)
    if not file.is_file():
        raise DataError(f"file not found: {path}")
    return _decode_lines(file.read_bytes(), str(path))


def read_documents(path: str, field: str | None = None) -> list[str]:
    """One document per input: the lines of a text file, or with field set the string field of each
    line of a JSON Lines file (stdin for '-'). Errors name the file and the line."""
    lines = read_lines(path)
    if not field:
        return lines
    import json

    name = "<stdin>" if path == "-" else path
    docs = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise DataError(f"{name}, line {number}: empty line in a JSON Lines file")
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{name}, line {number}: not valid JSON ({err.msg} at column {err.colno})") from None
        if not isinstance(record, dict) or field not in record:
            fields = ", ".join(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(f"{name}, line {number}: no field '{field}' (found: {fields})")
        value = record[field]
        if not isinstance(value, str):
            raise DataError(f"{name}, line {number}: field '{field}' is {type(value).__name__}, not a string")
        docs.append(value)
    return docs


def read_parallel_text(src_path: str, tgt_path: str) -> ParallelCorpus:
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(
            f"source and target differ in length: {src_path} has {len(src)} lines, {tgt_path} has {len(tgt)} lines"
        )
    return ParallelCorpus(src, tgt)


def _columns(dataset, src_field: str, tgt_field: str, where: str) -> ParallelCorpus:
    for field in (src_field, tgt_field):
        if field not in dataset.column_names:
            raise DataError(f"{where}: no field '{field}' (fields: {', '.join(dataset.column_names)})")
    src = ["" if x is None else str(x) for x in dataset[src_field]]
    tgt = ["" if x is None else str(x) for x in dataset[tgt_field]]
    return ParallelCorpus(src, tgt)


def load_split(
    split: str,
    *,
    root: str | None,
    path: str,
    format: str,
    src: str,
    tgt: str,
    splits: dict,
    hub_id: str | None = None,
    hub_splits: dict | None = None,
) -> ParallelCorpus:
    """One split ('train', 'valid' or 'test') of a corpus, from root/path when root is set, else from the hub."""
    if root:
        base = Path(root) / path
        name = splits[split]
        if format == "text":
            return read_parallel_text(str(base / f"{name}.{src}"), str(base / f"{name}.{tgt}"))
        if format in ("jsonl", "tsv"):
            file = base / f"{name}.{format}"
            if not file.is_file():
                raise DataError(f"file not found: {file}")
            import datasets

            builder, extra = ("json", {}) if format == "jsonl" else ("csv", {"delimiter": "\t"})
            try:
                dataset = datasets.load_dataset(builder, data_files=str(file), split="train", **extra)
            except Exception as err:  # the datasets error names the bad row; keep it, name the file
                raise DataError(f"{file}: cannot be read as {format}: {err}") from err
            return _columns(dataset, src, tgt, str(file))
        raise DataError(f"unknown data format '{format}' (text, jsonl or tsv)")
    if not hub_id:
        raise DataError("no data: set data.root (or SEQ2SEQ_DATA) to a local copy, or data.hub_id")
    import datasets

    hub_name = (hub_splits or splits)[split]
    log.info("loading %s split %s from the Hugging Face hub", hub_id, hub_name)
    dataset = datasets.load_dataset(hub_id, split=hub_name)
    return _columns(dataset, src, tgt, f"{hub_id}[{hub_name}]")
