"""Reading corpora, SentencePiece and its cache, batching: behaviour and error messages."""
from __future__ import annotations

import json
import logging
import os
import sys
import types

import pytest

from helpers.commands import REPO, compose
from helpers.corpora import toy_corpus_lines, write_corpus
from seq2seq.data.batching import bucket_batches, collate, shard
from seq2seq.data.corpus import DataError, load_split, read_documents, read_lines, read_parallel_text, read_tsv
from seq2seq.data.pairs import filter_training_pairs
from seq2seq.data.prepare import CORPUS_KEYS, DATA_KEYS, EncodedSplit, prepare_data
from seq2seq.data.tokenizer import BOS, EOS, PAD, UNK, Tokenizer, build_tokenizer

TOK_OPTIONS = dict(model_type="unigram", character_coverage=1.0, max_sentences=10000)


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


@pytest.mark.parametrize("content, message", [
    (b'{"dialogue": "a", "summary": "b"}\n{"dialogue": "c", "summary": }\n', r"x\.jsonl, line 2: not valid JSON"),
    (b'{"dialogue": "a", "summary": "b"}\n{"dialogue": "c"}\n',
     r"x\.jsonl, line 2: no field 'summary' \(found: dialogue\)"),
    (b'{"dialogue": "a", "summary": null}\n', r"x\.jsonl, line 1: field 'summary' is null, not a string"),
    (b'{"dialogue": "a", "summary": "b"}\n["c", "d"]\n', r"x\.jsonl, line 2: a JSON list, not an object"),
    (b'{"dialogue": "a", "summary": "b"}\n\n{"dialogue": "c", "summary": "d"}\n', r"x\.jsonl, line 2: empty line"),
    (b'{"dialogue": "a", "summary": "b"}\n{"dialogue": "\xff", "summary": "d"}\n',
     r"x\.jsonl, line 2: invalid UTF-8 \(invalid start byte at byte 14\)"),
])
def test_jsonl_errors_name_the_file_and_line(tmp_path, content, message):
    (tmp_path / "x.jsonl").write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_split("train", root=str(tmp_path), path=".", format="jsonl", src="dialogue", tgt="summary",
                   splits={"train": "x"})


def test_jsonl_one_field_and_two_fields_read_the_same(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"d": "A: hi\\nB: yo", "s": "NA", "id": 1}\n{"d": "", "s": "null"}\n')
    corpus = load_split("train", root=str(tmp_path), path=".", format="jsonl", src="d", tgt="s", splits={"train": "x"})
    assert corpus.src == read_documents(str(tmp_path / "x.jsonl"), "d") == ["A: hi\nB: yo", ""]
    assert corpus.tgt == ["NA", "null"]


def test_tsv_cells_are_kept_verbatim(tmp_path):
    (tmp_path / "train.tsv").write_text('id\tdocument\tsummary\n1\tNA\tnull\n2\t\tN/A\n'
                                        '3\t"A: hi\nB: ""yo"""\tnan\n4\tsays "hi" twice\tNone\n')
    corpus = load_split("train", root=str(tmp_path), path=".", format="tsv", src="document", tgt="summary",
                        splits={"train": "train"})
    assert corpus.src == ["NA", "", 'A: hi\nB: "yo"', 'says "hi" twice']
    assert corpus.tgt == ["null", "N/A", "nan", "None"]


@pytest.mark.parametrize("content, message", [
    ("document\tsummary\na\tb\nc\n", r"x\.tsv, line 3: 1 cells, the header row has 2"),
    ("doc\tsummary\na\tb\n", r"x\.tsv, line 1: no column 'document' in the header row \(doc, summary\)"),
    ("document\tsummary\na\tb\n\"c\" d\te\n", r"x\.tsv, line 3: not valid TSV"),
    ("", r"x\.tsv: empty file \(a TSV corpus needs a header row"),
])
def test_tsv_errors_name_the_file_and_line(tmp_path, content, message):
    (tmp_path / "x.tsv").write_text(content)
    with pytest.raises(DataError, match=message):
        read_tsv(str(tmp_path / "x.tsv"), "document", "summary")


