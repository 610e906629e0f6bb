"""The binarized cache: built in chunks by several processes, resumed after a crash, read through memory maps,
refused or rebuilt when damaged; the batch plan and the DataLoader that reads it."""
from __future__ import annotations

import json
import logging
import random
import sys

import numpy as np
import pytest
import torch

from helpers.corpora import toy_corpus_lines, write_corpus
from helpers.training import make_trainer
from seq2seq.data import build
from seq2seq.data.batching import bucket_batches
from seq2seq.data.binarized import CacheError, TokenArray, open_token_array, write_token_array
from seq2seq.data.corpus import DataError, read_lines
from seq2seq.data.prepare import prepare_data

TOK = dict(model_type="unigram", vocab_size=60, joint=True, character_coverage=1.0, max_sentences=10_000,
           newline_piece=None, byte_fallback=False, threads=2)


def data_config(root, cache="cache", **changes) -> dict:
    return {"root": str(root), "path": "toy", "format": "text", "src": "src", "tgt": "tgt",
            "splits": {"train": "train", "valid": "val"}, "hub_id": None, "hub_splits": None, "hub_config": None,
            "hub_revision": None, "cache_dir": str(root / cache), "long_pairs": "drop", "workers": 1, **changes}


def arrays(data) -> list[list[list[int]]]:
    return [a.tolist() for a in (data.train.src, data.train.tgt, data.valid.src, data.valid.tgt)]


def test_a_token_array_round_trips_and_uses_16_bits_while_the_vocabulary_fits(tmp_path):
    seqs = [[5, 6, 7], [], [65_535], [1, 2]]
    small = write_token_array(tmp_path / "a", seqs, vocab_size=65_536)
    assert small.tolist() == seqs and small.ids.dtype == np.uint16 and isinstance(small.ids, np.memmap)
    assert small.lengths.tolist() == [3, 0, 1, 2] and small.offsets.tolist() == [0, 3, 3, 4, 6]
    large = write_token_array(tmp_path / "b", [[70_000, 3]], vocab_size=80_000)
    assert large.ids.dtype == np.uint32 and large.tolist() == [[70_000, 3]]
    assert TokenArray.from_lists(seqs) == small


def test_a_truncated_or_foreign_file_is_refused_with_its_name(tmp_path):
    write_token_array(tmp_path / "a", [[5, 6, 7], [8, 9]], vocab_size=100)
    ids = tmp_path / "a.ids.bin"
    ids.write_bytes(ids.read_bytes()[:-2])
    with pytest.raises(CacheError, match=r"a\.ids\.bin: 8 bytes, its manifest says 5 ids of uint16 .*truncated"):
        open_token_array(tmp_path / "a")
    write_token_array(tmp_path / "b", [[5, 6, 7], [8, 9]], vocab_size=100)
    (tmp_path / "b.lengths.npy").write_bytes((tmp_path / "b.lengths.npy").read_bytes()[:-2])
    with pytest.raises(CacheError, match=r"b\.lengths\.npy: not a readable array"):
        open_token_array(tmp_path / "b")


def test_the_cache_holds_exactly_the_tokenizers_ids(tmp_path):
    write_corpus(tmp_path, n_train=500, n_valid=20)
    data = prepare_data(data_config(tmp_path), TOK)
    tok = data.tokenizer
    folder = tmp_path / "toy"
    assert data.train.src.tolist() == tok.encode_src(read_lines(str(folder / "train.src")))
    assert data.train.tgt.tolist() == tok.encode_tgt(read_lines(str(folder / "train.tgt")))
    assert data.valid.src.tolist() == tok.encode_src(read_lines(str(folder / "val.src")))
    assert data.valid.tgt_text == read_lines(str(folder / "val.tgt"))
    assert not list(data.folder.rglob("*.pt")) and not (data.folder / "chunks").exists()


def test_chunks_and_processes_do_not_change_the_result(tmp_path, monkeypatch):
    write_corpus(tmp_path, n_train=500, n_valid=20)
    whole = prepare_data(data_config(tmp_path, "one"), TOK)
    monkeypatch.setattr(build, "CHUNK_LINES", 37)
    chunked = prepare_data(data_config(tmp_path, "two", workers=2), TOK)
    assert arrays(chunked) == arrays(whole)
    assert chunked.tokenizer.src.serialized_model_proto() == whole.tokenizer.src.serialized_model_proto()


