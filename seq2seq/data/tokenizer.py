"""SentencePiece subwords: training on the training split, encoding, detokenizing.

Ids 0-3 are fixed in every model (pad, unk, bos, eos) so that the model and the
search never need to ask the tokenizer which id is which. Two settings change what
the models are trained on and so travel with them (tokenizer.json beside the models):
newline_piece, a visible piece that stands for each line break (SentencePiece would
otherwise turn it into a space), and byte_fallback, UTF-8 byte pieces for characters
outside the vocabulary instead of <unk>.
"""
from __future__ import annotations

import io
import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import sentencepiece as spm

from seq2seq.data.cachefiles import cache_lock, remove_stale_temps, temp_path, write_atomic

log = logging.getLogger(__name__)

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SETTINGS_FILE = "tokenizer.json"
OLD_SETTINGS = {"newline_piece": None, "byte_fallback": False}  # what a folder without SETTINGS_FILE was trained with

_NEWLINES = re.compile(r"(?:[^\S\n]*\n)+")  # a run of line breaks with the blanks before each


def newlines_to_piece(text: str, piece: str) -> str:
    """Each line break as piece, a space after a run of them: every break is one piece of its own, the
    next word keeps its usual word-initial form, and the blanks before a break (never kept) go."""
    return _NEWLINES.sub(lambda m: piece * m.group().count("\n") + " ", text)


def piece_to_newlines(text: str, piece: str) -> str:
    """The inverse of newlines_to_piece on detokenized text: each piece, with a space either side, is a line break
    (so is a piece that was in the text as it is)."""
    return re.sub(f" ?{re.escape(piece)} ?", "\n", text)


# tokenizer.threads (conf/tokenizer/*.yaml, tests/test_defaults.py): SentencePiece's model depends on how many threads
# train it, so the number is a setting (part of the cache key), not the host's core count
SPM_THREADS = 2

# SentencePiece's unigram trainer seeds its pieces from a suffix array of the whole sample: one UCS-4 character and
# four int32 arrays (suffixes, left and right bounds, depths) per character (docs/data.md, "The tokenizer's memory")
UNIGRAM_BYTES_PER_CHAR = 20


def train_sentencepiece(
    sentences: list[str],
    prefix: Path,
    *,
    model_type: str,
    vocab_size: int,
    character_coverage: float,
    max_sentences: int,
    user_defined_symbols: tuple[str, ...] = (),
    byte_fallback: bool = False,
    seed: int = 1,
    threads: int = SPM_THREADS,
) -> Path:
    """Train one SentencePiece model on (a sample of) the non-empty sentences into prefix.model (and prefix.vocab,
    its pieces and scores, for reading); returns the .model path. The files are written under temporary names and
    renamed into place, and the model's bytes do not depend on where it is written (no model_prefix inside)."""
    sentences = [s for s in sentences if s.strip()]
    if not sentences:
        raise ValueError("cannot train SentencePiece: the training text is empty")
    if len(sentences) > max_sentences:
        sentences = random.Random(seed).sample(sentences, max_sentences)
    if model_type == "unigram":
        chars = sum(len(s) + 1 for s in sentences)
        log.info("SentencePiece unigram on %d sentences, %d characters: its suffix array needs about %.1f GB "
                 "(%d bytes a character; model_type=bpe or a smaller tokenizer.max_sentences needs less)",
                 len(sentences), chars, chars * UNIGRAM_BYTES_PER_CHAR / 1e9, UNIGRAM_BYTES_PER_CHAR)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type=model_type,
        vocab_size=vocab_size,
        character_coverage=character_coverage,
        pad_id=PAD,
        unk_id=UNK,
        bos_id=BOS,
        eos_id=EOS,
        user_defined_symbols=list(user_defined_symbols),
        byte_fallback=byte_fallback,
        hard_vocab_limit=False,  # small corpora get a smaller vocabulary instead of an error
        max_sentence_length=1 << 16,
        num_threads=threads,
        minloglevel=2,
    )
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = "".join(f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n"
                    for i in range(processor.get_piece_size()))
    write_atomic(Path(f"{prefix}.vocab"), lambda tmp: tmp.write_text(vocab, encoding="utf-8"))
    write_atomic(Path(f"{prefix}.model"), lambda tmp: tmp.write_bytes(model.getvalue()))
    return Path(f"{prefix}.model")


