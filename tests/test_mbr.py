"""Minimum Bayes risk decoding: the utility matrix against sacreBLEU pair by pair, the selection, epsilon
sampling, and generation=mbr end to end."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import sacrebleu
import torch

from helpers.commands import run_cli
from helpers.corpora import toy_corpus_lines
from seq2seq.generation.mbr import select, utility_matrix
from seq2seq.generation.options import GenerationOptions, Hypothesis
from seq2seq.generation.sampling import _draw

WORDS = "a dog runs on the beach . Ein Hund läuft am Strand , zwei Männer ( spielen ) Fußball ! don't".split()


def random_texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 14))) for _ in range(n)] + ["", "a", "a a a"]


@pytest.mark.parametrize("utility,reference", [("chrf", sacrebleu.sentence_chrf), ("bleu", sacrebleu.sentence_bleu)])
def test_utility_matrix_equals_sacrebleu_sentence_scores(utility, reference):
    texts = random_texts(30, seed=1)
    matrix = utility_matrix(texts, utility)
    expected = np.array([[reference(h, [r]).score for r in texts] for h in texts])
    np.testing.assert_allclose(matrix, expected, atol=1e-9)
    assert matrix.std() > 1  # the texts differ enough for the comparison to mean something


def test_rouge_l_utility_equals_rouge_score_pair_by_pair():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    texts = random_texts(30, seed=2) + ["Dogs running on beaches.", "the dog runs", "!!"]
    matrix = utility_matrix(texts, "rougeL")
    expected = np.array([[100 * scorer.score(r, h)["rougeL"].fmeasure for r in texts] for h in texts])
    np.testing.assert_allclose(matrix, expected, atol=1e-9)
    assert matrix.std() > 1


def test_one_candidate_is_chosen_as_it_is():
    hyp = Hypothesis([5, 6, 7], -2.5, -0.8)
    (chosen,) = select([hyp], ["a dog"], "chrf")
    assert chosen.tokens == hyp.tokens and chosen.logprob == hyp.logprob and chosen.score == pytest.approx(100.0)


def test_the_candidate_closest_to_the_others_wins_and_keeps_its_logprob():
    texts = ["a dog runs on the beach", "a dog runs on a beach", "two men play football", "a dog runs on the beach"]
    hyps = [Hypothesis([i + 4], -float(i + 1), 0.0) for i in range(len(texts))]
    ranked = select(hyps, texts, "chrf", nbest=3)
    assert [h.tokens for h in ranked] == [[4], [5], [6]]  # the duplicate counts twice and is returned once
    assert ranked[0].logprob == -1.0
    u = utility_matrix(texts, "chrf")
    assert ranked[0].score == pytest.approx(u[0].mean()) and ranked[1].score == pytest.approx(u[1].mean())


def test_epsilon_sampling_never_draws_a_token_below_epsilon():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.04, 0.01]]).repeat(2000, 1)
    drawn = _draw(probs.log(), GenerationOptions(strategy="sampling", epsilon=0.05), torch.Generator().manual_seed(0))
    counts = torch.bincount(drawn, minlength=5)
    assert counts[3] == 0 and counts[4] == 0 and counts[2] > 0
    peaked = torch.tensor([[0.02, 0.01, 0.97]]).log()  # only the one token above epsilon is left
    assert _draw(peaked, GenerationOptions(strategy="sampling", epsilon=0.5), None).item() == 2
    flat = torch.full((1, 4), 0.25).log()  # every token below epsilon: the best one stays drawable
    assert _draw(flat, GenerationOptions(strategy="sampling", epsilon=0.5), None).item() in range(4)


def test_generation_mbr_from_the_command_line(trained_run, tmp_path):
    _, run_dir = trained_run
    src, _ = toy_corpus_lines(8, seed=12)
    src[2] = ""
    (tmp_path / "in.txt").write_text("\n".join(src) + "\n")
    args = (f"run={run_dir}", f"input={tmp_path / 'in.txt'}", "threads=1")
    # one beam candidate: MBR is beam search of beam 1, i.e. greedy
    one = run_cli("decode", *args, "generation=mbr", "generation.mbr_candidates=beam", "generation.mbr_samples=1").stdout
    greedy = run_cli("decode", *args, "generation=greedy").stdout
    assert one == greedy and len(one.splitlines()) == 8
    nbest = run_cli("decode", *args, "generation=mbr", "generation.mbr_samples=8", "generation.nbest=2").stdout
    rows = [line.split("\t") for line in nbest.splitlines()]
    assert {int(r[0]) for r in rows} == set(range(8))
    for i in range(8):
        scores = [float(r[1]) for r in rows if int(r[0]) == i]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 100 for s in scores)
    bad = run_cli("decode", *args, "generation=mbr", "generation.mbr_utility=ter", check=False)
    assert bad.returncode == 2 and "mbr_utility=ter: choose one of chrf, bleu, rougeL" in bad.stderr