def test_hub_config_and_revision_reach_load_dataset(monkeypatch):
    calls = []

    class FakeDataset(dict):
        column_names = property(lambda self: list(self))

    def load_dataset(hub_id, **kwargs):
        calls.append((hub_id, kwargs))
        return FakeDataset(dialogue=["A: hi", None], summary=["greeting", "nothing"])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    corpus = load_split("valid", root=None, path="samsum", format="jsonl", src="dialogue", tgt="summary",
                        splits={"valid": "validation"}, hub_id="someone/samsum", hub_splits={"valid": "val"},
                        hub_config="plain", hub_revision="v1.0")
    assert calls == [("someone/samsum", {"name": "plain", "revision": "v1.0", "split": "val"})]
    assert corpus.src == ["A: hi", ""] and corpus.tgt == ["greeting", "nothing"]


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "conf" / "data").glob("*.yaml")))
def test_every_data_config_has_exactly_the_keys_the_code_reads(name):
    assert set(compose("train", f"data={name}").data) == set(DATA_KEYS)


def test_an_unknown_data_key_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown data setting.*data.max_source_len"):
        prepare_data({"root": str(tmp_path), "max_source_len": 9, "cache_dir": str(tmp_path)}, {})
    with pytest.raises(ValueError, match="data.long_pairs must be one of truncate, drop, not 'clip'"):
        prepare_data({"root": str(tmp_path), "long_pairs": "clip", "cache_dir": str(tmp_path)}, {})


SHARED_DATA = os.environ.get("SEQ2SEQ_DATA") or str(REPO.parent / "shared" / "data")


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_DATA, "samsum")), reason="no samsum copy (SEQ2SEQ_DATA)")
def test_samsum_config_reads_the_local_copy():
    from seq2seq.config import to_dict

    data = to_dict(compose("train", "data=samsum", f"data.root={SHARED_DATA}").data)
    assert (data["format"], data["long_pairs"], data["max_src_len"], data["max_tgt_len"]) == \
        ("jsonl", "truncate", 512, 96)
    train = load_split("train", **{k: data[k] for k in CORPUS_KEYS})
    assert len(train) == 14_731 and "\n" in train.src[0] and train.tgt[0]


def dialogues(n: int, seed: int) -> tuple[list[str], list[str]]:
    """Two- to four-turn toy dialogues (turns separated by newlines) and one-line 'summaries'."""
    src, tgt = toy_corpus_lines(n, seed)
    turns = [f"{'AB'[i % 2]}: {s}" for i, s in enumerate(src)]
    return ["\n".join(turns[i : i + 2 + i % 3]) for i in range(n)], tgt


def test_newline_piece_is_one_piece_that_decodes_to_a_newline(tmp_path):
    src, tgt = dialogues(400, 1)
    tok = build_tokenizer(src, tgt, tmp_path / "tok", joint=True, newline_piece="<nl>", vocab_size=80, **TOK_OPTIONS)
    dialogue = "A: the cat sees a dog\nB: a red house"
    ids = tok.encode_src([dialogue])[0]
    first, second = tok.encode_src(dialogue.split("\n"))
    assert ids == first + [tok.src.piece_to_id("<nl>")] + second  # one piece per break; each turn as if alone
    assert UNK not in ids
    target_ids = tok.encode_tgt([dialogue])[0]
    assert tok.decode_tgt([target_ids]) == [dialogue]
    # blanks before a break are normalised away, like any repeated whitespace; breaks themselves are kept
    assert tok.decode_tgt(tok.encode_tgt(["\nA: the  cat \n\nB: a dog\n"])) == ["\nA: the cat\n\nB: a dog\n"]
    # the settings travel with a saved tokenizer; a folder without tokenizer.json is an older one: both off
    saved = Tokenizer.load(tok.save(tmp_path / "run" / "tokenizer").src_model_path.parent)
    assert saved.settings == {"newline_piece": "<nl>", "byte_fallback": False}
    assert saved.decode_tgt([target_ids]) == [dialogue]
    (tmp_path / "run" / "tokenizer" / "tokenizer.json").unlink()
    assert Tokenizer.load(tmp_path / "run" / "tokenizer").settings == {"newline_piece": None, "byte_fallback": False}
    with pytest.raises(ValueError, match="has no piece '<br>'"):
        Tokenizer(tok.src_model_path, tok.tgt_model_path, newline_piece="<br>")


def test_without_newline_piece_a_newline_is_a_space(tmp_path):
    src, tgt = dialogues(400, 1)
    tok = build_tokenizer(src, tgt, tmp_path / "tok", joint=True, vocab_size=80, **TOK_OPTIONS)
    assert tok.decode_tgt(tok.encode_tgt(["A: a cat\nB: a dog"])) == ["A: a cat B: a dog"]


