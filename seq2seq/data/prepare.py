"""From a data config to encoded splits: read, train or reuse SentencePiece, encode, cache.

The cache folder is keyed by everything that changes the result (the data and
tokenizer settings and the files' sizes and times), so a second run with the same
settings skips all preprocessing. Several processes may prepare the same entry at
once: one builds it under a file lock, the others wait and then read it (cachefiles.py).
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from seq2seq.config import check_keys
from seq2seq.data.cachefiles import cache_lock, remove_stale_temps, write_atomic
from seq2seq.data.corpus import load_split
from seq2seq.data.tokenizer import Tokenizer, build_tokenizer

log = logging.getLogger(__name__)

CORPUS_KEYS = ("root", "path", "format", "src", "tgt", "splits", "hub_id", "hub_splits", "hub_config", "hub_revision")
# every key a data config may have: the corpus, the training length limits, batch sizes (the trainer's), the cache
TOKENIZER_KEYS = ("name", "model_type", "vocab_size", "joint", "character_coverage", "max_sentences",
                  "newline_piece", "byte_fallback", "threads")
DATA_KEYS = (*CORPUS_KEYS, "name", "max_src_len", "max_tgt_len", "long_pairs", "batch_tokens", "valid_batch_tokens",
             "cache_dir")
LONG_PAIRS = ("truncate", "drop")


@dataclass
class EncodedSplit:
    src: list[list[int]]
    tgt: list[list[int]]
    # the targets as read, kept for the validation split only (what its decoded outputs are scored against)
    tgt_text: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.src)

    def select(self, indices: list[int]) -> "EncodedSplit":
        return EncodedSplit([self.src[i] for i in indices], [self.tgt[i] for i in indices],
                            [self.tgt_text[i] for i in indices] if self.tgt_text else [])


@dataclass
class PreparedData:
    tokenizer: Tokenizer
    train: EncodedSplit
    valid: EncodedSplit


def _fingerprint(data: dict, tokenizer: dict) -> str:
    stats = []
    if data.get("root"):
        base = Path(data["root"]) / data["path"]
        if base.is_dir():
            for file in sorted(base.iterdir()):
                st = file.stat()
                stats.append((file.name, st.st_size, int(st.st_mtime)))
    key = json.dumps({"data": {k: data.get(k) for k in CORPUS_KEYS}, "files": stats, "tokenizer": tokenizer},
                     sort_keys=True, default=str)
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def _encode(tokenizer: Tokenizer, corpus, keep_text: bool) -> EncodedSplit:
    return EncodedSplit(tokenizer.encode_src(corpus.src), tokenizer.encode_tgt(corpus.tgt),
                        list(corpus.tgt) if keep_text else [])


def _save(split: EncodedSplit, path: Path) -> None:
    blob = {"src": split.src, "tgt": split.tgt, "tgt_text": split.tgt_text}
    write_atomic(path, lambda tmp: torch.save(blob, tmp))


def _load(path: Path) -> EncodedSplit:
    blob = torch.load(path, weights_only=True)
    return EncodedSplit(blob["src"], blob["tgt"], blob.get("tgt_text", []))


def _check_long_pairs(long_pairs) -> None:
    if long_pairs not in LONG_PAIRS:
        raise ValueError(f"data.long_pairs must be one of {', '.join(LONG_PAIRS)}, not {long_pairs!r}")


def filter_training_pairs(split: EncodedSplit, max_src_len: int, max_tgt_len: int,
                          long_pairs: str = "drop") -> EncodedSplit:
    """Drop pairs with an empty side; cut (long_pairs='truncate') or drop ('drop') pairs with a side longer
    than its limit, EOS included; log how many of each. Texts are kept whole (only valid's are read)."""
    _check_long_pairs(long_pairs)
    keep, src, tgt = [], [], []
    empty = long = cut_src = cut_tgt = 0
    for i, (s, t) in enumerate(zip(split.src, split.tgt)):
        if not s or not t:
            empty += 1
            continue
        src_long, tgt_long = len(s) + 1 > max_src_len, len(t) + 1 > max_tgt_len
        if (src_long or tgt_long) and long_pairs == "drop":
            long += 1
            continue
        cut_src += src_long
        cut_tgt += tgt_long
        keep.append(i)
        src.append(s[: max_src_len - 1] if src_long else s)
        tgt.append(t[: max_tgt_len - 1] if tgt_long else t)
    if empty or long:
        log.warning("training data: dropped %d pairs with an empty side and %d longer than %d/%d subwords "
                    "(%d of %d kept)", empty, long, max_src_len, max_tgt_len, len(keep), len(split))
    if cut_src or cut_tgt:
        log.warning("training data: truncated %d sources to %d and %d targets to %d subwords (EOS included; "
                    "data.long_pairs=truncate)", cut_src, max_src_len, cut_tgt, max_tgt_len)
    if len(keep) == len(split) and not (cut_src or cut_tgt):
        return split
    return replace(split.select(keep), src=src, tgt=tgt)


def prepare_data(data: dict, tokenizer: dict, *, seed: int = 1) -> PreparedData:
    """Encoded train and valid splits and their tokenizer, from the cache when it has them.

    An unknown data or tokenizer key or long_pairs value is an error here, before any preprocessing.
    """
    check_keys("data", data, DATA_KEYS)
    check_keys("tokenizer", tokenizer, TOKENIZER_KEYS)
    _check_long_pairs(data["long_pairs"])
    cache = Path(data["cache_dir"]) / _fingerprint(data, tokenizer)
    done = cache / "done"
    if not done.is_file():
        with cache_lock(cache / "prepare.lock", f"preprocessing into {cache}"):
            if not done.is_file():  # else the process we waited for has just built it
                return _build(data, tokenizer, cache, seed)
    log.info("using cached preprocessing in %s", cache)
    return PreparedData(Tokenizer.load(cache / "tokenizer"), _load(cache / "train.pt"), _load(cache / "valid.pt"))


def _build(data: dict, tokenizer: dict, cache: Path, seed: int) -> PreparedData:
    """Fill the cache entry (the caller holds its lock): tokenizer/, train.pt, valid.pt, and last done."""
    remove_stale_temps(cache, "train.pt", "valid.pt", "done")
    corpus_args = {k: data.get(k) for k in CORPUS_KEYS}
    train = load_split("train", **corpus_args)
    valid = load_split("valid", **corpus_args)
    log.info("read %d training and %d validation pairs", len(train), len(valid))
    tok_options = {k: tokenizer[k] for k in ("model_type", "vocab_size", "character_coverage", "max_sentences", "threads")}
    tok = build_tokenizer(train.src, train.tgt, cache / "tokenizer", joint=tokenizer["joint"], seed=seed,
                          newline_piece=tokenizer["newline_piece"], byte_fallback=tokenizer["byte_fallback"],
                          **tok_options)
    encoded_train, encoded_valid = _encode(tok, train, keep_text=False), _encode(tok, valid, keep_text=True)
    _save(encoded_train, cache / "train.pt")
    _save(encoded_valid, cache / "valid.pt")
    write_atomic(cache / "done", lambda tmp: tmp.write_text("ok\n"))
    return PreparedData(tok, encoded_train, encoded_valid)
