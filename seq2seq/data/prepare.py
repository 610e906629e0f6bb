"""From a data config to encoded splits: read, train or reuse SentencePiece, encode, cache.

The cache folder is keyed by everything that changes the result (the data and
tokenizer settings and the files' sizes and times), so a second run with the same
settings skips all preprocessing.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from seq2seq.data.corpus import load_split
from seq2seq.data.tokenizer import Tokenizer, build_tokenizer

log = logging.getLogger(__name__)

CORPUS_KEYS = ("root", "path", "format", "src", "tgt", "splits", "hub_id", "hub_splits")


@dataclass
class EncodedSplit:
    src: list[list[int]]
    tgt: list[list[int]]
    src_text: list[str]
    tgt_text: list[str]

    def __len__(self) -> int:
        return len(self.src)

    def select(self, indices: list[int]) -> "EncodedSplit":
        return EncodedSplit([self.src[i] for i in indices], [self.tgt[i] for i in indices],
                            [self.src_text[i] for i in indices], [self.tgt_text[i] for i in indices])


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


def _encode(tokenizer: Tokenizer, corpus) -> EncodedSplit:
    return EncodedSplit(tokenizer.encode_src(corpus.src), tokenizer.encode_tgt(corpus.tgt), corpus.src, corpus.tgt)


def _save(split: EncodedSplit, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save({"src": split.src, "tgt": split.tgt, "src_text": split.src_text, "tgt_text": split.tgt_text}, tmp)
    os.replace(tmp, path)


def _load(path: Path) -> EncodedSplit:
    blob = torch.load(path, weights_only=True)
    return EncodedSplit(blob["src"], blob["tgt"], blob["src_text"], blob["tgt_text"])


def filter_training_pairs(split: EncodedSplit, max_src_len: int, max_tgt_len: int) -> EncodedSplit:
    """Drop pairs with an empty side or a side longer than the limits, and say how many went."""
    keep, empty, long = [], 0, 0
    for i, (s, t) in enumerate(zip(split.src, split.tgt)):
        if not s or not t:
            empty += 1
        elif len(s) + 1 > max_src_len or len(t) + 1 > max_tgt_len:
            long += 1
        else:
            keep.append(i)
    if empty or long:
        log.warning("training data: dropped %d pairs with an empty side and %d longer than %d/%d subwords "
                    "(%d of %d kept)", empty, long, max_src_len, max_tgt_len, len(keep), len(split))
    return split.select(keep) if len(keep) < len(split) else split


def prepare_data(data: dict, tokenizer: dict, *, seed: int = 1) -> PreparedData:
    """Encoded train and valid splits and their tokenizer, from the cache when it has them."""
    cache = Path(data["cache_dir"]) / _fingerprint(data, tokenizer)
    corpus_args = {k: data.get(k) for k in CORPUS_KEYS}
    done = cache / "done"
    if done.is_file():
        log.info("using cached preprocessing in %s", cache)
        return PreparedData(Tokenizer.load(cache / "tokenizer"), _load(cache / "train.pt"), _load(cache / "valid.pt"))
    train = load_split("train", **corpus_args)
    valid = load_split("valid", **corpus_args)
    log.info("read %d training and %d validation pairs", len(train), len(valid))
    tok_options = {k: tokenizer[k] for k in ("model_type", "vocab_size", "character_coverage", "max_sentences")}
    tok = build_tokenizer(train.src, train.tgt, cache / "tokenizer", joint=tokenizer["joint"], seed=seed, **tok_options)
    encoded_train, encoded_valid = _encode(tok, train), _encode(tok, valid)
    _save(encoded_train, cache / "train.pt")
    _save(encoded_valid, cache / "valid.pt")
    done.write_text("ok\n")
    return PreparedData(tok, encoded_train, encoded_valid)