def test_a_build_killed_midway_resumes_with_the_chunks_left_and_equals_an_uninterrupted_one(tmp_path, monkeypatch,
                                                                                           caplog):
    write_corpus(tmp_path, n_train=500, n_valid=20)
    reference = prepare_data(data_config(tmp_path, "reference"), TOK)
    monkeypatch.setattr(build, "CHUNK_LINES", 100)  # 5 chunks
    encode, encoded = build._encode_task, []

    def dies_at_the_fourth(args):
        if args[0].index == 3:
            raise KeyboardInterrupt("killed")
        encoded.append(args[0].index)
        return encode(args)

    monkeypatch.setattr(build, "_encode_task", dies_at_the_fourth)
    with pytest.raises(KeyboardInterrupt):
        prepare_data(data_config(tmp_path), TOK)
    assert encoded == [0, 1, 2]
    monkeypatch.setattr(build, "_encode_task", lambda args: encoded.append(args[0].index) or encode(args))
    caplog.clear()  # the builds above
    with caplog.at_level(logging.INFO):
        resumed = prepare_data(data_config(tmp_path), TOK)
    assert encoded == [0, 1, 2, 3, 4]  # chunks 0-2 were not encoded again
    assert "3 of 5 chunks already encoded by an interrupted build" in caplog.text
    assert "training SentencePiece" not in caplog.text  # the tokenizer of the first attempt is kept
    assert arrays(resumed) == arrays(reference)


def test_a_damaged_cache_entry_is_rebuilt_with_a_warning(tmp_path, caplog):
    write_corpus(tmp_path, n_train=300, n_valid=20)
    first = prepare_data(data_config(tmp_path), TOK)
    expected = arrays(first)
    ids = first.folder / "train.tgt.ids.bin"
    del first  # its maps: reading a mapped page past the end of a file cut in place is a bus error
    ids.write_bytes(ids.read_bytes()[: ids.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        again = prepare_data(data_config(tmp_path), TOK)
    assert "is damaged" in caplog.text and "train.tgt.ids.bin" in caplog.text and "building it again" in caplog.text
    assert arrays(again) == expected


def test_several_training_files_and_patterns_make_one_entry(tmp_path):
    folder = tmp_path / "toy"
    folder.mkdir()
    src, tgt = toy_corpus_lines(300, 1)
    for k in range(3):
        (folder / f"shard{k}.src").write_text("\n".join(src[k * 100 : (k + 1) * 100]) + "\n")
        (folder / f"shard{k}.tgt").write_text("\n".join(tgt[k * 100 : (k + 1) * 100]) + "\n")
    (folder / "train.src").write_text("\n".join(src) + "\n")
    (folder / "train.tgt").write_text("\n".join(tgt) + "\n")
    for name, lines in (("val.src", src[:10]), ("val.tgt", tgt[:10])):
        (folder / name).write_text("\n".join(lines) + "\n")
    whole = prepare_data(data_config(tmp_path, "a"), TOK)
    globbed = prepare_data(data_config(tmp_path, "b", splits={"train": ["shard[01]", "shard2"], "valid": "val"}), TOK)
    assert arrays(globbed) == arrays(whole)
    with pytest.raises(DataError, match=r"data.splits.train: no file matches .*nothing\*\.src"):
        prepare_data(data_config(tmp_path, "c", splits={"train": ["nothing*"], "valid": "val"}), TOK)
    (folder / "shard2.tgt").write_text("one line\n")
    with pytest.raises(DataError, match=r"shard2\.src has 100 lines, .*shard2\.tgt has 1 lines"):
        prepare_data(data_config(tmp_path, "d", splits={"train": "shard*", "valid": "val"}), TOK)


def test_jsonl_chunks_name_the_bad_line_of_the_whole_file(tmp_path, monkeypatch):
    folder = tmp_path / "toy"
    folder.mkdir()
    src, tgt = toy_corpus_lines(250, 1)
    lines = [json.dumps({"d": s, "s": t}) for s, t in zip(src, tgt)]
    (folder / "val.jsonl").write_text("\n".join(lines[:10]) + "\n")
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(build, "CHUNK_LINES", 60)
    config = data_config(tmp_path, format="jsonl", src="d", tgt="s")
    data = prepare_data(config, TOK)
    assert data.train.src.tolist() == data.tokenizer.encode_src(src)
    lines[200] = '{"d": "no summary"}'
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"train\.jsonl, line 201: no field 's'"):
        prepare_data(config, TOK)


def old_bucket_batches(src_lens, tgt_lens, max_tokens, *, shuffle, seed=0, epoch=0):
    """The plan as it was made pair by pair in Python before it was vectorised: the reference."""
    n = len(src_lens)
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist() if shuffle else list(range(n))
    lengths = [max(src_lens[i], tgt_lens[i]) + 1 for i in range(n)]
    order.sort(key=lambda i: (src_lens[i], tgt_lens[i]))
    batches, current, longest = [], [], 0
    for i in order:
        longest_if_added = max(longest, lengths[i])
        if current and longest_if_added * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest_if_added = [], lengths[i]
        current.append(i)
        longest = longest_if_added
    if current:
        batches.append(current)
    if shuffle:
        perm = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in perm]
    return batches


