"""Minimum Bayes risk decoding (generation=mbr): of a sentence's candidates (sampled, or beam search's n-best),
keep the one with the highest expected utility against all the candidates taken as pseudo-references
(Eikema and Aziz, 2020; Freitag et al., 2022):

    expected(i) = 1/N sum_j utility(hypothesis = c_i, reference = c_j)

The utilities are sacreBLEU's sentence scores, computed for all N x N pairs at once: each distinct candidate's
n-gram counts once, then per n-gram order the matches of every pair as the sum of the element-wise minimum of
two count vectors (numpy), then sacreBLEU's formula on the match statistics (tests hold the matrix equal to
sacrebleu.sentence_chrf / sentence_bleu pair by pair):

    chrf   chrF2 (character 1-6-grams, whitespace removed; sacreBLEU's defaults)
    bleu   sentence BLEU (13a tokens, 1-4-grams, exp smoothing, effective order; sacreBLEU's defaults)
    rougeL rouge-score's ROUGE-L F1 x 100 (its tokenizer with Porter stemming, as seq2seq-score): the longest
           common subsequence of every pair at once, one numpy step per hypothesis word (tests hold it equal
           to rouge_scorer pair by pair)

The search produces the candidates (strategy=mbr asks seq2seq.generation.search for mbr_samples of them);
select() needs their detokenized texts, so the backend that has the tokenizer calls it. A chosen hypothesis
keeps its model log-probability (Hypothesis.logprob); its score is its expected utility.
"""
from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np
from rouge_score import rouge_scorer
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from seq2seq.generation.options import MBR_UTILITIES as UTILITIES, Hypothesis

CHAR_ORDER, CHRF_BETA = 6, 2
BLEU_ORDER = 4


def select(candidates: list[Hypothesis], texts: list[str], utility: str, nbest: int = 1) -> list[Hypothesis]:
    """The nbest candidates of one sentence by expected utility (best first), each with score = its expected
    utility (0-100); duplicates (the same text) count as often as they were drawn, and are returned once."""
    if len(candidates) != len(texts):
        raise ValueError(f"{len(candidates)} candidates and {len(texts)} texts")
    if not candidates:
        return []
    distinct = list(dict.fromkeys(texts))
    counts = Counter(texts)
    weights = np.array([counts[t] for t in distinct], dtype=np.float64) / len(texts)
    expected = utility_matrix(distinct, utility) @ weights
    first = {}
    for hyp, text in zip(candidates, texts):
        first.setdefault(text, hyp)  # candidates come best first from the search: the most likely copy
    order = sorted(range(len(distinct)), key=lambda i: (-expected[i], -first[distinct[i]].logprob))
    return [dataclasses.replace(first[distinct[i]], score=float(expected[i])) for i in order[:nbest]]


def utility_matrix(texts: list[str], utility: str) -> np.ndarray:
    """[N, N]: utility(hypothesis = texts[i], reference = texts[j]) on sacreBLEU's 0-100 scale."""
    if utility == "chrf":
        return _chrf_matrix(texts)
    if utility == "bleu":
        return _bleu_matrix(texts)
    if utility == "rougeL":
        return _rouge_l_matrix(texts)
    raise ValueError(f"generation.mbr_utility={utility}: choose one of {', '.join(UTILITIES)}")


def _count_matrix(grams: list[list[str]]) -> np.ndarray:
    """[N, U] counts of each of the U distinct n-grams in each text's list of n-grams."""
    vocab: dict[str, int] = {}
    rows = [[vocab.setdefault(g, len(vocab)) for g in row] for row in grams]
    counts = np.zeros((len(rows), max(len(vocab), 1)), dtype=np.int32)
    for i, ids in enumerate(rows):
        if ids:
            np.add.at(counts[i], ids, 1)
    return counts


def _pair_matches(counts: np.ndarray) -> np.ndarray:
    """[N, N] clipped matches: sum over n-grams of min(count in i, count in j)."""
    return np.minimum(counts[:, None, :], counts[None, :, :]).sum(axis=2)


