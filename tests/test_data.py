"""Reading corpora, SentencePiece and its cache, batching: behaviour and error messages."""
from __future__ import annotations

import logging

import pytest

from conftest import write_corpus
from seq2seq.data.batching import bucket_batches, collate, shard
from seq2seq.data.corpus import DataError, load_split, read_lines, read_parallel_text
from seq2seq.data.prepare import EncodedSplit, filter_training_pairs, prepare_data
from seq2seq.data.tokenizer import BOS, EOS, PAD


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match=r"file not found: .*nope\.en"):
        read_lines(str(tmp_path / "nope.en"))


def test_mismatched_line_counts_give_both_counts(tmp_path):
    (tmp_path / "a.en").write_text("one\ntwo\nthree\n")
    (tmp_path / "a.de").write_text("eins\nzwei\n")
    with pytest.raises(DataError, match=r"a\.en has 3 lines, .*a\.de has 2 lines"):
        read_parallel_text(str(tmp_path / "a.en"), str(tmp_path / "a.de"))


def test_invalid_utf8_names_the_line(tmp_path):
    (tmp_path / "bad.en").write_bytes(b"fine\nalso fine\nbroken \xff\xfe here\n")
    with pytest.raises(DataError, match=r"bad\.en, line 3: invalid UTF-8"):
        read_lines(str(tmp_path / "bad.en"))


def test_empty_lines_are_kept_in_place_when_reading(tmp_path):
    (tmp_path / "x.txt").write_text("a\n\nb\r\n\n")
    assert read_lines(str(tmp_path / "x.txt")) == ["a", "", "b", ""]


def test_jsonl_fields_and_a_missing_field(tmp_path):
    folder = tmp_path / "sum"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"dialogue": "A: hi\\nB: yo", "summary": "they greet"}\n'
                                        '{"dialogue": "C: bye", "summary": "C leaves"}\n')
    args = dict(root=str(tmp_path), path="sum", format="jsonl", splits={"train": "train"})
    corpus = load_split("train", src="dialogue", tgt="summary", **args)
    assert corpus.src == ["A: hi\nB: yo", "C: bye"] and corpus.tgt == ["they greet", "C leaves"]
    with pytest.raises(DataError, match="no field 'document'"):
        load_split("train", src="document", tgt="summary", **args)


def test_filtering_counts_empty_and_long_pairs(caplog):
    split = EncodedSplit([[5], [], [5] * 50, [6, 7]], [[5], [5], [5], []], ["a", "", "x", "b"], ["a", "b", "c", ""])
    with caplog.at_level(logging.WARNING):
        kept = filter_training_pairs(split, max_src_len=10, max_tgt_len=10)
    assert kept.src == [[5]]
    assert "dropped 2 pairs with an empty side and 1 longer than 10/10" in caplog.text


def test_batches_respect_the_token_budget_and_cover_every_pair():
    src = [(i * 7) % 23 + 1 for i in range(500)]
    tgt = [(i * 5) % 19 + 1 for i in range(500)]
    batches = bucket_batches(src, tgt, 120, shuffle=True, seed=3, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for b in batches:
        assert len(b) * max(max(src[i], tgt[i]) + 1 for i in b) <= 120 or len(b) == 1
    assert batches == bucket_batches(src, tgt, 120, shuffle=True, seed=3, epoch=0)
    assert batches != bucket_batches(src, tgt, 120, shuffle=True, seed=3, epoch=1)


def test_shards_are_disjoint_and_equal_in_number():
    batches = [[i] for i in range(11)]
    shards = [shard(batches, r, 3) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    seen = [b[0] for s in shards for b in s]
    assert len(seen) == len(set(seen)) == 9


def test_collate_adds_bos_eos_and_padding():
    batch = collate([[5, 6], [7]], [[8], [9, 10, 11]], [0, 1])
    assert batch.src.tolist() == [[5, 6, EOS], [7, EOS, PAD]]
    assert batch.prev_tokens.tolist() == [[BOS, 8, PAD, PAD], [BOS, 9, 10, 11]]
    assert batch.target.tolist() == [[8, EOS, PAD, PAD], [9, 10, 11, EOS]]
    assert batch.ntokens == 6


def test_prepare_trains_sentencepiece_once_and_caches(tmp_path, caplog):
    write_corpus(tmp_path)
    data_cfg = dict(root=str(tmp_path), path="toy", format="text", src="src", tgt="tgt",
                    splits={"train": "train", "valid": "val"}, hub_id=None, hub_splits=None,
                    cache_dir=str(tmp_path / "cache"))
    tok_cfg = dict(model_type="unigram", vocab_size=80, joint=True, character_coverage=1.0, max_sentences=10000)
    with caplog.at_level(logging.INFO):
        first = prepare_data(data_cfg, tok_cfg)
        assert "training SentencePiece" in caplog.text
        caplog.clear()
        second = prepare_data(data_cfg, tok_cfg)
    assert "using cached preprocessing" in caplog.text and "training SentencePiece" not in caplog.text
    assert first.train.src == second.train.src and len(first.train) == 1500 and len(first.valid) == 40
    text = first.train.tgt_text[0]
    assert first.tokenizer.decode_tgt([first.tokenizer.encode_tgt([text])[0]]) == [text]
    # another vocabulary size is another cache entry
    tok_cfg["vocab_size"] = 60
    caplog.clear()
    with caplog.at_level(logging.INFO):
        prepare_data(data_cfg, tok_cfg)
    assert "training SentencePiece" in caplog.text


def test_separate_vocabularies(tmp_path):
    write_corpus(tmp_path)
    data_cfg = dict(root=str(tmp_path), path="toy", format="text", src="src", tgt="tgt",
                    splits={"train": "train", "valid": "val"}, cache_dir=str(tmp_path / "cache"))
    tok_cfg = dict(model_type="bpe", vocab_size=70, joint=False, character_coverage=1.0, max_sentences=10000)
    data = prepare_data(data_cfg, tok_cfg)
    assert not data.tokenizer.joint
    assert data.tokenizer.src_pieces(data.train.src[0]) != data.tokenizer.tgt_pieces(data.train.tgt[0])