def _check_newline_piece(piece: str | None) -> None:
    if piece is not None and (not isinstance(piece, str) or not piece or any(c.isspace() for c in piece)):
        raise ValueError(f"tokenizer.newline_piece must be null or a non-empty string without spaces, not {piece!r}")


class Tokenizer:
    """Source and target SentencePiece models (the same object when the vocabulary is joint), and the
    settings they were trained with (newline_piece: the piece that stands for a line break, or None;
    byte_fallback: whether unseen characters become byte pieces)."""

    def __init__(self, src_model: str | Path, tgt_model: str | Path | None = None, *,
                 newline_piece: str | None = None, byte_fallback: bool = False):
        _check_newline_piece(newline_piece)
        self.src_model_path = Path(src_model)
        self.tgt_model_path = Path(tgt_model) if tgt_model else self.src_model_path
        self.src = spm.SentencePieceProcessor(model_file=str(self.src_model_path))
        self.tgt = (
            self.src
            if self.tgt_model_path == self.src_model_path
            else spm.SentencePieceProcessor(model_file=str(self.tgt_model_path))
        )
        self.newline_piece = newline_piece
        self.byte_fallback = bool(byte_fallback)
        if newline_piece is not None:
            for model, path in ((self.src, self.src_model_path), (self.tgt, self.tgt_model_path)):
                if model.piece_to_id(newline_piece) == UNK:
                    raise ValueError(f"{path} has no piece {newline_piece!r} (tokenizer.newline_piece): "
                                     "it was trained without it")

    @property
    def settings(self) -> dict:
        return {"newline_piece": self.newline_piece, "byte_fallback": self.byte_fallback}

    @property
    def joint(self) -> bool:
        return self.src is self.tgt

    @property
    def src_vocab_size(self) -> int:
        return self.src.get_piece_size()

    @property
    def tgt_vocab_size(self) -> int:
        return self.tgt.get_piece_size()

    def _text(self, lines: list[str]) -> list[str]:
        """The lines as the models were trained to see them (line breaks as the newline piece)."""
        if self.newline_piece is None:
            return lines
        return [newlines_to_piece(line, self.newline_piece) for line in lines]

    def encode_src(self, lines: list[str], threads: int | None = None) -> list[list[int]]:
        """The lines' ids; threads: SentencePiece's (None: its default, every core)."""
        return self.src.encode(self._text(lines), num_threads=threads)

    def encode_tgt(self, lines: list[str], threads: int | None = None) -> list[list[int]]:
        return self.tgt.encode(self._text(lines), num_threads=threads)

    def decode_tgt(self, ids: list[list[int]]) -> list[str]:
        texts = self.tgt.decode(ids)
        if self.newline_piece is None:
            return texts
        return [piece_to_newlines(text, self.newline_piece) for text in texts]

    def src_pieces(self, ids: list[int]) -> list[str]:
        return [self.src.id_to_piece(i) for i in ids]

    def tgt_pieces(self, ids: list[int]) -> list[str]:
        return [self.tgt.id_to_piece(i) for i in ids]

    def save(self, folder: Path) -> "Tokenizer":
        """Copy the model files and the settings into folder (a run's tokenizer/); returns the tokenizer reading
        them there."""
        folder.mkdir(parents=True, exist_ok=True)
        write_settings(folder, self.settings)
        if self.joint:
            shutil.copyfile(self.src_model_path, folder / "spm.model")
            return Tokenizer(folder / "spm.model", **self.settings)
        shutil.copyfile(self.src_model_path, folder / "spm.src.model")
        shutil.copyfile(self.tgt_model_path, folder / "spm.tgt.model")
        return Tokenizer(folder / "spm.src.model", folder / "spm.tgt.model", **self.settings)

    @classmethod
    def load(cls, folder: Path) -> "Tokenizer":
        """The tokenizer saved in folder; one without tokenizer.json (older runs) has both settings off."""
        settings = read_settings(folder)
        if (folder / "spm.model").is_file():
            return cls(folder / "spm.model", **settings)
        if (folder / "spm.src.model").is_file() and (folder / "spm.tgt.model").is_file():
            return cls(folder / "spm.src.model", folder / "spm.tgt.model", **settings)
        raise FileNotFoundError(f"no SentencePiece model in {folder}")