def _chrf_matrix(texts: list[str]) -> np.ndarray:
    n = len(texts)
    stripped = ["".join(t.split()) for t in texts]
    avg_prec, avg_rec, orders = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n))
    for order in range(1, CHAR_ORDER + 1):
        grams = [[s[i:i + order] for i in range(len(s) - order + 1)] for s in stripped]
        totals = np.array([len(g) for g in grams], dtype=np.float64)
        matches = _pair_matches(_count_matrix(grams)).astype(np.float64)
        hyp, ref = totals[:, None], totals[None, :]
        both = (hyp > 0) & (ref > 0)  # only orders that both sides have count (effective order)
        with np.errstate(divide="ignore", invalid="ignore"):
            avg_prec += np.where(both, matches / hyp, 0.0)
            avg_rec += np.where(both, matches / ref, 0.0)
        orders += both
    with np.errstate(divide="ignore", invalid="ignore"):
        prec, rec = np.where(orders > 0, avg_prec / orders, 0.0), np.where(orders > 0, avg_rec / orders, 0.0)
        factor = CHRF_BETA ** 2
        f = np.where(prec + rec > 0, (1 + factor) * prec * rec / (factor * prec + rec), 0.0)
    return 100 * f


def _bleu_matrix(texts: list[str]) -> np.ndarray:
    tokenize = Tokenizer13a()
    words = [tokenize(t.rstrip()).split() for t in texts]
    n = len(texts)
    lengths = np.array([len(w) for w in words], dtype=np.float64)
    log_sum, eff_order = np.zeros((n, n)), np.zeros((n, n))
    any_correct = np.zeros((n, n), dtype=bool)
    smooth = np.ones((n, n))
    stopped = np.zeros((n, n), dtype=bool)
    for order in range(1, BLEU_ORDER + 1):
        grams = [[" ".join(w[i:i + order]) for i in range(len(w) - order + 1)] for w in words]
        total = np.broadcast_to(np.array([len(g) for g in grams], dtype=np.float64)[:, None], (n, n))
        correct = _pair_matches(_count_matrix(grams)).astype(np.float64)
        any_correct |= correct > 0
        stopped |= total == 0                       # sacreBLEU stops at the first order the hypothesis lacks
        live = ~stopped
        smooth = np.where(live & (correct == 0), smooth * 2, smooth)
        with np.errstate(divide="ignore", invalid="ignore"):
            precision = np.where(correct > 0, 100.0 * correct / total, 100.0 / (smooth * total))
            log_p = np.where(precision > 0, np.log(np.where(precision > 0, precision, 1.0)), -9999999999.0)
        log_sum += np.where(live, log_p, 0.0)
        eff_order += live
    hyp_len, ref_len = lengths[:, None], lengths[None, :]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        bp = np.where(hyp_len < ref_len, np.where(hyp_len > 0, np.exp(1 - ref_len / hyp_len), 0.0), 1.0)
        score = bp * np.exp(log_sum / np.maximum(eff_order, 1))
    return np.where(any_correct & (eff_order > 0), score, 0.0)


def _rouge_l_matrix(texts: list[str]) -> np.ndarray:
    # rouge-score's own tokenizer and stemmer: the words seq2seq-score uses
    tokenize = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)._tokenizer.tokenize
    words = [tokenize(t) for t in texts]
    vocab: dict[str, int] = {}
    ids = [[vocab.setdefault(w, len(vocab) + 1) for w in row] for row in words]
    n, longest = len(texts), max((len(row) for row in ids), default=0)
    padded = np.zeros((n, max(longest, 1)), dtype=np.int64)  # 0 = padding, never equal to a word
    for i, row in enumerate(ids):
        padded[i, :len(row)] = row
    lengths = np.array([len(row) for row in ids], dtype=np.int64)
    # LCS of hypothesis i against reference j, a row of the table per hypothesis word, all pairs together:
    # row' = running max of max(row, previous row shifted + match), equal to the textbook recurrence
    row = np.zeros((n, n, padded.shape[1] + 1), dtype=np.int64)
    lcs = np.zeros((n, n), dtype=np.int64)
    for k in range(longest):
        word = padded[:, k]
        match = (word[:, None, None] == padded[None, :, :]) & (word[:, None, None] > 0)
        step = np.maximum(row[:, :, 1:], row[:, :, :-1] + match)
        row = np.concatenate([row[:, :, :1], np.maximum.accumulate(step, axis=2)], axis=2)
        ended = lengths == k + 1  # hypotheses of k + 1 words: their LCS is the row's value at the reference's end
        if ended.any():
            lcs[ended] = np.take_along_axis(row[ended], np.broadcast_to(lengths[None, :, None], (int(ended.sum()), n, 1)),
                                            axis=2)[:, :, 0]
    hyp_len, ref_len = lengths[:, None].astype(np.float64), lengths[None, :].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(hyp_len > 0, lcs / hyp_len, 0.0)
        recall = np.where(ref_len > 0, lcs / ref_len, 0.0)
        f = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    return 100 * f
