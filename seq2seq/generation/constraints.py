"""Lexically constrained beam search: phrases (target id sequences) that must appear in a sentence's output,
each sentence with its own, batched, by dynamic beam allocation (Post and Vilar, 2018; vectorised as in
Hu et al., 2019).

Each hypothesis carries its Progress: which phrases it has met, and the phrase it is inside (and how far).
At each step beam search's usual 2k best candidates are joined by, for every hypothesis, each token that
would advance it (the next token of the phrase it is inside, else the first token of every unmet phrase) and
its own best token; duplicates are dropped. A candidate's bank is the number of constraint tokens it has
met. The k hypotheses that go on are taken round-robin over the banks, the fullest bank first, each bank in
score order (so a hypothesis that is further along the constraints is kept even when its score is lower,
and one per bank before the second of any); an end of sentence counts only when every phrase is met, or at
the length limit, where a hypothesis ends anyway and reports the phrases it missed (Hypothesis.unmet).

ordered=True: the phrases must appear in the order given (only the first unmet one may start). A phrase is
entered at its first token; two phrases starting with the same token are tried in their order only (the
first one is entered). A sentence without phrases gets exactly plain beam search's candidates and order.
Constraint tokens are exempt from n-gram blocking and the repetition penalty (their search score is their
log-probability); a target prefix is honoured first (a token it forbids cannot advance a phrase).
"""
from __future__ import annotations

import dataclasses
import math

import torch

NONE = -1


@dataclasses.dataclass
class Progress:
    """Per hypothesis row: the phrases met [R, C], the phrase it is inside [R] (-1: none) and the tokens of it
    matched so far [R]."""

    met: torch.Tensor
    inside: torch.Tensor
    matched: torch.Tensor

    def index_select(self, rows: torch.Tensor) -> "Progress":
        return Progress(self.met.index_select(0, rows), self.inside.index_select(0, rows),
                        self.matched.index_select(0, rows))


