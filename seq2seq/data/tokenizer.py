"""SentencePiece subwords: training on the training split, encoding, detokenizing.

Ids 0-3 are fixed in every model (pad, unk, bos, eos) so that the model and the
search never need to ask the tokenizer which id is which.
"""
from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path

import sentencepiece as spm

log = logging.getLogger(__name__)

PAD, UNK, BOS, EOS = 0, 1, 2, 3


def train_sentencepiece(
    sentences: list[str],
    prefix: Path,
    *,
    model_type: str,
    vocab_size: int,
    character_coverage: float,
    max_sentences: int,
    seed: int = 1,
) -> Path:
    """Train one SentencePiece model on (a sample of) the non-empty sentences; returns the .model path."""
    sentences = [s for s in sentences if s.strip()]
    if not sentences:
        raise ValueError("cannot train SentencePiece: the training text is empty")
    if len(sentences) > max_sentences:
        sentences = random.Random(seed).sample(sentences, max_sentences)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_prefix=str(prefix),
        model_type=model_type,
        vocab_size=vocab_size,
        character_coverage=character_coverage,
        pad_id=PAD,
        unk_id=UNK,
        bos_id=BOS,
        eos_id=EOS,
        hard_vocab_limit=False,  # small corpora get a smaller vocabulary instead of an error
        max_sentence_length=1 << 16,
        num_threads=2,
        minloglevel=2,
    )
    return Path(f"{prefix}.model")


class Tokenizer:
    """Source and target SentencePiece models (the same object when the vocabulary is joint)."""

    def __init__(self, src_model: str | Path, tgt_model: str | Path | None = None):
        self.src_model_path = Path(src_model)
        self.tgt_model_path = Path(tgt_model) if tgt_model else self.src_model_path
        self.src = spm.SentencePieceProcessor(model_file=str(self.src_model_path))
        self.tgt = (
            self.src
            if self.tgt_model_path == self.src_model_path
            else spm.SentencePieceProcessor(model_file=str(self.tgt_model_path))
        )

    @property
    def joint(self) -> bool:
        return self.src is self.tgt

    @property
    def src_vocab_size(self) -> int:
        return self.src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self.tgt.get_piece_size()

    def encode_src(self, lines: list[str]) -> list[list[int]]:
        return self.src.encode(lines)

    def encode_tgt(self, lines: list[str]) -> list[list[int]]:
        return self.tgt.encode(lines)

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        return self.tgt.decode(ids)

    def src_pieces(self, ids: list[int]) -> list[str]:
        return [self.src.id_to_piece(i) for i in ids]

    def tgt_pieces(self, ids: list[int]) -> list[str]:
        return [self.tgt.id_to_piece(i) for i in ids]

    def save(self, folder: Path) -> "Tokenizer":
        """Copy the model files into folder (a run's tokenizer/); returns the tokenizer reading them there."""
        folder.mkdir(parents=True, exist_ok=True)
        if self.joint:
            shutil.copyfile(self.src_model_path, folder / "spm.model")
            return Tokenizer(folder / "spm.model")
        shutil.copyfile(self.src_model_path, folder / "spm.src.model")
        shutil.copyfile(self.tgt_model_path, folder / "spm.tgt.model")
        return Tokenizer(folder / "spm.src.model", folder / "spm.tgt.model")

    @classmethod
    def load(cls, folder: Path) -> "Tokenizer":
        if (folder / "spm.model").is_file():
            return cls(folder / "spm.model")
        if (folder / "spm.src.model").is_file() and (folder / "spm.tgt.model").is_file():
            return cls(folder / "spm.src.model", folder / "spm.tgt.model")
        raise FileNotFoundError(f"no SentencePiece model in {folder}")


def build_tokenizer(train_src: list[str], train_tgt: list[str], folder: Path, *, joint: bool, **options) -> Tokenizer:
    """Train the tokenizer into folder, or load it when a previous run already trained it there."""
    try:
        return Tokenizer.load(folder)
    except FileNotFoundError:
        pass
    log.info("training SentencePiece (%s, vocab %d, %s)", options["model_type"], options["vocab_size"],
             "joint" if joint else "separate")
    if joint:
        return Tokenizer(train_sentencepiece(train_src + train_tgt, folder / "spm", **options))
    src = train_sentencepiece(train_src, folder / "spm.src", **options)
    tgt = train_sentencepiece(train_tgt, folder / "spm.tgt", **options)
    return Tokenizer(src, tgt)
