"""Property-based tests (Hypothesis) of the corpus readers and of decoding with random input.

The only allowed outcomes are the right answer (every line, in order) or a DataError that
names the file and the line; never a crash with another exception, a dropped line or a
reordered one.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.corpora import write_corpus
from helpers.models import transformer_config
from seq2seq.data.corpus import DataError, read_documents, read_jsonl, read_lines, read_parallel_text, read_tsv
from seq2seq.generation.decoding import decode_ids
from seq2seq.generation.options import GenerationOptions
from seq2seq.models.model import build_model

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# bytes that stress line handling and UTF-8: newlines, CR, tabs, NUL, quotes, braces, invalid sequences
SPICY = st.sampled_from([b"\n", b"\r\n", b"\r", b"\t", b"\x00", b'"', b"{", b"}", b"\xff", b"\xc3", b"\xc3\xa9",
                         b"\xe2\x82\xac", b"\xf0\x9f\x98\x80", b"\xed\xa0\x80", b" ", b"a", b"NA", b"null"])
RAW = st.one_of(st.binary(max_size=300), st.lists(SPICY, max_size=80).map(b"".join))
# text lines (no line breaks inside): any code point but the ones that split lines; empty and long ones too
LINE = st.one_of(st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)), max_size=60),
                 st.just(""), st.text(alphabet="ab c", min_size=1500, max_size=2500))


def _expected_lines(raw: bytes) -> list[str]:
    lines = raw.decode("utf-8").split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.rstrip("\r") for line in lines]


def _clear(err: DataError, path: Path) -> bool:
    message = str(err)
    return "\n" not in message and (str(path) in message)


@FUZZ
@given(raw=RAW)
def test_read_lines_returns_every_line_in_order_or_names_the_bad_line(raw, tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(raw)
    try:
        got = read_lines(str(path))
    except DataError as err:
        assert _clear(err, path) and ", line " in str(err) and "invalid UTF-8" in str(err)
        with pytest.raises(UnicodeDecodeError):
            raw.decode("utf-8")
        return
    assert got == _expected_lines(raw)
    assert read_documents(str(path)) == got


@FUZZ
@given(src=RAW, tgt=RAW)
def test_parallel_text_pairs_every_line_or_says_why_not(src, tgt, tmp_path):
    (tmp_path / "a.src").write_bytes(src)
    (tmp_path / "a.tgt").write_bytes(tgt)
    try:
        corpus = read_parallel_text(str(tmp_path / "a.src"), str(tmp_path / "a.tgt"))
    except DataError as err:
        assert "\n" not in str(err) and ("invalid UTF-8" in str(err) or "lines" in str(err))
        return
    assert corpus.src == _expected_lines(src) and corpus.tgt == _expected_lines(tgt)


@FUZZ
@given(raw=RAW)
def test_json_lines_reader_on_random_bytes(raw, tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(raw)
    try:
        rows = read_jsonl(str(path), "a", "b")
    except DataError as err:
        assert _clear(err, path) and ", line " in str(err)
        return
    records = [json.loads(line) for line in _expected_lines(raw)]
    assert rows.src == [r["a"] for r in records] and rows.tgt == [r["b"] for r in records]


@FUZZ
@given(docs=st.lists(st.tuples(LINE, LINE), max_size=8))
def test_json_lines_round_trip_any_text(docs, tmp_path):
    """Any strings, written as JSON Lines (newlines inside are escaped), come back unchanged and in order."""
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"a": a + "\n" + b, "b": b}) + "\r\n" for a, b in docs), encoding="utf-8")
    rows = read_jsonl(str(path), "a", "b")
    assert rows.src == [a + "\n" + b for a, b in docs] and rows.tgt == [b for _, b in docs]
    assert read_documents(str(path), "b") == [b for _, b in docs]


@FUZZ
@given(raw=RAW)
def test_tsv_reader_on_random_bytes(raw, tmp_path):
    path = tmp_path / "in.tsv"
    path.write_bytes(b"a\tb\n" + raw)
    try:
        rows = read_tsv(str(path), "a", "b")
    except DataError as err:
        assert _clear(err, path) and ", line " in str(err)
        return
    assert len(rows.src) == len(rows.tgt)
    assert all(isinstance(cell, str) for cell in rows.src + rows.tgt)


# ---------------------------------------------------------------- decoding


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory):
    """A real SentencePiece tokenizer (byte fallback: any text encodes) and an untrained tiny Transformer."""
    from seq2seq.data.prepare import prepare_data

    root = tmp_path_factory.mktemp("fuzz")
    write_corpus(root, n_train=300, n_valid=10)
    data = prepare_data({"root": str(root), "path": "toy", "format": "text", "src": "src", "tgt": "tgt",
                         "splits": {"train": "train", "valid": "val", "test": "test"},
                         "cache_dir": str(root / "cache"), "long_pairs": "drop", "workers": None},
                        {"model_type": "unigram", "vocab_size": 400, "joint": True, "character_coverage": 1.0,
                         "max_sentences": 10_000, "byte_fallback": True, "newline_piece": None, "threads": 2})  # 256 byte pieces + the toy's
    torch.manual_seed(0)
    config = transformer_config(layers=1, dim=32, heads=2, ffn=64, max_positions=64)
    model = build_model(config, data.tokenizer.src_vocab_size, data.tokenizer.tgt_vocab_size).eval()
    return model, data.tokenizer


@FUZZ
@given(lines=st.lists(LINE, max_size=10), strategy=st.sampled_from(["greedy", "beam"]))
def test_decoding_keeps_every_line_in_order(lines, strategy, tiny_decoder):
    """Empty lines, control characters, any script, lines far longer than the model accepts: one
    output per input, in order, each the same as decoding that line alone."""
    model, tokenizer = tiny_decoder
    opts = GenerationOptions(strategy=strategy, beam_size=2, max_len_a=0.0, max_len_b=4)
    src = tokenizer.encode_src(lines)
    with torch.no_grad():
        together = decode_ids(model, src, opts, batch_tokens=300, device=torch.device("cpu"))
        alone = [decode_ids(model, [ids], opts, batch_tokens=300, device=torch.device("cpu"))[0] for ids in src]
    assert len(together) == len(lines)
    assert [h[0].tokens for h in together] == [h[0].tokens for h in alone]
    assert [len(h[0].tokens) for h, ids in zip(together, src) if not ids] == [0] * sum(not ids for ids in src)
    assert len(tokenizer.decode_tgt([h[0].tokens for h in together])) == len(lines)