@pytest.mark.parametrize("trial", range(6))
def test_the_vectorised_plan_equals_the_pair_by_pair_one(trial):
    rng = random.Random(trial)
    n = rng.choice([0, 1, 7, 500, 3000])
    src = [rng.randint(1, 150) for _ in range(n)]
    tgt = [rng.randint(1, 150) for _ in range(n)]
    for max_tokens in (1, 100, 2048):  # 1: every pair over the budget, a batch of its own
        for shuffle in (True, False):
            new = bucket_batches(src, tgt, max_tokens, shuffle=shuffle, seed=trial, epoch=3)
            assert [b.tolist() for b in new] == old_bucket_batches(src, tgt, max_tokens, shuffle=shuffle, seed=trial,
                                                                   epoch=3)


@pytest.mark.skipif(sys.platform != "linux", reason="DataLoader workers by fork")
def test_the_data_loader_gives_the_plans_batches_in_order(tmp_path):
    write_corpus(tmp_path, n_train=1000, n_valid=10)
    for workers in (0, 2):
        trainer = make_trainer(tmp_path, tmp_path / f"run{workers}", 1, num_workers=workers)
        plan = trainer._plan(trainer._epoch_batches())
        loaded = list(trainer._loader(plan))
        assert len(loaded) == len(plan) >= 5
        for batch, idx in zip(loaded, plan):
            expected = trainer.pairs.collate(idx)
            assert torch.equal(batch.src, expected.src) and torch.equal(batch.target, expected.target)
            assert torch.equal(batch.prev_tokens, expected.prev_tokens) and batch.ntokens == expected.ntokens


def test_a_batch_sliced_from_the_maps_equals_the_list_collate(tmp_path):
    from seq2seq.data.batching import collate
    from seq2seq.data.pairs import filter_training_pairs
    from seq2seq.data.prepare import EncodedSplit

    rng = random.Random(4)
    src = [[rng.randint(4, 99) for _ in range(rng.randint(0, 12))] for _ in range(60)]
    tgt = [[rng.randint(4, 99) for _ in range(rng.randint(0, 12))] for _ in range(60)]
    split = EncodedSplit(write_token_array(tmp_path / "s", src, 100), write_token_array(tmp_path / "t", tgt, 100))
    pairs = filter_training_pairs(split, 9, 7, long_pairs="truncate")  # cut to 8 and 6 ids (+ EOS)
    kept = [i for i in range(60) if src[i] and tgt[i]]
    assert pairs.index.tolist() == kept and pairs.readers[0].on_disk  # read with pread, not mapped
    batch = [3, 0, 17, 5]
    expected = collate([src[kept[i]][:8] for i in batch], [tgt[kept[i]][:6] for i in batch])
    got = pairs.collate(np.array(batch))
    for name in ("src", "prev_tokens", "target"):
        assert torch.equal(getattr(got, name), getattr(expected, name))
    assert got.ntokens == expected.ntokens