class Constraints:
    """The phrases of a batch: ids [B, C, L] (-1 past a phrase's end), lengths [B, C] (0: no phrase)."""

    def __init__(self, phrases: list[list[list[int]]], ordered: bool, device):
        batch = len(phrases)
        width = max((len(p) for ps in phrases for p in ps), default=1)
        count = max((len(ps) for ps in phrases), default=1) or 1
        self.ids = torch.full((batch, count, width), NONE, dtype=torch.long)
        self.lengths = torch.zeros(batch, count, dtype=torch.long)
        for b, ps in enumerate(phrases):
            for c, p in enumerate(ps):
                self.ids[b, c, : len(p)] = torch.tensor(p, dtype=torch.long)
                self.lengths[b, c] = len(p)
        self.ids, self.lengths = self.ids.to(device), self.lengths.to(device)
        self.total = self.lengths.sum(dim=1)          # [B] constraint tokens of each sentence
        self.ordered = ordered

    @classmethod
    def of(cls, phrases: list[list[list[int]]] | None, ordered: bool, device) -> "Constraints | None":
        if not phrases or not any(any(p for p in ps) for ps in phrases):
            return None
        return cls([[p for p in ps if p] for ps in phrases], ordered, device)

    def start(self, sentences: torch.Tensor) -> Progress:
        rows = sentences.numel()
        device = self.ids.device
        return Progress(torch.zeros(rows, self.ids.size(1), dtype=torch.bool, device=device),
                        torch.full((rows,), NONE, dtype=torch.long, device=device),
                        torch.zeros(rows, dtype=torch.long, device=device))

    def met_tokens(self, progress: Progress, sentences: torch.Tensor) -> torch.Tensor:
        """[R] constraint tokens each row has met (whole phrases plus the part of the one it is inside)."""
        return (progress.met.long() * self.lengths[sentences]).sum(dim=1) + progress.matched

    def unmet(self, progress: Progress, sentences: torch.Tensor) -> list[tuple[int, ...]]:
        """Each row's phrases not met, as indices into its sentence's phrases."""
        missing = ~progress.met & self.lengths[sentences].gt(0)
        return [tuple(row.nonzero()[:, 0].tolist()) for row in missing.cpu()]

    def _startable(self, progress: Progress, sentences: torch.Tensor) -> torch.Tensor:
        """[R, C] phrases a row may enter now: unmet, real, and (ordered) the first unmet one."""
        lengths = self.lengths[sentences]
        open_ = ~progress.met & lengths.gt(0)
        if self.ordered:
            first = open_.long().argmax(dim=1, keepdim=True)
            open_ = open_ & torch.zeros_like(open_).scatter_(1, first, True)
        return open_

    def next_tokens(self, progress: Progress, sentences: torch.Tensor) -> torch.Tensor:
        """[R, C] the tokens that would advance each row (-1: none): inside a phrase its next token (first
        column), else the first token of each phrase it may enter."""
        ids = self.ids[sentences]                                                # [R, C, L]
        first = ids[:, :, 0].masked_fill(~self._startable(progress, sentences), NONE)
        inside = progress.inside.ge(0)
        cont = ids[torch.arange(ids.size(0), device=ids.device), progress.inside.clamp(min=0),
                   progress.matched.clamp(max=ids.size(2) - 1)]
        nxt = torch.full_like(first, NONE)
        nxt[:, 0] = cont
        return torch.where(inside[:, None], nxt, first)

    def advance(self, progress: Progress, sentences: torch.Tensor, tokens: torch.Tensor) -> Progress:
        """The rows' progress after each takes tokens [R]."""
        ids, lengths = self.ids[sentences], self.lengths[sentences]
        rows = torch.arange(ids.size(0), device=ids.device)
        met, inside, matched = progress.met.clone(), progress.inside.clone(), progress.matched.clone()
        was_inside = inside.ge(0)
        expected = ids[rows, inside.clamp(min=0), matched.clamp(max=ids.size(2) - 1)]
        goes_on = was_inside & expected.eq(tokens)
        matched = torch.where(goes_on, matched + 1, matched)
        completes = goes_on & matched.eq(lengths[rows, inside.clamp(min=0)])
        met[rows[completes], inside[completes]] = True
        broken = was_inside & ~goes_on
        free = completes | broken | ~was_inside                 # rows no longer inside a phrase
        inside = torch.where(free, torch.full_like(inside, NONE), inside)
        matched = torch.where(free, torch.zeros_like(matched), matched)
        # a row that is free (and did not just take this token inside a phrase) may enter a phrase with it
        may_enter = (broken | ~was_inside)[:, None] & self._startable(Progress(met, inside, matched), sentences)
        hits = may_enter & ids[:, :, 0].eq(tokens[:, None])
        entered = hits.any(dim=1)
        which = hits.long().argmax(dim=1)
        single = entered & lengths[rows, which].eq(1)
        met[rows[single], which[single]] = True
        longer = entered & ~single
        inside = torch.where(longer, which, inside)
        matched = torch.where(longer, torch.ones_like(matched), matched)
        return Progress(met, inside, matched)


def striped_order(scores: torch.Tensor, banks: torch.Tensor, valid: torch.Tensor, top_bank: int) -> torch.Tensor:
    """[n, M] candidate positions in the order beams are filled: round-robin over banks (the fullest first),
    each bank best score first; invalid candidates last. scores, banks [n, M]; valid [n, M] bool."""
    n, m = scores.shape
    by_score = scores.masked_fill(~valid, -math.inf).argsort(dim=1, descending=True, stable=True)
    bank_sorted = banks.gather(1, by_score).clamp(0, top_bank)
    onehot = torch.nn.functional.one_hot(bank_sorted, top_bank + 1)
    rank = (onehot.cumsum(dim=1) * onehot).sum(dim=2) - 1               # rank within its bank, 0 = best
    key = rank * (top_bank + 1) + (top_bank - bank_sorted)
    key = key.masked_fill(~valid.gather(1, by_score), n * m * (top_bank + 2) + 1)
    return by_score.gather(1, key.argsort(dim=1, stable=True))


