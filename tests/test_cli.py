"""End to end through the three commands on a small generated corpus."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.commands import losses, run_cli
from helpers.corpora import tiny_train_overrides, toy_corpus_lines, write_corpus


def test_train_writes_a_complete_run_folder(trained_run):
    _, run_dir = trained_run
    for name in ("config.yaml", "tokenizer/spm.model", "checkpoints/best.pt", "checkpoints/last.pt",
                 "metrics.jsonl", "train.log"):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "tensorboard").iterdir())
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 61))
    assert steps[-1]["loss"] < steps[0]["loss"]
    valid = [r for r in rows if "valid_bleu" in r]
    assert [r["step"] for r in valid] == [20, 40, 60]


def test_decode_keeps_order_empty_lines_and_truncates_long_ones(trained_run, tmp_path):
    root, run_dir = trained_run
    src, _ = toy_corpus_lines(25, seed=9)
    src[3] = ""
    src[7] = " ".join(["cat"] * 10_000)
    (tmp_path / "in.txt").write_text("\n".join(src) + "\n")
    proc = run_cli("decode", f"run={run_dir}", f"input={tmp_path / 'in.txt'}", f"output={tmp_path / 'out.txt'}",
                   "generation.beam_size=3", "threads=1")
    out = (tmp_path / "out.txt").read_text().split("\n")[:-1]
    assert len(out) == 25
    assert out[3] == ""
    assert "line 8: 10000 subwords, truncated to the model's maximum of 127" in proc.stderr
    # every line decoded alone gives the same output as in the batch
    (tmp_path / "one.txt").write_text(src[12] + "\n")
    alone = run_cli("decode", f"run={run_dir}", f"input={tmp_path / 'one.txt'}", "generation.beam_size=3")
    assert alone.stdout == out[12] + "\n"


def test_decode_nbest_from_stdin(trained_run):
    _, run_dir = trained_run
    proc = run_cli("decode", f"run={run_dir}", "input=-", "output=-", "generation.nbest=3", "generation.beam_size=4",
                   stdin="the cat sees a dog\n\nred house\n".encode())
    rows = [line.split("\t") for line in proc.stdout.splitlines()]
    assert [r[0] for r in rows] == ["0", "0", "0", "1", "2", "2", "2"]
    scores = [float(r[1]) for r in rows if r[0] == "0"]
    assert scores == sorted(scores, reverse=True)


def test_decode_reports_invalid_utf8_with_line_number(trained_run, tmp_path):
    _, run_dir = trained_run
    (tmp_path / "bad.txt").write_bytes(b"the cat\nthe \xff dog\n")
    proc = run_cli("decode", f"run={run_dir}", f"input={tmp_path / 'bad.txt'}", check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("seq2seq-decode: error: ") and "bad.txt, line 2: invalid UTF-8" in proc.stderr


def test_decode_refuses_a_corrupt_checkpoint(trained_run, tmp_path):
    _, run_dir = trained_run
    broken = tmp_path / "broken.pt"
    data = (run_dir / "checkpoints" / "best.pt").read_bytes()
    broken.write_bytes(data[:1000])
    proc = run_cli("decode", f"run={run_dir}", f"checkpoint={broken}", "input=-", stdin=b"the cat\n", check=False)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1
    assert "cannot read checkpoint" in proc.stderr and "truncated, corrupt" in proc.stderr


def test_unknown_key_help_and_cfg_job():
    bad = run_cli("train", "trainer.max_step=5", check=False)
    assert bad.returncode == 2 and "max_step" in bad.stderr
    helped = run_cli("train", "--help")
    recipes = next(line for line in helped.stdout.splitlines() if line.startswith("recipe: "))
    assert "multi30k_en_de_transformer" in recipes and "multi30k_en_de_lstm_bahdanau" in recipes
    job = run_cli("train", "recipe=multi30k_en_de_transformer", "model.encoder.layers=5", "--cfg", "job")
    assert "layers: 5" in job.stdout


def test_decode_help_shows_its_own_keys():
    helped = run_cli("decode", "--help").stdout
    assert helped.startswith("seq2seq-decode: decode a file or stdin with a trained run")
    assert "generation: beam, greedy, sampling, mbr" in helped and "\nrun: ???" in helped and "chunk_lines:" in helped
    assert "recipe:" not in helped and "lr_scheduler" not in helped and "optim" not in helped


def test_training_refuses_mismatched_corpus(tmp_path):
    folder = write_corpus(tmp_path)
    (folder / "train.tgt").write_text("only one line\n")
    proc = run_cli("train", *tiny_train_overrides(tmp_path, tmp_path / "run"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.splitlines()[-1]  # after the log lines of the run's start
    assert last.startswith("seq2seq-train: error: ") and "train.src has 1500 lines" in last
    assert "train.tgt has 1 lines" in last


def test_resume_continues_with_the_same_losses(tmp_path):
    write_corpus(tmp_path)
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_cli("train", *tiny_train_overrides(tmp_path, straight, steps=30), "trainer.valid_every=10")
    run_cli("train", *tiny_train_overrides(tmp_path, split, steps=10), "trainer.valid_every=10")
    run_cli("train", *tiny_train_overrides(tmp_path, split, steps=30), "trainer.valid_every=10", "trainer.resume=true")

    a, b = losses(straight), losses(split)
    assert set(a) == set(b) == set(range(1, 31))
    assert [a[s] for s in range(11, 31)] == [b[s] for s in range(11, 31)]  # bitwise on CPU


def test_decode_uses_the_runs_generation_settings_and_the_command_line_overrides_them(trained_run, tmp_path):
    import shutil

    import yaml

    _, run_dir = trained_run
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["generation"].update(max_len_a=0.0, max_len_b=1)  # as if the recipe capped outputs at one subword
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    src = "the cat sees a dog under the big red house\n"
    short = run_cli("decode", f"run={run}", "threads=1", stdin=src.encode()).stdout
    longer = run_cli("decode", f"run={run}", "threads=1", "generation.max_len_b=30", stdin=src.encode()).stdout
    switched = run_cli("decode", f"run={run}", "threads=1", "generation=greedy", stdin=src.encode())
    assert len(short.split()) <= 1 < len(longer.split())
    assert len(switched.stdout.split()) <= 1  # generation=greedy switches the search, keeps the run's lengths
    assert "strategy=greedy" in switched.stderr and "max_len_b=1" in switched.stderr


def test_decode_reads_a_json_lines_field_in_order(trained_run, tmp_path):
    _, run_dir = trained_run
    src, _ = toy_corpus_lines(12, seed=4)
    (tmp_path / "in.txt").write_text("\n".join(src) + "\n")
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": i, "doc": s}) + "\n" for i, s in enumerate(src)))
    plain = run_cli("decode", f"run={run_dir}", f"input={tmp_path / 'in.txt'}", "threads=1").stdout
    fields = run_cli("decode", f"run={run_dir}", f"input={tmp_path / 'in.jsonl'}", "input_field=doc",
                     "threads=1").stdout
    assert fields == plain and len(plain.splitlines()) == 12
    bad = run_cli("decode", f"run={run_dir}", f"input={tmp_path / 'in.jsonl'}", "input_field=text", check=False)
    assert bad.returncode == 2 and "in.jsonl, line 1: no field 'text'" in bad.stderr


def test_decode_an_ensemble_of_a_run_with_itself_equals_the_run(trained_run, tmp_path):
    _, run_dir = trained_run
    src, _ = toy_corpus_lines(10, seed=5)
    (tmp_path / "in.txt").write_text("\n".join(src) + "\n")
    args = (f"input={tmp_path / 'in.txt'}", "threads=1", "generation.nbest=2", "generation.beam_size=3")
    alone = run_cli("decode", f"run={run_dir}", *args).stdout
    runs = run_cli("decode", f"run=[{run_dir},{run_dir}]", *args)
    checkpoints = run_cli("decode", f"run={run_dir}", "checkpoint=[best,last]", "ensemble.weights=[1,0]", *args)
    assert runs.stdout == alone and checkpoints.stdout == alone and len(alone.splitlines()) == 20
    assert f"{run_dir}/checkpoints/best.pt + {run_dir}/checkpoints/best.pt" in runs.stderr
    bad = run_cli("decode", f"run=[{run_dir},{run_dir}]", "checkpoint=[best,last,best]", *args, check=False)
    assert bad.returncode == 2 and "run= names 2 runs and checkpoint= 3 checkpoints" in bad.stderr
    ct2 = run_cli("decode", f"run=[{run_dir},{run_dir}]", "backend=ctranslate2", *args, check=False)
    assert ct2.returncode == 2 and ("CTranslate2 has no ensembles" in ct2.stderr or "pip install" in ct2.stderr)


def test_decode_with_prefixes_from_a_file_and_a_json_field(trained_run, tmp_path):
    _, run_dir = trained_run
    src, tgt = toy_corpus_lines(6, seed=6)
    prefixes = [" ".join(t.split()[:2]) if i % 2 == 0 else "" for i, t in enumerate(tgt)]
    (tmp_path / "in.txt").write_text("\n".join(src) + "\n")
    (tmp_path / "prefix.txt").write_text("\n".join(prefixes) + "\n")
    rows = [{"doc": s, **({"start": p} if p else {})} for s, p in zip(src, prefixes)]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = run_cli("decode", f"run={run_dir}", f"input={tmp_path / 'in.txt'}", f"prefix={tmp_path / 'prefix.txt'}",
                  "threads=1").stdout.splitlines()
    assert len(out) == 6
    for line, prefix in zip(out, prefixes):
        assert line.startswith(prefix)
    fields = run_cli("decode", f"run={run_dir}", f"input={tmp_path / 'in.jsonl'}", "input_field=doc",
                     "prefix_field=start", "threads=1").stdout.splitlines()
    assert fields == out
    (tmp_path / "short.txt").write_text("a\nb\n")
    bad = run_cli("decode", f"run={run_dir}", f"input={tmp_path / 'in.txt'}", f"prefix={tmp_path / 'short.txt'}",
                  check=False)
    assert bad.returncode == 2 and "has 2 lines and the input" in bad.stderr and "6" in bad.stderr


def test_decode_with_constraints_from_a_file_and_a_json_field(trained_run, tmp_path):
    from helpers.corpora import TRANSLATE

    _, run_dir = trained_run
    src, _ = toy_corpus_lines(6, seed=7)
    words = sorted(TRANSLATE.values())
    phrases = [[words[i % len(words)]] if i % 3 else [] for i in range(6)]
    phrases[4] = [words[1], words[2]]
    (tmp_path / "in.txt").write_text("\n".join(src) + "\n")
    (tmp_path / "c.jsonl").write_text("".join(json.dumps(p) + "\n" for p in phrases))
    args = ("threads=1", "generation.beam_size=4", "generation.max_len_b=20")
    out = run_cli("decode", f"run={run_dir}", f"input={tmp_path / 'in.txt'}", f"constraints={tmp_path / 'c.jsonl'}",
                  *args).stdout.splitlines()
    assert len(out) == 6
    for line, cons in zip(out, phrases):
        assert all(c in line.split() for c in cons), (line, cons)
    plain = run_cli("decode", f"run={run_dir}", f"input={tmp_path / 'in.txt'}", *args).stdout.splitlines()
    assert [o for o, c in zip(out, phrases) if not c] == [o for o, c in zip(plain, phrases) if not c]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"doc": t, "terms": c}) + "\n" for t, c in zip(src, phrases)))
    fields = run_cli("decode", f"run={run_dir}", f"input={tmp_path / 'in.jsonl'}", "input_field=doc",
                     "constraints_field=terms", *args).stdout.splitlines()
    assert fields == out
    tight = run_cli("decode", f"run={run_dir}", f"input={tmp_path / 'in.txt'}", f"constraints={tmp_path / 'c.jsonl'}",
                    "threads=1", "generation.max_len_a=0", "generation.max_len_b=1")
    assert "line 5: constraint(s)" in tight.stderr and "not met within the length limit" in tight.stderr
    assert len(tight.stdout.splitlines()) == 6
    (tmp_path / "bad.jsonl").write_text('["a"]\n{"x": 1}\n' + "[]\n" * 4)
    bad = run_cli("decode", f"run={run_dir}", f"input={tmp_path / 'in.txt'}", f"constraints={tmp_path / 'bad.jsonl'}",
                  check=False)
    assert bad.returncode == 2 and "bad.jsonl, line 2: constraints must be a JSON list of strings" in bad.stderr


# ---------------------------------------------------------------- error reports (seq2seq.cli)
def _error_cases(tmp_path):
    """(command, arguments, what the message must say) for usage and input errors, on tiny files."""
    (tmp_path / "two.txt").write_text("the cat\nthe dog\n")
    (tmp_path / "one.txt").write_text("the cat\n")
    (tmp_path / "bad.txt").write_bytes(b"the cat\nthe \xff dog\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "broken.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    text = f"input={tmp_path / 'two.txt'}"
    return {
        "decode_missing_run": ("decode", [f"run={tmp_path / 'nope'}", text], f"run folder not found: {tmp_path / 'nope'}"),
        "decode_corrupt_checkpoint": ("decode", [f"run={tmp_path / 'run'}", f"checkpoint={tmp_path / 'broken.pt'}",
                                                 text], "truncated, corrupt or not a seq2seq checkpoint"),
        "decode_invalid_utf8": ("decode", [f"run={tmp_path / 'run'}", f"input={tmp_path / 'bad.txt'}"],
                                "bad.txt, line 2: invalid UTF-8"),
        "score_invalid_utf8": ("score", [f"hyp={tmp_path / 'bad.txt'}", f"ref={tmp_path / 'two.txt'}"],
                               "bad.txt, line 2: invalid UTF-8"),
        "score_line_counts": ("score", [f"hyp={tmp_path / 'two.txt'}", f"ref={tmp_path / 'one.txt'}"],
                              "two.txt has 2 lines but"),
        "score_unknown_key": ("score", ["foo=1"], "Could not override 'foo'"),
        "train_unknown_key": ("train", ["trainer.max_step=5"], "Key 'max_step' is not in struct"),
        "train_unknown_recipe": ("train", ["recipe=nope"], "Could not find 'recipe/nope'"),
    }


ERROR_CASES = [  # the keys of _error_cases
    "decode_missing_run", "decode_corrupt_checkpoint", "decode_invalid_utf8", "score_invalid_utf8",
    "score_line_counts", "score_unknown_key", "train_unknown_key", "train_unknown_recipe"]


@pytest.mark.parametrize("case", ERROR_CASES)
def test_usage_and_input_errors_are_one_line_with_exit_code_2(case, tmp_path, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    command, args, message = _error_cases(tmp_path)[case]
    proc = run_cli(command, *args, check=False)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith(f"seq2seq-{command}: error: ") and message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_console_script_reports_errors_under_its_name(tmp_path, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    script = Path(sys.executable).parent / "seq2seq-score"
    if not script.exists():
        script = shutil.which("seq2seq-score")
        if script is None:
            pytest.skip("seq2seq-score is not installed")
    proc = subprocess.run([str(script), "hyp=x", "ref=y", "nope=1"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 2
    assert proc.stderr == "seq2seq-score: error: Could not override 'nope'. To append to your config use " \
                          "+nope=1. Key 'nope' is not in struct\n"


def test_hydra_full_error_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    command, args, message = _error_cases(tmp_path)["score_line_counts"]
    proc = run_cli(command, *args, check=False)
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr and message in proc.stderr
    unknown = run_cli("score", "foo=1", check=False)
    assert unknown.returncode != 0 and "Traceback (most recent call last)" in unknown.stderr


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    bug = ("import sys, seq2seq.score as s, seq2seq.cli.score as command\n"
           "def score_files(cfg):\n    raise TypeError('a bug')\n"
           "s.score_files = score_files\nsys.argv = ['seq2seq-score', 'hyp=x', 'ref=y']\ncommand.main()\n")
    proc = subprocess.run([sys.executable, "-c", bug], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr and "TypeError: a bug" in proc.stderr
    assert "seq2seq-score: error:" not in proc.stderr


def test_exit_code_rule():
    from seq2seq.cli import exit_code
    from seq2seq.data.corpus import read_lines
    from seq2seq.training.checkpoint import CheckpointError
    from seq2seq.errors import PeerFailure

    def raised(function):
        try:
            function()
        except Exception as err:
            return err
        raise AssertionError("nothing raised")

    assert exit_code(raised(lambda: read_lines("/nonexistent/file.txt"))) == 2  # our DataError, a ValueError
    assert exit_code(CheckpointError("corrupt")) == 2 and exit_code(FileNotFoundError("x")) == 2
    assert exit_code(FloatingPointError("diverged")) == 1 and exit_code(PeerFailure("lost")) == 1
    assert exit_code(raised(lambda: int("x"))) is None  # a ValueError from outside seq2seq: a bug
    assert exit_code(TypeError("bug")) is None and exit_code(KeyError("bug")) is None


@pytest.mark.parametrize("group", ["trainer", "generation", "lr_scheduler", "tokenizer", "data", "optim", "model", "dist"])
def test_keys_added_with_plus_are_refused_in_every_group(group, tmp_path, monkeypatch):
    """Hydra's +group.key=... adds a key that struct mode cannot catch; every group that is not built
    through _target_ checks its keys itself, so nothing is silently ignored."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    write_corpus(tmp_path, n_train=200, n_valid=10)
    proc = run_cli("train", *tiny_train_overrides(tmp_path, tmp_path / "run", steps=1), f"+{group}.colour=blue",
                   check=False)
    assert proc.returncode == 2, proc.stderr
    assert f"seq2seq-train: error: unknown {group} setting(s): {group}.colour (known: " in proc.stderr


