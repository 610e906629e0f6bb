"""From a data config to encoded splits: read, train or reuse SentencePiece, encode, cache.

A cache entry is a folder keyed by everything that changes its result (the data and tokenizer settings and
the files' sizes and times), so a second run with the same settings skips all preprocessing:
tokenizer/, the token arrays of each split's two sides (binarized.py: flat ids, offsets and lengths, read
through memory maps), valid.references.jsonl (what validation outputs are scored against) and last `done`.
Training files in text or JSON Lines are built in parallel chunks (build.py); other inputs (TSV, the hub)
are read into memory and encoded here. Several processes may prepare the same entry at once: one builds it
under a file lock, the others wait and then read it (cachefiles.py). An entry whose files do not match their
manifests (a truncated file) is rebuilt, with a warning.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from seq2seq.config import check_keys
from seq2seq.data import binarized
from seq2seq.data.binarized import CacheError, TokenArray
from seq2seq.data.build import default_workers, encode_chunks, plan_chunks, sample_lines, vocab_size
from seq2seq.data.cachefiles import cache_lock, remove_stale_temps, write_atomic
from seq2seq.data.corpus import DataError, load_split
from seq2seq.data.tokenizer import Tokenizer, build_tokenizer

log = logging.getLogger(__name__)

CORPUS_KEYS = ("root", "path", "format", "src", "tgt", "splits", "hub_id", "hub_splits", "hub_config", "hub_revision")
# every key a data config may have: the corpus, the training length limits, batch sizes (the trainer's), the cache
TOKENIZER_KEYS = ("name", "model_type", "vocab_size", "joint", "character_coverage", "max_sentences",
                  "newline_piece", "byte_fallback", "threads")
DATA_KEYS = (*CORPUS_KEYS, "name", "max_src_len", "max_tgt_len", "long_pairs", "batch_tokens", "valid_batch_tokens",
             "cache_dir", "workers")
CACHE_FORMAT = 2  # 1: one pickle of nested lists per split (before the token arrays)
ARRAYS = ("train.src", "train.tgt", "valid.src", "valid.tgt")
REFERENCES = "valid.references.jsonl"
LONG_PAIRS = ("truncate", "drop")


def check_long_pairs(long_pairs) -> None:
    if long_pairs not in LONG_PAIRS:
        raise ValueError(f"data.long_pairs must be one of {', '.join(LONG_PAIRS)}, not {long_pairs!r}")

@dataclass
class EncodedSplit:
    src: TokenArray
    tgt: TokenArray
    # the targets as read, kept for the validation split only (what its decoded outputs are scored against)
    tgt_text: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.src)

    @classmethod
    def from_lists(cls, src: list, tgt: list, tgt_text: list[str] | None = None,
                   vocab_size: int = 1 << 16) -> "EncodedSplit":
        return cls(TokenArray.from_lists(src, vocab_size), TokenArray.from_lists(tgt, vocab_size), list(tgt_text or []))

@dataclass
class PreparedData:
    tokenizer: Tokenizer
    train: object   # an EncodedSplit as prepared; the TrainingPairs (seq2seq.data.pairs) training uses
    valid: EncodedSplit
    folder: Path | None = None  # the cache entry


def describe(data: PreparedData) -> str:
    """Where the entry is and what it holds (seq2seq-prepare prints it)."""
    sides = [f"{name} {len(split)} pairs, {len(split.src.ids) + len(split.tgt.ids)} tokens"
             for name, split in (("train", data.train), ("valid", data.valid))]
    return f"cache entry {data.folder}: {'; '.join(sides)}; vocabulary {data.tokenizer.src_vocab_size}"

def _fingerprint(data: dict, tokenizer: dict) -> str:
    stats = []
    if data.get("root"):
        base = Path(data["root"]) / data["path"]
        if base.is_dir():
            for file in sorted(p for p in base.rglob("*") if p.is_file()):
                st = file.stat()
                stats.append((str(file.relative_to(base)), st.st_size, int(st.st_mtime)))
    key = json.dumps({"data": {k: data.get(k) for k in CORPUS_KEYS}, "files": stats, "tokenizer": tokenizer,
                      "format": CACHE_FORMAT}, sort_keys=True, default=str)
    return hashlib.sha1(key.encode()).hexdigest()[:16]

def _load(cache: Path) -> PreparedData:
    """The entry's tokenizer and splits; CacheError when a file is missing or does not match its manifest."""
    arrays = {name: binarized.open_token_array(cache / name) for name in ARRAYS}
    refs_file = cache / REFERENCES
    try:
        refs = [json.loads(line) for line in refs_file.read_text(encoding="utf-8").splitlines()]
    except (OSError, ValueError) as err:
        raise CacheError(f"{refs_file}: not readable ({err})") from None
    if len(refs) != len(arrays["valid.tgt"]):
        raise CacheError(f"{refs_file}: {len(refs)} references for {len(arrays['valid.tgt'])} validation pairs")
    return PreparedData(Tokenizer.load(cache / "tokenizer"), EncodedSplit(arrays["train.src"], arrays["train.tgt"]),
                        EncodedSplit(arrays["valid.src"], arrays["valid.tgt"], refs), cache)