@dataclasses.dataclass
class Candidates:
    """A step's candidates per sentence [n, M], in the order beams are filled: search score, true
    log-probability, beam (0..k-1), token; and (constrained) each one's Progress, flat [n * M]."""

    score: torch.Tensor
    true: torch.Tensor
    beam: torch.Tensor
    token: torch.Tensor
    progress: Progress | None = None


def expand(top: Candidates, constraints: Constraints, progress: Progress, scores: torch.Tensor,
           true_scores: torch.Tensor, search: torch.Tensor, logp: torch.Tensor, active: torch.Tensor,
           at_limit: torch.Tensor, eos: int) -> Candidates:
    """Beam search's top candidates (sorted by score) joined by every row's advancing tokens and its best
    token, without duplicates, each with its new Progress, in striped_order; an end of sentence is valid only
    with every phrase met or at the length limit (at_limit [n])."""
    n, k = scores.shape
    rows_total, vocab = logp.shape
    sentence_of_row = active.repeat_interleave(k)
    advancing = constraints.next_tokens(progress, sentence_of_row)                     # [n*k, C]
    best = search.argmax(dim=1, keepdim=True)                                          # [n*k, 1]
    extra = torch.cat([advancing, best], dim=1)                                        # [n*k, C+1]
    width = extra.size(1)
    extra_beam = torch.arange(k, device=logp.device).repeat_interleave(width).expand(n, -1)
    extra_tok = extra.view(n, k * width)
    row = (torch.arange(n, device=logp.device) * k)[:, None] + extra_beam
    real = extra_tok.ge(0)
    tok = extra_tok.clamp(min=0)
    # the advancing tokens score by their log-probability (exempt from the penalties); the best by the search's
    is_best = torch.zeros(k, width, dtype=torch.bool, device=logp.device)
    is_best[:, -1] = True
    is_best = is_best.view(1, -1).expand(n, -1)
    step = torch.where(is_best, search[row, tok], logp[row, tok])
    extra_score = (scores.view(-1)[row] + step).masked_fill(~real, -math.inf)
    extra_true = (true_scores.view(-1)[row] + logp[row, tok]).masked_fill(~real, -math.inf)

    score = torch.cat([top.score, extra_score], dim=1)
    true = torch.cat([top.true, extra_true], dim=1)
    beam = torch.cat([top.beam, extra_beam], dim=1)
    token = torch.cat([top.token, tok], dim=1)
    m = score.size(1)
    # the same (beam, token) twice is one candidate: keep its first appearance
    key = beam * vocab + token
    key = torch.where(score.isneginf(), -1 - torch.arange(m, device=key.device).expand(n, -1), key)
    sorted_key, perm = key.sort(dim=1, stable=True)
    dup_sorted = torch.zeros_like(sorted_key, dtype=torch.bool)
    dup_sorted[:, 1:] = sorted_key[:, 1:].eq(sorted_key[:, :-1])
    duplicate = torch.zeros_like(dup_sorted).scatter_(1, perm, dup_sorted)
    score = score.masked_fill(duplicate, -math.inf)

    flat_rows = ((torch.arange(n, device=logp.device) * k)[:, None] + beam).view(-1)
    sentences = active[:, None].expand(-1, m).reshape(-1)
    moved = constraints.advance(progress.index_select(flat_rows), sentences, token.reshape(-1))
    banks = constraints.met_tokens(moved, sentences).view(n, m)
    totals = constraints.total[active][:, None]
    ends = token.eq(eos)
    valid = score.gt(-math.inf) & (~ends | banks.eq(totals) | at_limit[:, None])
    order = striped_order(score, banks, valid, int(constraints.total.max()))
    flat_order = ((torch.arange(n, device=logp.device) * m)[:, None] + order).view(-1)
    return Candidates(score.masked_fill(~valid, -math.inf).gather(1, order), true.gather(1, order),
                      beam.gather(1, order), token.gather(1, order), moved.index_select(flat_order))