def test_byte_fallback_encodes_unseen_characters_exactly(tmp_path):
    src, tgt = toy_corpus_lines(400, 1)
    text = "the cat sees 😀 and 漢字, ß and é"
    plain = build_tokenizer(src, tgt, tmp_path / "plain", joint=True, vocab_size=80, **TOK_OPTIONS)
    assert UNK in plain.encode_src([text])[0]
    tok = build_tokenizer(src, tgt, tmp_path / "bytes", joint=True, byte_fallback=True, vocab_size=400,
                          **TOK_OPTIONS)
    ids = tok.encode_tgt([text])[0]
    assert UNK not in ids and tok.decode_tgt([ids]) == [text]
    assert json.loads((tmp_path / "bytes" / "tokenizer.json").read_text())["byte_fallback"] is True


def test_prepare_passes_the_tokenizer_options_through(tmp_path):
    folder = tmp_path / "dialogues"
    folder.mkdir()
    for split, n, seed in (("train", 300, 1), ("valid", 20, 2)):
        src, tgt = dialogues(n, seed)
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"d": s, "s": t}) + "\n" for s, t in zip(src, tgt)))
    data_cfg = dict(root=str(tmp_path), path="dialogues", format="jsonl", src="d", tgt="s",
                    splits={"train": "train", "valid": "valid"}, cache_dir=str(tmp_path / "cache"), long_pairs="drop",
                    workers=None)
    tok_cfg = dict(joint=False, vocab_size=80, newline_piece="<nl>", byte_fallback=False, threads=2, **TOK_OPTIONS)
    data = prepare_data(data_cfg, tok_cfg)
    newline = data.tokenizer.src.piece_to_id("<nl>")
    assert data.tokenizer.newline_piece == "<nl>" and data.tokenizer.tgt.piece_to_id("<nl>") != UNK
    train_src, _ = dialogues(300, 1)
    assert [ids.tolist().count(newline) for ids in data.train.src] == [text.count("\n") for text in train_src]
    assert data.valid.tgt_text == dialogues(20, 2)[1] and data.train.tgt_text == []  # references: validation only
    cached = prepare_data(data_cfg, tok_cfg)
    assert cached.tokenizer.settings == data.tokenizer.settings and cached.train.src == data.train.src


def sides(pairs) -> tuple[list, list]:
    """The sources and targets that training reads from TrainingPairs, as lists."""
    rows = [pairs.pair(i) for i in range(len(pairs))]
    return [s.tolist() for s, _ in rows], [t.tolist() for _, t in rows]


def test_filtering_counts_empty_and_long_pairs(caplog):
    split = EncodedSplit.from_lists([[5], [], [5] * 50, [6, 7]], [[5], [5], [5], []], ["a", "b", "c", ""])
    with caplog.at_level(logging.WARNING):
        kept = filter_training_pairs(split, max_src_len=10, max_tgt_len=10)
    assert sides(kept)[0] == [[5]]
    assert "dropped 2 pairs with an empty side and 1 longer than 10/10" in caplog.text


def test_long_pairs_truncate_cuts_and_counts_and_drop_drops(caplog):
    split = EncodedSplit.from_lists([[5] * 30, [6] * 3, [7] * 4, []], [[8] * 2, [9] * 20, [4] * 2, [5]])
    with caplog.at_level(logging.WARNING):
        kept = filter_training_pairs(split, max_src_len=10, max_tgt_len=8, long_pairs="truncate")
    src, tgt = sides(kept)
    assert [len(s) for s in src] == [9, 3, 4] and [len(t) for t in tgt] == [2, 7, 2]  # + EOS = the limits
    assert kept.index.tolist() == [0, 1, 2]  # the pairs kept, as positions in the cache
    assert [n.tolist() for n in kept.lengths()] == [[10, 4, 5], [3, 8, 3]]  # what the batch plan measures
    assert "truncated 1 sources to 10 and 1 targets to 8 subwords" in caplog.text
    assert "dropped 1 pairs with an empty side and 0 longer" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        dropped = filter_training_pairs(split, max_src_len=10, max_tgt_len=8, long_pairs="drop")
    assert sides(dropped)[0] == [[7] * 4] and "truncated" not in caplog.text
    assert "dropped 1 pairs with an empty side and 2 longer than 10/8" in caplog.text
    with pytest.raises(ValueError, match="data.long_pairs must be one of truncate, drop, not 'cut'"):
        filter_training_pairs(split, 10, 8, long_pairs="cut")