def prepare_data(data: dict, tokenizer: dict, *, seed: int = 1) -> PreparedData:
    """Encoded train and valid splits and their tokenizer, from the cache when it has them.

    An unknown data or tokenizer key or long_pairs value is an error here, before any preprocessing.
    """
    check_keys("data", data, DATA_KEYS)
    check_keys("tokenizer", tokenizer, TOKENIZER_KEYS)
    check_long_pairs(data["long_pairs"])
    cache = Path(data["cache_dir"]) / _fingerprint(data, tokenizer)
    done = cache / "done"
    if done.is_file():
        try:
            prepared = _load(cache)
            log.info("using cached preprocessing in %s", cache)
            return prepared
        except CacheError as err:
            log.warning("the cache entry %s is damaged (%s): building it again", cache, err)
            with cache_lock(cache / "prepare.lock", f"removing the damaged entry {cache}"):
                done.unlink(missing_ok=True)
    with cache_lock(cache / "prepare.lock", f"preprocessing into {cache}"):
        if not done.is_file():  # else the process we waited for has just built it
            return _build(data, tokenizer, cache, seed)
    log.info("using cached preprocessing in %s", cache)
    return _load(cache)


def _train_groups(data: dict) -> list[tuple[str, str]] | None:
    """The training file groups (source, target) that the parallel build reads, or None for a split read in
    memory (TSV, the hub). data.splits.train may name several files and glob patterns."""
    names = data["splits"].get("train") if isinstance(data["splits"], dict) else None
    several = isinstance(names, (list, tuple))
    if not data.get("root") or data["format"] not in ("text", "jsonl"):
        if several:
            raise DataError("data.splits.train: several files or patterns need data.format text or jsonl and data.root")
        return None
    if names is None:
        raise DataError(f"data.splits names no 'train' split (it has: {', '.join(data['splits'])})")
    base = Path(data["root"]) / data["path"]
    suffix = f".{data['src']}" if data["format"] == "text" else ".jsonl"
    groups = []
    for pattern in names if several else [names]:
        if glob.has_magic(pattern):
            matches = sorted(str(p) for p in base.glob(pattern + suffix))
            if not matches:
                raise DataError(f"data.splits.train: no file matches {base / (pattern + suffix)}")
        else:
            matches = [str(base / (pattern + suffix))]
        for src in matches:
            tgt = src[: -len(suffix)] + f".{data['tgt']}" if data["format"] == "text" else src
            groups.append((src, tgt))
    return groups

def _build(data: dict, tokenizer: dict, cache: Path, seed: int) -> PreparedData:
    """Fill the cache entry (the caller holds its lock): tokenizer/, the token arrays, the references, last done."""
    remove_stale_temps(cache, *(f"{name}.{kind}" for name in ARRAYS for kind in ("ids.bin", "offsets.npy",
                                                                               "lengths.npy", "json")),
                       REFERENCES, "done")
    corpus_args = {k: data.get(k) for k in CORPUS_KEYS}
    workers = default_workers(data["workers"])
    tok_options = {k: tokenizer[k] for k in ("model_type", "vocab_size", "character_coverage", "max_sentences", "threads")}
    tok_args = dict(joint=tokenizer["joint"], seed=seed, newline_piece=tokenizer["newline_piece"],
                    byte_fallback=tokenizer["byte_fallback"], **tok_options)
    groups = _train_groups(data)
    if groups is None:
        train = load_split("train", **corpus_args)
        log.info("read %d training pairs", len(train))
        tok = build_tokenizer(train.src, train.tgt, cache / "tokenizer", **tok_args)
        vocab = vocab_size(tok)
        train_src = binarized.write_token_array(cache / "train.src", tok.encode_src(train.src), vocab)
        train_tgt = binarized.write_token_array(cache / "train.tgt", tok.encode_tgt(train.tgt), vocab)
        del train
    else:
        fields = (data["src"], data["tgt"])
        chunks = plan_chunks(groups, data["format"], fields)
        log.info("%d training pairs in %d file(s), %d chunks", sum(c.lines for c in chunks), len(groups), len(chunks))
        try:
            tok = Tokenizer.load(cache / "tokenizer")  # trained by an interrupted build
        except FileNotFoundError:
            sample = sample_lines(chunks, tokenizer["max_sentences"], tokenizer["joint"], seed, workers)
            tok = build_tokenizer(*sample, cache / "tokenizer", **tok_args)
            del sample
        train_src, train_tgt = encode_chunks(chunks, cache / "tokenizer", cache, "train", workers)
    valid = load_split("valid", **corpus_args)
    log.info("read %d validation pairs", len(valid))
    vocab = vocab_size(tok)
    valid_src = binarized.write_token_array(cache / "valid.src", tok.encode_src(valid.src), vocab)
    valid_tgt = binarized.write_token_array(cache / "valid.tgt", tok.encode_tgt(valid.tgt), vocab)
    refs = "".join(json.dumps(text, ensure_ascii=False) + "\n" for text in valid.tgt)
    write_atomic(cache / REFERENCES, lambda tmp: tmp.write_text(refs, encoding="utf-8"))
    write_atomic(cache / "done", lambda tmp: tmp.write_text("ok\n"))
    return PreparedData(tok, EncodedSplit(train_src, train_tgt), EncodedSplit(valid_src, valid_tgt, list(valid.tgt)),
                        cache)
