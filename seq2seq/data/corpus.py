"""Reading corpora: local parallel text, TSV or JSON Lines files, or a Hugging Face hub id.

Every reader returns the source and target sides as two lists of strings of equal
length, and fails with a message that names the file, the line and the counts. Local
files are read here, cell for cell as written; only hub ids go through `datasets`.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import sys
import dataclasses
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


def _utf8(raw: bytes, name: str) -> str:
    """The text of a file's bytes; invalid UTF-8 is an error naming the line and the byte within it."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1)
        raise DataError(f"{name}, line {line}: invalid UTF-8 ({err.reason} at byte {column})") from None


def _read_bytes(path: str) -> tuple[bytes, str]:
    """(content, name for messages) of a file, or of stdin for '-'."""
    if path == "-":
        return sys.stdin.buffer.read(), "<stdin>"
    file = Path(path)
    if not file.is_file():
        raise DataError(f"file not found: {path}")
    return file.read_bytes(), str(path)


def line_text(raw: bytes, number: int, name: str) -> str:
    """One line's text (without its line ending); invalid UTF-8 is an error naming the line and the byte."""
    try:
        return raw.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError as err:
        raise DataError(f"{name}, line {number}: invalid UTF-8 ({err.reason} at byte {err.start})") from None


def iter_lines(path: str):
    """(line number from 1, text without its line ending) for each line of a UTF-8 text file, or of
    stdin for '-', read as it goes: memory holds one line at a time."""
    if path == "-":
        stream, name, close = sys.stdin.buffer, "<stdin>", False
    else:
        file = Path(path)
        if not file.is_file():
            raise DataError(f"file not found: {path}")
        stream, name, close = file.open("rb"), str(path), True
    try:
        for number, raw in enumerate(stream, start=1):
            yield number, line_text(raw[:-1] if raw.endswith(b"\n") else raw, number, name)
    finally:
        if close:
            stream.close()


def read_lines(path: str) -> list[str]:
    """All lines of a UTF-8 text file (or stdin for '-'), without line endings."""
    return [text for _, text in iter_lines(path)]


def jsonl_record(line: str, number: int, name: str, fields: tuple[str, ...]) -> tuple[str, ...]:
    """The string values of the named fields of one JSON Lines line; a blank line, invalid JSON, a line
    that is not an object, a missing field or a value that is not a string (null included) is an
    error naming the file and the line."""
    if not line.strip():
        raise DataError(f"{name}, line {number}: empty line in a JSON Lines file")
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{name}, line {number}: not valid JSON ({err.msg} at column {err.colno})") from None
    except RecursionError:
        raise DataError(f"{name}, line {number}: JSON nested too deeply") from None
    if not isinstance(record, dict):
        raise DataError(f"{name}, line {number}: a JSON {type(record).__name__}, not an object with the "
                        f"field(s) {', '.join(fields)}")
    for field in fields:
        if field not in record:
            raise DataError(f"{name}, line {number}: no field '{field}' (found: {', '.join(record)})")
        if not isinstance(record[field], str):
            kind = "null" if record[field] is None else type(record[field]).__name__
            raise DataError(f"{name}, line {number}: field '{field}' is {kind}, not a string")
    return tuple(record[field] for field in fields)


def _jsonl_fields(path: str, fields: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The string values of the named fields, one tuple per line of a JSON Lines file (stdin for '-')."""
    name = "<stdin>" if path == "-" else path
    return [jsonl_record(line, number, name, fields) for number, line in iter_lines(path)]


def iter_documents(path: str, field: str | None = None):
    """The documents of read_documents one at a time, read as they are needed (bounded memory)."""
    if not field:
        return (text for _, text in iter_lines(path))
    name = "<stdin>" if path == "-" else path
    return (jsonl_record(line, number, name, (field,))[0] for number, line in iter_lines(path))


@dataclass(frozen=True)
class GuidedDocument:
    """One input to decode: its text, the target prefix its output starts with (None: none) and the phrases
    its output must contain (() : none)."""

    text: str
    prefix: str | None = None
    constraints: tuple[str, ...] = ()


def iter_guided_documents(path: str, field: str | None, *, prefix: str | None = None,
                          prefix_field: str | None = None, constraints: str | None = None,
                          constraints_field: str | None = None):
    """GuidedDocuments one at a time. Prefixes come from their own file (one line per input line; an empty
    line: none) or a string field of the JSON Lines input (missing or null: none); constraints from a JSON
    Lines file (one JSON list of phrase strings per input line; [] : none) or a list field of the input. A
    side file with another number of lines is an error naming both counts, found before anything is decoded
    when the files are files (not stdin)."""
    for what, file, key in (("prefix", prefix, prefix_field), ("constraints", constraints, constraints_field)):
        if file and key:
            raise DataError(f"{what}= (a file) and {what}_field= (a field of the input) both set: choose one")
        if key and not field:
            raise DataError(f"{what}_field={key} reads a field of JSON Lines input: set input_field too, "
                            f"or give them as a file with {what}=<file>")
    name = "<stdin>" if path == "-" else path
    if field:
        records = (_guided_record(line, number, name, field, prefix_field, constraints_field)
                   for number, line in iter_lines(path))
    else:
        records = (GuidedDocument(text) for _, text in iter_lines(path))
    for what, file in (("prefix", prefix), ("constraints", constraints)):
        if file:
            if path != "-" and file != "-" and count_lines(path) != count_lines(file):
                raise DataError(f"the {what} file {file} has {count_lines(file)} lines and the input {path} "
                                f"{count_lines(path)}: one line per input line")
            records = _zip_side_file(records, file, path, what)
    return records


def count_lines(path: str) -> int:
    """Lines of a file (a last line without a line break counts), read in blocks."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"file not found: {path}")
    count, last = 0, b"\n"
    with file.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 24), b""):
            count += block.count(b"\n")
            last = block[-1:]
    return count + (last != b"\n")