def write_settings(folder: Path, settings: dict) -> None:
    (folder / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


def read_settings(folder: Path) -> dict:
    """The settings in folder/tokenizer.json; both off when there is none."""
    file = folder / SETTINGS_FILE
    if not file.is_file():
        return dict(OLD_SETTINGS)
    try:
        saved = json.loads(file.read_text(encoding="utf-8"))
        return {key: saved[key] for key in OLD_SETTINGS}
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{file}: not a tokenizer settings file ({err!r})") from None


def build_tokenizer(train_src: list[str], train_tgt: list[str], folder: Path, *, joint: bool,
                    newline_piece: str | None = None, byte_fallback: bool = False, **options) -> Tokenizer:
    """Train the tokenizer into folder, or load it when a previous run already trained it there.

    Safe for several processes at once: training runs under a file lock (folder + '.lock'), into a temporary
    folder of this process's own, and the files are then renamed into folder, the settings first and the
    model that completes the tokenizer last, so that a model in folder always has its settings beside it.
    A process that waited for the lock loads what the other one trained.
    """
    try:
        return Tokenizer.load(folder)
    except FileNotFoundError:
        pass
    _check_newline_piece(newline_piece)
    with cache_lock(folder.with_name(folder.name + ".lock"), f"training SentencePiece in {folder}"):
        try:
            return Tokenizer.load(folder)  # trained by the process we waited for
        except FileNotFoundError:
            pass
        remove_stale_temps(folder.parent, folder.name)
        tmp = temp_path(folder)
        tmp.mkdir(parents=True)
        try:
            _train_into(tmp, train_src, train_tgt, joint=joint, newline_piece=newline_piece,
                        byte_fallback=byte_fallback, **options)
            folder.mkdir(parents=True, exist_ok=True)
            last = ["spm.model"] if joint else ["spm.src.model", "spm.tgt.model"]
            names = sorted(p.name for p in tmp.iterdir())
            for name in [SETTINGS_FILE] + [n for n in names if n not in last and n != SETTINGS_FILE] + last:
                os.replace(tmp / name, folder / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return Tokenizer.load(folder)


def _train_into(folder: Path, train_src: list[str], train_tgt: list[str], *, joint: bool,
                newline_piece: str | None, byte_fallback: bool, **options) -> None:
    """Write the settings and train the SentencePiece model(s) into folder (a new, private one)."""
    log.info("training SentencePiece (%s, vocab %d, %s%s%s)", options["model_type"], options["vocab_size"],
             "joint" if joint else "separate", f", newlines as {newline_piece}" if newline_piece else "",
             ", byte fallback" if byte_fallback else "")
    write_settings(folder, {"newline_piece": newline_piece, "byte_fallback": bool(byte_fallback)})
    if newline_piece is not None:
        train_src = [newlines_to_piece(s, newline_piece) for s in train_src]
        train_tgt = [newlines_to_piece(t, newline_piece) for t in train_tgt]
    options.update(user_defined_symbols=(newline_piece,) if newline_piece else (), byte_fallback=byte_fallback)
    if joint:
        train_sentencepiece(train_src + train_tgt, folder / "spm", **options)
    else:
        train_sentencepiece(train_src, folder / "spm.src", **options)
        train_sentencepiece(train_tgt, folder / "spm.tgt", **options)
