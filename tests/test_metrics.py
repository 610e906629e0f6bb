"""Scores: ROUGE (with its bootstrap interval) against hand computations, seq2seq-score on text and JSON Lines
files, and the validation-metric helper."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from helpers.commands import run_cli
from helpers.corpora import toy_corpus_lines
from seq2seq.metrics import (ROUGE_TYPES, VALID_METRICS, higher_is_better, rouge, rouge_bootstrap, score,
                             validation_score)

REF = "the cat sat on the mat"
HYP = "the cat sat"


def mixed_pairs(n: int = 40) -> tuple[list[str], list[str]]:
    """References and hypotheses that share some words: every ROUGE type lies strictly between 0 and 100."""
    _, refs = toy_corpus_lines(n, seed=5)
    _, others = toy_corpus_lines(n, seed=6)
    hyps = [" ".join(r.split()[: len(r.split()) // 2 + 1] + o.split()[:2]) for r, o in zip(refs, others)]
    return hyps, refs


# ---------------------------------------------------------------- ROUGE
def test_identical_text_scores_100_with_a_degenerate_interval():
    _, refs = toy_corpus_lines(20, seed=4)
    scores = rouge_bootstrap(refs, refs)
    assert set(scores) == set(ROUGE_TYPES)
    for s in scores.values():
        assert s["low"] <= s["mid"] <= s["high"]
        assert s == pytest.approx({"low": 100.0, "mid": 100.0, "high": 100.0})


def test_rouge_by_hand():
    # unigrams: all 3 hypothesis words are in the 6-word reference: P = 1, R = 1/2, F1 = 2/3
    # bigrams: "the cat", "cat sat" among the reference's 5: P = 1, R = 2/5, F1 = 4/7; LCS = 3 words, as ROUGE-1
    scores = rouge([HYP], [REF])
    assert scores["rouge1"] == pytest.approx(200 / 3)
    assert scores["rouge2"] == pytest.approx(400 / 7)
    assert scores["rougeL"] == pytest.approx(200 / 3) and scores["rougeLsum"] == pytest.approx(200 / 3)
    # Porter stemming: cats -> cat, running/runs -> run; punctuation and case are ignored
    assert rouge(["Cats running!"], ["the cat runs"])["rouge1"] == pytest.approx(80.0)  # P = 1, R = 2/3
    assert rouge(["a b"], ["c d"]) == {t: 0.0 for t in ROUGE_TYPES}


def test_rouge_lsum_takes_lines_as_sentences():
    ref = "the cat sat\nthe dog ran"
    hyp = "the dog ran\nthe cat sat"  # the same two sentences, swapped
    scores = rouge([hyp], [ref])
    # rougeL: one LCS over the 6 tokens of each side is 3 long (either sentence): F1 = 1/2;
    # rougeLsum: each reference sentence is covered by a hypothesis sentence: F1 = 1
    assert scores["rougeL"] == pytest.approx(50.0)
    assert scores["rougeLsum"] == pytest.approx(100.0)
    one_line = rouge([hyp.replace("\n", " ")], [ref.replace("\n", " ")])
    assert one_line["rougeLsum"] == one_line["rougeL"] == pytest.approx(50.0)


def test_bootstrap_mid_is_the_mean_and_the_interval_brackets_it():
    hyps, refs = mixed_pairs()
    mean, boot = rouge(hyps, refs), rouge_bootstrap(hyps, refs)
    for t in ROUGE_TYPES:
        assert boot[t]["mid"] == pytest.approx(mean[t], abs=1e-9)
        assert 0 < boot[t]["low"] < boot[t]["mid"] < boot[t]["high"] < 100
    wide = rouge_bootstrap(hyps, refs, confidence=0.99)
    assert wide["rouge1"]["low"] < boot["rouge1"]["low"] and wide["rouge1"]["high"] > boot["rouge1"]["high"]


def test_bootstrap_is_deterministic_and_leaves_numpys_global_state_alone():
    hyps, refs = mixed_pairs()
    np.random.seed(123)
    state = np.random.get_state()[1].copy()
    first = rouge_bootstrap(hyps, refs)
    assert np.array_equal(np.random.get_state()[1], state)
    np.random.seed(7)  # a different global seed changes nothing
    assert rouge_bootstrap(hyps, refs) == first
    # the same resamples for every type: an interval does not depend on the other types scored
    assert rouge_bootstrap(hyps, refs, types=("rouge2",))["rouge2"] == first["rouge2"]
    other = rouge_bootstrap(hyps, refs, seed=1)
    assert other["rouge1"]["mid"] == first["rouge1"]["mid"] and other["rouge1"]["low"] != first["rouge1"]["low"]


def test_score_checks_its_input():
    with pytest.raises(ValueError, match="differ in length: 1 vs 2"):
        score(["a"], ["a", "b"], ["rouge"])
    with pytest.raises(ValueError, match="nothing to score"):
        score([], [], ["bleu"])
    with pytest.raises(ValueError, match="unknown metric.*rogue.*choose from bleu, chrf, ter, rouge"):
        score(["a"], ["a"], ["rogue"])


# ---------------------------------------------------------------- seq2seq-score
def write_jsonl(path, summaries: list[str], field: str = "summary") -> None:
    path.write_text("".join(json.dumps({"id": str(i), "dialogue": "A: hi\nB: hello", field: s}) + "\n"
                            for i, s in enumerate(summaries)))


def test_score_prints_signatures_and_writes_json(tmp_path):
    _, refs = toy_corpus_lines(30, seed=4)
    hyps = list(refs)
    hyps[0] = "SOMETHING ELSE ENTIRELY"
    (tmp_path / "ref.txt").write_text("\n".join(refs) + "\n")
    (tmp_path / "hyp.txt").write_text("\n".join(hyps) + "\n")
    proc = run_cli("score", f"hyp={tmp_path / 'hyp.txt'}", f"ref={tmp_path / 'ref.txt'}",
                   "metrics=[bleu,chrf,ter,rouge]", f"json={tmp_path / 's.json'}")
    assert "BLEU = " in proc.stdout and "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp" in proc.stdout
    assert "chrF2 = " in proc.stdout and "TER = " in proc.stdout and "ROUGE-1 = " in proc.stdout
    scores = json.loads((tmp_path / "s.json").read_text())
    assert 80 < scores["bleu"]["score"] < 100
    same = run_cli("score", f"hyp={tmp_path / 'ref.txt'}", f"ref={tmp_path / 'ref.txt'}", "metrics=[bleu]")
    assert "BLEU = 100.00" in same.stdout
    (tmp_path / "short.txt").write_text("one line\n")
    bad = run_cli("score", f"hyp={tmp_path / 'short.txt'}", f"ref={tmp_path / 'ref.txt'}", check=False)
    assert bad.returncode != 0 and "has 1 lines but" in bad.stderr


def test_score_reads_references_from_a_jsonl_field(tmp_path):
    hyps, refs = mixed_pairs(30)
    (tmp_path / "hyp.txt").write_text("\n".join(hyps) + "\n")
    (tmp_path / "ref.txt").write_text("\n".join(refs) + "\n")
    write_jsonl(tmp_path / "ref.jsonl", refs)
    plain = run_cli("score", f"hyp={tmp_path / 'hyp.txt'}", f"ref={tmp_path / 'ref.txt'}", "metrics=[rouge]",
                    f"json={tmp_path / 'plain.json'}")
    field = run_cli("score", f"hyp={tmp_path / 'hyp.txt'}", f"ref={tmp_path / 'ref.jsonl'}", "ref_field=summary",
                    "metrics=[rouge]", f"json={tmp_path / 'field.json'}")
    assert field.stdout == plain.stdout
    lines = [line for line in field.stdout.splitlines() if line.startswith("ROUGE-")]
    assert [line.split(" =")[0] for line in lines] == ["ROUGE-1", "ROUGE-2", "ROUGE-L", "ROUGE-Lsum"]
    assert all(re.fullmatch(r"ROUGE-\w+ = \d+\.\d\d \(95% CI \d+\.\d\d-\d+\.\d\d\)", line) for line in lines)
    assert "bootstrap:1000|ci:95%|seed:0|rouge-score:" in field.stdout
    saved = json.loads((tmp_path / "field.json").read_text())["rouge"]
    assert saved == json.loads((tmp_path / "plain.json").read_text())["rouge"]
    expected = rouge_bootstrap(hyps, refs)
    for t in ROUGE_TYPES:
        assert saved[t] == pytest.approx(expected[t])
    assert saved["score"] == pytest.approx(expected["rouge1"]["mid"])


def test_score_keeps_newlines_of_jsonl_fields_for_rouge_lsum(tmp_path):
    write_jsonl(tmp_path / "ref.jsonl", ["the cat sat\nthe dog ran", "a red house"])
    write_jsonl(tmp_path / "hyp.jsonl", ["the dog ran\nthe cat sat", "a red house"], field="text")
    run_cli("score", f"hyp={tmp_path / 'hyp.jsonl'}", "hyp_field=text", f"ref={tmp_path / 'ref.jsonl'}",
            "ref_field=summary", "metrics=[rouge]", f"json={tmp_path / 's.json'}")
    saved = json.loads((tmp_path / "s.json").read_text())["rouge"]
    assert saved["rougeL"]["mid"] == pytest.approx(75.0)  # (50 + 100) / 2
    assert saved["rougeLsum"]["mid"] == pytest.approx(100.0)


def test_score_names_the_line_of_a_jsonl_reference_without_the_field(tmp_path):
    (tmp_path / "hyp.txt").write_text("a\nb\n")
    (tmp_path / "ref.jsonl").write_text('{"summary": "a"}\n{"headline": "b"}\n')
    bad = run_cli("score", f"hyp={tmp_path / 'hyp.txt'}", f"ref={tmp_path / 'ref.jsonl'}", "ref_field=summary",
                  "metrics=[rouge]", check=False)
    assert bad.returncode != 0
    assert f"{tmp_path / 'ref.jsonl'}, line 2: no field 'summary' (found: headline)" in bad.stderr


# ---------------------------------------------------------------- validation metrics
def test_validation_metric_names():
    assert VALID_METRICS == ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "rougeLsum", "loss")
    assert [higher_is_better(m) for m in VALID_METRICS] == [True] * 6 + [False]
    for call in (lambda: higher_is_better("BLEU"), lambda: validation_score("rouge", [HYP], [REF])):
        with pytest.raises(ValueError, match="unknown validation metric .*choose from bleu, chrf, rouge1, rouge2, "
                                             "rougeL, rougeLsum, loss"):
            call()
    with pytest.raises(ValueError, match="'loss' is computed by the trainer"):
        validation_score("loss", [HYP], [REF])
    with pytest.raises(ValueError, match="differ in length"):
        validation_score("bleu", [HYP], [REF, REF])


def test_validation_scores():
    _, refs = toy_corpus_lines(20, seed=4)
    hyps, mixed_refs = mixed_pairs()
    mean = rouge(hyps, mixed_refs)
    for metric in VALID_METRICS[:-1]:
        assert validation_score(metric, refs, refs) == pytest.approx(100.0)
        value = validation_score(metric, hyps, mixed_refs)
        assert 0 < value < 100
        if metric.startswith("rouge"):
            assert value == pytest.approx(mean[metric])
    assert validation_score("rouge1", [HYP], [REF]) == pytest.approx(200 / 3)
    reports = score(hyps, mixed_refs, ["bleu", "chrf"])
    for metric in ("bleu", "chrf"):
        assert validation_score(metric, hyps, mixed_refs) == pytest.approx(reports[metric]["score"])