def test_batches_respect_the_token_budget_and_cover_every_pair():
    src = [(i * 7) % 23 + 1 for i in range(500)]
    tgt = [(i * 5) % 19 + 1 for i in range(500)]
    batches = bucket_batches(src, tgt, 120, shuffle=True, seed=3, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(500))
    for b in batches:
        assert len(b) * max(max(src[i], tgt[i]) + 1 for i in b) <= 120 or len(b) == 1
    as_lists = [b.tolist() for b in batches]
    assert as_lists == [b.tolist() for b in bucket_batches(src, tgt, 120, shuffle=True, seed=3, epoch=0)]
    assert as_lists != [b.tolist() for b in bucket_batches(src, tgt, 120, shuffle=True, seed=3, epoch=1)]


def test_shards_are_disjoint_and_equal_in_number():
    batches = [[i] for i in range(11)]
    shards = [shard(batches, r, 3) for r in range(3)]
    assert [len(s) for s in shards] == [3, 3, 3]
    seen = [b[0] for s in shards for b in s]
    assert len(seen) == len(set(seen)) == 9


def test_collate_adds_bos_eos_and_padding():
    batch = collate([[5, 6], [7]], [[8], [9, 10, 11]])
    assert batch.src.tolist() == [[5, 6, EOS], [7, EOS, PAD]]
    assert batch.prev_tokens.tolist() == [[BOS, 8, PAD, PAD], [BOS, 9, 10, 11]]
    assert batch.target.tolist() == [[8, EOS, PAD, PAD], [9, 10, 11, EOS]]
    assert batch.ntokens == 6


def test_prepare_trains_sentencepiece_once_and_caches(tmp_path, caplog):
    write_corpus(tmp_path)
    data_cfg = dict(root=str(tmp_path), path="toy", format="text", src="src", tgt="tgt",
                    splits={"train": "train", "valid": "val"}, hub_id=None, hub_splits=None,
                    cache_dir=str(tmp_path / "cache"), long_pairs="drop",
                    workers=None)
    tok_cfg = dict(model_type="unigram", vocab_size=80, joint=True, character_coverage=1.0, max_sentences=10000,
                   newline_piece=None, byte_fallback=False, threads=2)
    with caplog.at_level(logging.INFO):
        first = prepare_data(data_cfg, tok_cfg)
        assert "training SentencePiece" in caplog.text
        caplog.clear()
        second = prepare_data(data_cfg, tok_cfg)
    assert "using cached preprocessing" in caplog.text and "training SentencePiece" not in caplog.text
    assert first.train.src == second.train.src and len(first.train) == 1500 and len(first.valid) == 40
    assert second.valid.tgt_text == first.valid.tgt_text and len(first.valid.tgt_text) == 40
    text = first.valid.tgt_text[0]
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
                    splits={"train": "train", "valid": "val"}, cache_dir=str(tmp_path / "cache"), long_pairs="drop",
                    workers=None)
    tok_cfg = dict(model_type="bpe", vocab_size=70, joint=False, character_coverage=1.0, max_sentences=10000,
                   newline_piece=None, byte_fallback=False, threads=2)
    data = prepare_data(data_cfg, tok_cfg)
    assert not data.tokenizer.joint
    assert data.tokenizer.src_pieces(data.train.src[0].tolist()) != data.tokenizer.tgt_pieces(data.train.tgt[0].tolist())


def toy_prepare_configs(root) -> tuple[dict, dict]:
    """prepare_data's data and tokenizer configs for write_corpus's data under root (a tiny vocabulary)."""
    data_cfg = dict(root=str(root), path="toy", format="text", src="src", tgt="tgt",
                    splits={"train": "train", "valid": "val"}, cache_dir=str(root / "cache"), long_pairs="drop",
                    workers=None)
    return data_cfg, dict(joint=True, vocab_size=60, newline_piece=None, byte_fallback=False, threads=2, **TOK_OPTIONS)


# Each process waits until both are ready (imports done), so that they prepare the same entry at the same moment.
PREPARE_IN_A_PROCESS = """
import hashlib, json, logging, sys, time
from pathlib import Path
from seq2seq.data.prepare import prepare_data
logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
data_cfg, tok_cfg, me, everyone = json.loads(sys.argv[1])
Path(me).touch()
while not all(Path(p).exists() for p in everyone):
    time.sleep(0.005)
data = prepare_data(data_cfg, tok_cfg)
ids = json.dumps([a.tolist() for a in (data.train.src, data.train.tgt, data.valid.src, data.valid.tgt)]).encode()
print(json.dumps({"model": hashlib.sha1(data.tokenizer.src.serialized_model_proto()).hexdigest(),
                  "ids": hashlib.sha1(ids).hexdigest()}))
"""


