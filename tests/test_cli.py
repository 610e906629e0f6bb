"""End to end through the three commands on a small generated corpus."""
from __future__ import annotations

import json

import pytest

from conftest import run_cli, tiny_train_overrides, toy_corpus_lines, write_corpus


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_corpus(root)
    run_dir = root / "run"
    run_cli("train", *tiny_train_overrides(root, run_dir, steps=60))
    return root, run_dir


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
    assert proc.returncode != 0
    assert "bad.txt, line 2: invalid UTF-8" in proc.stderr


def test_decode_refuses_a_corrupt_checkpoint(trained_run, tmp_path):
    _, run_dir = trained_run
    broken = tmp_path / "broken.pt"
    data = (run_dir / "checkpoints" / "best.pt").read_bytes()
    broken.write_bytes(data[:1000])
    proc = run_cli("decode", f"run={run_dir}", f"checkpoint={broken}", "input=-", stdin=b"the cat\n", check=False)
    assert proc.returncode != 0
    assert "cannot read checkpoint" in proc.stderr and "truncated, corrupt" in proc.stderr


def test_unknown_key_help_and_cfg_job():
    bad = run_cli("train", "trainer.max_step=5", check=False)
    assert bad.returncode != 0 and "max_step" in bad.stderr
    helped = run_cli("train", "--help")
    recipes = next(line for line in helped.stdout.splitlines() if line.startswith("recipe: "))
    assert "multi30k_en_de_transformer" in recipes and "multi30k_en_de_lstm_bahdanau" in recipes
    job = run_cli("train", "recipe=multi30k_en_de_transformer", "model.encoder.layers=5", "--cfg", "job")
    assert "layers: 5" in job.stdout


def test_training_refuses_mismatched_corpus(tmp_path):
    folder = write_corpus(tmp_path)
    (folder / "train.tgt").write_text("only one line\n")
    proc = run_cli("train", *tiny_train_overrides(tmp_path, tmp_path / "run"), check=False)
    assert proc.returncode != 0
    assert "train.src has 1500 lines" in proc.stderr and "train.tgt has 1 lines" in proc.stderr


def test_resume_continues_with_the_same_losses(tmp_path):
    write_corpus(tmp_path)
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_cli("train", *tiny_train_overrides(tmp_path, straight, steps=30), "trainer.valid_every=10")
    run_cli("train", *tiny_train_overrides(tmp_path, split, steps=10), "trainer.valid_every=10")
    run_cli("train", *tiny_train_overrides(tmp_path, split, steps=30), "trainer.valid_every=10", "trainer.resume=true")

    def losses(run):
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r}

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
    assert bad.returncode != 0 and "in.jsonl, line 1: no field 'text'" in bad.stderr
