"""Corpus scores: BLEU, chrF and TER through sacrebleu (with their signatures), ROUGE through rouge-score.

ROUGE is rouge-score's F1 (x100) with Porter stemming. rougeLsum is the summary-level LCS over
sentences, and a sentence is a line: rouge-score splits each summary at "\\n" (its default,
split_summaries=False), so a one-line summary has rougeLsum == rougeL.
"""
from __future__ import annotations

from importlib.metadata import version

import numpy as np
from rouge_score import rouge_scorer, scoring
from sacrebleu.metrics import BLEU, CHRF, TER

KNOWN = ("bleu", "chrf", "ter", "rouge")
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")
ROUGE_LABELS = {"rouge1": "ROUGE-1", "rouge2": "ROUGE-2", "rougeL": "ROUGE-L", "rougeLsum": "ROUGE-Lsum"}
VALID_METRICS = ("bleu", "chrf", *ROUGE_TYPES, "loss")


def _check_pairs(hyps: list[str], refs: list[str]) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"hypotheses and references differ in length: {len(hyps)} vs {len(refs)}")
    if not hyps:
        raise ValueError("nothing to score: no hypotheses and no references")


def bleu(hyps: list[str], refs: list[str], tokenize: str = "13a", lowercase: bool = False) -> float:
    return BLEU(tokenize=tokenize, lowercase=lowercase).corpus_score(hyps, [refs]).score


# ---------------------------------------------------------------- ROUGE
def rouge_example_scores(hyps: list[str], refs: list[str], types=ROUGE_TYPES) -> list[dict]:
    """rouge-score's {type: Score(precision, recall, fmeasure)} of each (hypothesis, reference) pair: the one
    scoring path behind both the plain mean and the bootstrap."""
    _check_pairs(hyps, refs)
    scorer = rouge_scorer.RougeScorer(list(types), use_stemmer=True)
    return [scorer.score(ref, hyp) for hyp, ref in zip(hyps, refs)]


def rouge(hyps: list[str], refs: list[str], types=ROUGE_TYPES) -> dict[str, float]:
    """Mean ROUGE F1 (x100) of each type, no confidence interval (fast: for validation)."""
    examples = rouge_example_scores(hyps, refs, types)
    return {t: 100.0 * float(np.mean([e[t].fmeasure for e in examples])) for t in types}


def _seeded_aggregator(confidence: float, samples: int, seed: int):
    """rouge-score's BootstrapAggregator drawing from its own generator instead of numpy's global one.

    Its _bootstrap_resample calls np.random.choice, so its intervals change from run to run. This one draws
    the same resamples (the same examples) for every ROUGE type from a fresh numpy Generator(seed), so the
    interval is reproducible and does not depend on which other types are scored. low/high are the same
    percentiles of the resampled means as rouge-score's; mid is the plain mean, as its docstring says
    (its code takes the median of the resampled means, which is the mean only up to resampling noise).
    """
    class SeededBootstrapAggregator(scoring.BootstrapAggregator):
        def _bootstrap_resample(self, matrix):
            rng = np.random.default_rng(seed)
            n = matrix.shape[0]
            means = np.stack([matrix[rng.integers(0, n, size=n)].mean(axis=0) for _ in range(self._n_samples)])
            delta = 100 * (1 - self._confidence_interval) / 2
            low, high = np.percentile(means, [delta, 100 - delta], axis=0)
            return np.stack([low, matrix.mean(axis=0), high])

    return SeededBootstrapAggregator(confidence_interval=confidence, n_samples=samples)


def rouge_bootstrap(hyps: list[str], refs: list[str], types=ROUGE_TYPES, confidence: float = 0.95,
                    samples: int = 1000, seed: int = 0) -> dict[str, dict[str, float]]:
    """{type: {"low", "mid", "high"}}: mean ROUGE F1 (x100) and its bootstrap confidence interval."""
    aggregator = _seeded_aggregator(confidence, samples, seed)
    for example in rouge_example_scores(hyps, refs, types):
        aggregator.add_scores(example)
    result = aggregator.aggregate()
    return {t: {k: 100.0 * float(getattr(result[t], k).fmeasure) for k in ("low", "mid", "high")} for t in types}


def _rouge_report(hyps: list[str], refs: list[str], confidence: float = 0.95, samples: int = 1000,
                  seed: int = 0) -> dict:
    scores = rouge_bootstrap(hyps, refs, confidence=confidence, samples=samples, seed=seed)
    percent = f"{100 * confidence:g}%"
    text = "\n".join(f"{ROUGE_LABELS[t]} = {s['mid']:.2f} ({percent} CI {s['low']:.2f}-{s['high']:.2f})"
                     for t, s in scores.items())
    signature = (f"F1|stem:porter|rougeLsum:newline-sentences|bootstrap:{samples}|ci:{percent}|seed:{seed}"
                 f"|rouge-score:{version('rouge-score')}")
    return {"score": scores["rouge1"]["mid"], **scores, "signature": signature, "text": text}


# ---------------------------------------------------------------- reports
def score(hyps: list[str], refs: list[str], metrics=("bleu", "chrf", "ter"), tokenize: str = "13a",
          lowercase: bool = False) -> dict:
    """{metric: {"score": float, "signature": str, "text": str}} for each metric asked for; "rouge" adds
    {type: {"low", "mid", "high"}} for ROUGE-1/2/L/Lsum (95% bootstrap interval, seeded) and its
    "score" is ROUGE-1."""
    _check_pairs(hyps, refs)
    unknown = [m for m in metrics if m not in KNOWN]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(KNOWN)}")
    out = {}
    for name in metrics:
        if name == "rouge":
            out["rouge"] = _rouge_report(hyps, refs)
            continue
        metric = {"bleu": lambda: BLEU(tokenize=tokenize, lowercase=lowercase),
                  "chrf": lambda: CHRF(lowercase=lowercase),
                  "ter": lambda: TER(case_sensitive=not lowercase)}[name]()
        result = metric.corpus_score(hyps, [refs])
        out[name] = {"score": result.score, "signature": str(metric.get_signature()), "text": str(result)}
    return out


# ---------------------------------------------------------------- validation
def _check_validation_metric(metric: str) -> None:
    if metric not in VALID_METRICS:
        raise ValueError(f"unknown validation metric '{metric}'; choose from {', '.join(VALID_METRICS)}")


def higher_is_better(metric: str) -> bool:
    """Whether a larger value of this validation metric is better (all but the loss)."""
    _check_validation_metric(metric)
    return metric != "loss"


def validation_score(metric: str, hyps: list[str], refs: list[str]) -> float:
    """One validation number: sacrebleu corpus BLEU (13a) or chrF, or a mean ROUGE F1 (x100, no bootstrap).
    'loss' is not a text metric: the trainer computes it from the model."""
    _check_validation_metric(metric)
    if metric == "loss":
        raise ValueError("validation metric 'loss' is computed by the trainer from the model, not from text")
    _check_pairs(hyps, refs)
    if metric == "bleu":
        return bleu(hyps, refs)
    if metric == "chrf":
        return CHRF().corpus_score(hyps, [refs]).score
    return rouge(hyps, refs, (metric,))[metric]
