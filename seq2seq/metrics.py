"""Corpus scores: BLEU, chrF and TER through sacrebleu (with their signatures), ROUGE through rouge-score."""
from __future__ import annotations

KNOWN = ("bleu", "chrf", "ter", "rouge")


def bleu(hyps: list[str], refs: list[str], tokenize: str = "13a", lowercase: bool = False) -> float:
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize=tokenize, lowercase=lowercase).corpus_score(hyps, [refs]).score


def rouge(hyps: list[str], refs: list[str]) -> dict:
    """ROUGE-1/2/L/Lsum F1 (x100), with Porter stemming; Lsum splits summaries at newlines."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    totals = {k: 0.0 for k in ("rouge1", "rouge2", "rougeL", "rougeLsum")}
    for hyp, ref in zip(hyps, refs):
        for key, value in scorer.score(ref, hyp).items():
            totals[key] += value.fmeasure
    n = max(len(hyps), 1)
    return {key: 100.0 * value / n for key, value in totals.items()}


def score(hyps: list[str], refs: list[str], metrics=("bleu", "chrf", "ter"), tokenize: str = "13a",
          lowercase: bool = False) -> dict:
    """{metric: {"score": float, "signature": str, "text": str}} for each metric asked for."""
    if len(hyps) != len(refs):
        raise ValueError(f"hypotheses and references differ in length: {len(hyps)} vs {len(refs)} lines")
    unknown = [m for m in metrics if m not in KNOWN]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(KNOWN)}")
    from sacrebleu.metrics import BLEU, CHRF, TER

    out = {}
    for name in metrics:
        if name == "rouge":
            scores = rouge(hyps, refs)
            text = " ".join(f"{k.upper().replace('ROUGE', 'ROUGE-')} = {v:.2f}" for k, v in scores.items())
            out["rouge"] = {"score": scores["rouge1"], **scores, "signature": "rouge-score F1, porter stemmer",
                            "text": text}
            continue
        metric = {"bleu": lambda: BLEU(tokenize=tokenize, lowercase=lowercase),
                  "chrf": lambda: CHRF(lowercase=lowercase),
                  "ter": lambda: TER(case_sensitive=not lowercase)}[name]()
        result = metric.corpus_score(hyps, [refs])
        out[name] = {"score": result.score, "signature": str(metric.get_signature()), "text": str(result)}
    return out