def _phrases(value, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: constraints must be a JSON list of strings (phrases), not {json.dumps(value)[:60]}")
    return tuple(v for v in value if v.strip())


def _guided_record(line: str, number: int, name: str, field: str, prefix_field: str | None,
                   constraints_field: str | None) -> GuidedDocument:
    (text,) = jsonl_record(line, number, name, (field,))
    if not prefix_field and not constraints_field:
        return GuidedDocument(text)
    record = json.loads(line)
    prefix = record.get(prefix_field) if prefix_field else None
    if prefix is not None and not isinstance(prefix, str):
        raise DataError(f"{name}, line {number}: field '{prefix_field}' is {type(prefix).__name__}, not a string")
    phrases = _phrases(record.get(constraints_field), f"{name}, line {number}, field '{constraints_field}'") \
        if constraints_field else ()
    return GuidedDocument(text, prefix or None, phrases)


def _zip_side_file(records, file: str, path: str, what: str):
    lines = iter_lines(file)
    for number, record in enumerate(records, start=1):
        line = next(lines, None)
        if line is None:
            raise DataError(f"the {what} file {file} ends at line {number - 1}, before the input {path}")
        if what == "prefix":
            yield dataclasses.replace(record, prefix=line[1] or None)
        else:
            try:
                value = json.loads(line[1]) if line[1].strip() else []
            except json.JSONDecodeError as err:
                raise DataError(f"{file}, line {number}: not valid JSON ({err.msg}); write one JSON list of "
                                f"phrases per line, [] for none") from None
            yield dataclasses.replace(record, constraints=_phrases(value, f"{file}, line {number}"))
    if next(lines, None) is not None:
        raise DataError(f"the {what} file {file} has more lines than the input {path}")


def read_documents(path: str, field: str | None = None) -> list[str]:
    """One document per input: the lines of a text file, or with field set the string field of each
    line of a JSON Lines file (stdin for '-'). Errors name the file and the line."""
    return list(iter_documents(path, field))


def read_jsonl(path: str, src_field: str, tgt_field: str) -> ParallelCorpus:
    """Source and target from two string fields of each line of a JSON Lines file."""
    rows = _jsonl_fields(path, (src_field, tgt_field))
    return ParallelCorpus([s for s, _ in rows], [t for _, t in rows])


def read_tsv(path: str, src_field: str, tgt_field: str) -> ParallelCorpus:
    """Source and target from two columns of a tab-separated file whose first row names the columns.

    Cells are kept as written ("NA", "null" and "" stay what they are); a cell holding a
    tab, a newline or a leading quote is quoted the way the csv module writes it. A row
    with another number of cells than the header, or broken quoting, is an error naming the line.
    """
    raw, name = _read_bytes(path)
    reader = csv.reader(io.StringIO(_utf8(raw, name), newline=""), dialect="excel-tab", strict=True)
    line = 1  # where the next row starts
    try:
        header = next(reader, None)
        if header is None:
            raise DataError(f"{name}: empty file (a TSV corpus needs a header row naming its columns)")
        for field in (src_field, tgt_field):
            if field not in header:
                raise DataError(f"{name}, line 1: no column '{field}' in the header row ({', '.join(header)}); "
                                "the first row must name the columns")
        src_col, tgt_col = header.index(src_field), header.index(tgt_field)
        src, tgt = [], []
        line = reader.line_num + 1
        for row in reader:
            if len(row) != len(header):
                raise DataError(f"{name}, line {line}: {len(row)} cells, the header row has {len(header)}")
            src.append(row[src_col])
            tgt.append(row[tgt_col])
            line = reader.line_num + 1
    except csv.Error as err:
        raise DataError(f"{name}, line {line}: not valid TSV ({err})") from None
    return ParallelCorpus(src, tgt)


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
    hub_config: str | None = None,
    hub_revision: str | None = None,
) -> ParallelCorpus:
    """One split ('train', 'valid' or 'test') of a corpus: from root/path when root is set, else
    hub_id's split (dataset config hub_config, git revision hub_revision) through `datasets`."""
    if root:
        if split not in splits:
            raise DataError(f"data.splits names no '{split}' split (it has: {', '.join(splits)})")
        base, name = Path(root) / path, splits[split]
        if format == "text":
            return read_parallel_text(str(base / f"{name}.{src}"), str(base / f"{name}.{tgt}"))
        if format == "jsonl":
            return read_jsonl(str(base / f"{name}.jsonl"), src, tgt)
        if format == "tsv":
            return read_tsv(str(base / f"{name}.tsv"), src, tgt)
        raise DataError(f"unknown data format '{format}' (text, jsonl or tsv)")
    if not hub_id:
        raise DataError("no data: set data.root (or SEQ2SEQ_DATA) to a local copy, or data.hub_id")
    import datasets  # lazy: seconds of start-up, only for data.hub_id

    hub_name = (hub_splits or splits)[split]
    log.info("loading %s split %s from the Hugging Face hub", hub_id, hub_name)
    dataset = datasets.load_dataset(hub_id, name=hub_config, revision=hub_revision, split=hub_name)
    return _columns(dataset, src, tgt, f"{hub_id}[{hub_name}]")