def test_two_processes_prepare_one_fresh_cache_at_once(tmp_path):
    import subprocess

    write_corpus(tmp_path, n_train=600, n_valid=20)
    data_cfg, tok_cfg = toy_prepare_configs(tmp_path)
    ready = [str(tmp_path / f"ready{i}") for i in range(2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    procs = [subprocess.Popen([sys.executable, "-c", PREPARE_IN_A_PROCESS,
                               json.dumps([data_cfg, tok_cfg, me, ready])],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for me in ready]
    outputs = [proc.communicate(timeout=120) for proc in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert results[0] == results[1]  # the same SentencePiece model and the same encoded ids
    logs = [err for _, err in outputs]
    assert sum("training SentencePiece" in err for err in logs) == 1, logs  # trained once, by one of them
    other = next(err for err in logs if "training SentencePiece" not in err)
    assert "using cached preprocessing" in other  # having waited for the lock, or (a slow start) after it
    cache = next((tmp_path / "cache").iterdir())
    assert not [p for p in cache.rglob("*") if p.name.endswith(".tmp")]  # no temporary file left behind


def test_waiting_for_another_process_is_logged_and_then_reads_its_cache(tmp_path, caplog):
    import threading

    from filelock import FileLock

    from seq2seq.data import prepare

    write_corpus(tmp_path, n_train=300, n_valid=20)
    data_cfg, tok_cfg = toy_prepare_configs(tmp_path)
    cache = tmp_path / "cache" / prepare._fingerprint(data_cfg, tok_cfg)
    cache.mkdir(parents=True)
    other = FileLock(str(cache / "prepare.lock"))  # another process preparing this entry
    other.acquire()
    result = []
    with caplog.at_level(logging.INFO):
        waiter = threading.Thread(target=lambda: result.append(prepare_data(data_cfg, tok_cfg)), daemon=True)
        waiter.start()
        try:
            for _ in range(500):
                if "waiting for another process" in caplog.text:
                    break
                waiter.join(0.01)
            assert "waiting for another process to finish preprocessing" in caplog.text and not result
            # the other process fills the entry and lets go: the waiting one reads it instead of preprocessing again
            built = prepare._build(data_cfg, tok_cfg, cache, 1)
        finally:
            other.release()
        waiter.join(60)
    assert result and result[0].train.src == built.train.src
    assert caplog.text.count("training SentencePiece") == 1 and "using cached preprocessing" in caplog.text


def test_files_left_by_a_killed_preparation_do_not_break_the_next_one(tmp_path):
    from seq2seq.data.prepare import _fingerprint

    write_corpus(tmp_path, n_train=300, n_valid=20)
    data_cfg, tok_cfg = toy_prepare_configs(tmp_path)
    cache = tmp_path / "cache" / _fingerprint(data_cfg, tok_cfg)
    # what a process killed half-way leaves: temporary files (old and new names), a half-trained tokenizer in
    # its temporary folder, a tokenizer folder with settings but no model (older versions), its lock file
    (cache / ".tokenizer.4242.deadbeef.tmp").mkdir(parents=True)
    (cache / ".tokenizer.4242.deadbeef.tmp" / "spm.model").write_bytes(b"half a model")
    (cache / "tokenizer").mkdir()
    (cache / "tokenizer" / "tokenizer.json").write_text('{"newline_piece": null, "byte_fallback": false}\n')
    (cache / ".train.src.ids.bin.4242.tmp").write_bytes(b"half an array")
    (cache / ".valid.references.jsonl.4242.cafef00d.tmp").write_bytes(b'"half a')
    (cache / "prepare.lock").touch()
    data = prepare_data(data_cfg, tok_cfg)
    assert len(data.train) == 300 and data.tokenizer.decode_tgt([data.valid.tgt[0].tolist()]) == data.valid.tgt_text[:1]
    assert sorted(p.name for p in cache.iterdir() if p.name.endswith(".tmp")) == []  # cleaned up
    again = prepare_data(data_cfg, tok_cfg)
    assert again.train.src == data.train.src
