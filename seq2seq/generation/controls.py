"""The decoding controls, applied to one step's log-probabilities [rows, V] by every strategy: the masks
(PAD, BOS, EOS before the minimum length, only EOS at the limit), n-gram blocking, the repetition penalty,
forced prefix tokens, and beam search's coverage penalty on finished hypotheses."""
from __future__ import annotations

import math

import torch

from seq2seq.data.tokenizer import BOS, EOS, PAD
from seq2seq.generation.options import GenerationOptions


def mask_scores(logp: torch.Tensor, t: int, min_len: torch.Tensor, force_eos: torch.Tensor) -> torch.Tensor:
    """Forbid PAD and BOS, EOS before min_len (per row), and everything but EOS where the length limit
    is reached. min_len never exceeds the limit, so a forced EOS keeps its true log-probability."""
    logp[:, PAD] = -math.inf
    logp[:, BOS] = -math.inf
    logp[:, EOS] = logp[:, EOS].masked_fill(min_len > t, -math.inf)
    if force_eos.any():
        eos = logp[force_eos, EOS].clone()
        logp[force_eos] = -math.inf
        logp[force_eos, EOS] = eos
    return logp


def block_ngrams(scores: torch.Tensor, history: torch.Tensor, n: int) -> torch.Tensor:
    """-inf (in place) on every token that would complete an n-gram already in the row's history [rows, t]."""
    t = history.size(1)
    if t < n:
        return scores
    windows = history.unfold(1, n, 1)                           # [rows, t - n + 1, n]: every n-gram so far
    context = history[:, t - n + 1:]                            # [rows, n - 1]: the last n - 1 tokens
    match = windows[:, :, :-1].eq(context.unsqueeze(1)).all(dim=2)
    banned = windows[:, :, -1].masked_fill(~match, PAD)         # PAD is forbidden anyway: a harmless target
    return scores.scatter_(1, banned, -math.inf)


def penalise(logp: torch.Tensor, history: torch.Tensor, opts: GenerationOptions,
              eos_logp: torch.Tensor | None) -> torch.Tensor:
    """The scores the search explores with: the masked log-probabilities logp [rows, V] with the repetition
    penalty on tokens of the history [rows, t] and n-grams blocked. logp itself when both are off.

    A row whose every token is blocked (a tiny vocabulary before min_len) may end: its EOS gets its
    true log-probability eos_logp, in logp as well, so that no n-gram is ever repeated."""
    if not opts.penalised:
        return logp
    scores = logp.clone()
    if opts.repetition_penalty != 1.0 and history.size(1):
        # log-probabilities are <= 0: times a penalty > 1 makes a seen token less likely (CTRL, adapted)
        scores.scatter_(1, history, scores.gather(1, history) * opts.repetition_penalty)
    if opts.no_repeat_ngram_size > 0:
        block_ngrams(scores, history, opts.no_repeat_ngram_size)
        stuck = scores.isneginf().all(dim=1)
        scores[:, EOS] = torch.where(stuck, eos_logp, scores[:, EOS])
        logp[:, EOS] = torch.where(stuck, eos_logp, logp[:, EOS])
    return scores


def force_tokens(logp: torch.Tensor, search: torch.Tensor, forced: torch.Tensor) -> None:
    """In place: rows whose forced [rows] token is >= 0 (a prefix not yet emitted) may only take that token,
    with its true log-probability in logp and in the search's scores (a penalty never blocks a prefix)."""
    rows = forced.ge(0).nonzero()[:, 0]
    if rows.numel() == 0:
        return
    tokens = forced[rows]
    true = logp[rows, tokens]
    for scores in (logp, search) if search is not logp else (logp,):
        scores[rows] = -math.inf
        scores[rows, tokens] = true


def coverage_penalty(coverage: torch.Tensor, real: torch.Tensor, beta: float) -> torch.Tensor:
    """beta * sum over real source positions i of log(min(coverage_i, 1)) per row (Wu et al., 2016, eq. 14).
    coverage [rows, S]: attention summed over the target steps; real [rows, S]: True off padding.
    A position never attended at all (possible with local attention) counts as COVERAGE_FLOOR, not log 0."""
    covered = coverage.clamp(min=COVERAGE_FLOOR, max=1.0).log()
    return beta * covered.masked_fill(~real, 0.0).sum(dim=1)


COVERAGE_FLOOR = 1e-10