@pytest.mark.parametrize("command", ["train", "decode", "score", "average", "export", "serve"])
def test_unknown_top_level_keys_are_refused(command, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    proc = run_cli(command, "+colour=blue", check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"seq2seq-{command}: error: unknown setting(s): colour (known at the top level: ")


def test_decoding_in_chunks_equals_one_chunk_line_for_line(trained_run, tmp_path):
    """Streaming decode: chunks of 4 documents (empty lines among them) give the same file as one chunk;
    n-best indices count from the start of the input, not of the chunk."""
    _, run_dir = trained_run
    src, _ = toy_corpus_lines(21, seed=7)
    src[3] = src[10] = ""
    (tmp_path / "in.txt").write_text("\n".join(src) + "\n")
    outputs = {}
    for chunk in (4, 10_000):
        for nbest in (1, 2):
            out = tmp_path / f"out.{chunk}.{nbest}.txt"
            run_cli("decode", f"run={run_dir}", f"input={tmp_path / 'in.txt'}", f"output={out}", "threads=1",
                    f"chunk_lines={chunk}", f"generation.nbest={nbest}", "generation.beam_size=2")
            outputs[chunk, nbest] = out.read_text().splitlines()
            assert not out.with_name(out.name + ".partial").exists()
    assert outputs[4, 1] == outputs[10_000, 1] and len(outputs[4, 1]) == 21
    assert outputs[4, 2] == outputs[10_000, 2]
    # two hypotheses per document, one (empty) for an empty line
    assert [line.split("\t")[0] for line in outputs[4, 2]] == [str(i) for i in range(21) for _ in
                                                               range(1 if i in (3, 10) else 2)]


def test_an_interrupted_decode_keeps_the_finished_chunks_and_says_how_many(trained_run, tmp_path):
    _, run_dir = trained_run
    src, _ = toy_corpus_lines(12, seed=8)
    raw = "\n".join(src).encode().split(b"\n")
    raw[9] = b"the \xff cat"  # line 10: invalid UTF-8, met while reading the third chunk of 4
    (tmp_path / "in.txt").write_bytes(b"\n".join(raw) + b"\n")
    out = tmp_path / "out.txt"
    proc = run_cli("decode", f"run={run_dir}", f"input={tmp_path / 'in.txt'}", f"output={out}", "threads=1",
                   "chunk_lines=4", check=False)
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == (f"seq2seq-decode: error: {tmp_path / 'in.txt'}, line 10: invalid UTF-8 "
                                            "(invalid start byte at byte 4)")
    assert f"decoding stopped after 8 input lines: their 8 output lines are in {out}.partial" in proc.stderr
    assert not out.exists()
    complete = tmp_path / "complete.txt"
    (tmp_path / "first8.txt").write_text("\n".join(src[:8]) + "\n")
    run_cli("decode", f"run={run_dir}", f"input={tmp_path / 'first8.txt'}", f"output={complete}", "threads=1")
    assert (tmp_path / "out.txt.partial").read_text() == complete.read_text()
