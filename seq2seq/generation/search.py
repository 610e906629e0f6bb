"""Batched generation through the decoder interface: beam search, greedy decoding, sampling.

All three run on EncoderDecoder.step and state.reorder only, so they serve every model
family. Sentences leave the batch as soon as they are finished, so a long sentence does
not make the short ones pay for its steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from seq2seq.data.tokenizer import BOS, EOS, PAD
from seq2seq.models.model import AttentionChoice


@dataclass
class Hypothesis:
    tokens: list[int]          # target ids, without BOS and EOS
    logprob: float             # true log-probability of tokens + EOS under the model (no penalties)
    score: float               # logprob / (len(tokens) + 1) ** len_penalty (+ the coverage penalty): what ranks
    attention: torch.Tensor | None = field(default=None, repr=False)  # [len(tokens) + 1, source length]


@dataclass
class GenerationOptions:
    strategy: str = "beam"
    beam_size: int = 5
    nbest: int = 1
    len_penalty: float = 1.0
    min_len: int = 1
    min_len_a: float = 0.0         # min length also >= floor(min_len_a * source length) (capped at the max)
    max_len_a: float = 1.2
    max_len_b: int = 10
    max_len: int = 512
    no_repeat_ngram_size: int = 0  # never emit an n-gram already in the hypothesis (0 = off)
    repetition_penalty: float = 1.0  # log-prob of tokens already in the hypothesis times this (1 = off)
    coverage_penalty: float = 0.0  # beta of Wu et al. (2016), beam search only (0 = off)
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    print_alignment: bool = False  # seq2seq-decode: hard alignments as an extra column
    attention_layer: int = -1      # which decoder layer's attention seq2seq-decode shows (-1 = last)
    attention_head: int = -1       # which head (-1 = mean over heads)

    def __post_init__(self):
        if self.strategy not in ("beam", "greedy", "sampling"):
            raise ValueError(f"generation.strategy must be beam, greedy or sampling, not '{self.strategy}'")
        if self.beam_size < 1:
            raise ValueError(f"generation.beam_size={self.beam_size} must be at least 1")
        if self.strategy == "beam" and not 1 <= self.nbest <= self.beam_size:
            raise ValueError(f"generation.nbest={self.nbest} must be between 1 and generation.beam_size={self.beam_size}")
        if self.strategy == "greedy" and self.nbest != 1:
            raise ValueError("greedy decoding gives one hypothesis: set generation.nbest=1 or use beam search")
        if self.strategy == "sampling" and self.nbest < 1:
            raise ValueError(f"generation.nbest={self.nbest} must be at least 1 (samples per input)")
        if self.max_len < 1:
            raise ValueError(f"generation.max_len={self.max_len} must be at least 1")
        if self.min_len > self.max_len:
            raise ValueError(f"generation.min_len={self.min_len} is more than generation.max_len={self.max_len}: "
                             f"no hypothesis could satisfy both")
        if self.min_len_a < 0:
            raise ValueError(f"generation.min_len_a={self.min_len_a} must not be negative")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"generation.no_repeat_ngram_size={self.no_repeat_ngram_size} must not be negative "
                             f"(0 turns n-gram blocking off)")
        if self.repetition_penalty <= 0:
            raise ValueError(f"generation.repetition_penalty={self.repetition_penalty} must be positive "
                             f"(1.0 = off, above 1 discourages repeats)")
        if self.coverage_penalty < 0:
            raise ValueError(f"generation.coverage_penalty={self.coverage_penalty} must not be negative (0 = off)")
        if self.coverage_penalty > 0 and self.strategy != "beam":
            raise ValueError(f"generation.coverage_penalty={self.coverage_penalty} ranks finished beam hypotheses and "
                             f"needs generation.strategy=beam, not {self.strategy}; set generation.coverage_penalty=0")
        if self.temperature <= 0:
            raise ValueError(f"generation.temperature={self.temperature} must be positive")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"generation.top_p={self.top_p} must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"generation.top_k={self.top_k} must not be negative (0 = no cutoff)")

    @property
    def penalised(self) -> bool:
        """Whether the search explores with scores other than the model's log-probabilities."""
        return self.no_repeat_ngram_size > 0 or self.repetition_penalty != 1.0


def _source_lengths(src: torch.Tensor) -> torch.Tensor:
    return (src.ne(PAD).sum(dim=1) - 1).float()  # the source's EOS does not count


def length_limits(src: torch.Tensor, opts: GenerationOptions, max_positions: int) -> torch.Tensor:
    """Most target tokens (EOS excluded) allowed per sentence: a * source length + b, capped."""
    limit = (opts.max_len_a * _source_lengths(src) + opts.max_len_b).floor().long()
    return limit.clamp(min=max(opts.min_len, 1), max=min(opts.max_len, max_positions - 1))


def length_bounds(src: torch.Tensor, opts: GenerationOptions, max_positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fewest, most) target tokens (EOS excluded) per sentence: the fewest is
    max(min_len, floor(min_len_a * source length)), capped at that sentence's most."""
    limits = length_limits(src, opts, max_positions)
    least = (opts.min_len_a * _source_lengths(src)).floor().long().clamp(min=opts.min_len)
    return torch.minimum(least, limits), limits


def _mask_scores(logp: torch.Tensor, t: int, min_len: torch.Tensor, force_eos: torch.Tensor) -> torch.Tensor:
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


def _block_ngrams(scores: torch.Tensor, history: torch.Tensor, n: int) -> torch.Tensor:
    """-inf (in place) on every token that would complete an n-gram already in the row's history [rows, t]."""
    t = history.size(1)
    if t < n:
        return scores
    windows = history.unfold(1, n, 1)                           # [rows, t - n + 1, n]: every n-gram so far
    context = history[:, t - n + 1:]                            # [rows, n - 1]: the last n - 1 tokens
    match = windows[:, :, :-1].eq(context.unsqueeze(1)).all(dim=2)
    banned = windows[:, :, -1].masked_fill(~match, PAD)         # PAD is forbidden anyway: a harmless target
    return scores.scatter_(1, banned, -math.inf)


def _penalise(logp: torch.Tensor, history: torch.Tensor, opts: GenerationOptions,
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
        _block_ngrams(scores, history, opts.no_repeat_ngram_size)
        stuck = scores.isneginf().all(dim=1)
        scores[:, EOS] = torch.where(stuck, eos_logp, scores[:, EOS])
        logp[:, EOS] = torch.where(stuck, eos_logp, logp[:, EOS])
    return scores


def _coverage_penalty(coverage: torch.Tensor, real: torch.Tensor, beta: float) -> torch.Tensor:
    """beta * sum over real source positions i of log(min(coverage_i, 1)) per row (Wu et al., 2016, eq. 14).
    coverage [rows, S]: attention summed over the target steps; real [rows, S]: True off padding.
    A position never attended at all (possible with local attention) counts as COVERAGE_FLOOR, not log 0."""
    covered = coverage.clamp(min=COVERAGE_FLOOR, max=1.0).log()
    return beta * covered.masked_fill(~real, 0.0).sum(dim=1)


COVERAGE_FLOOR = 1e-10


def _report(opts: GenerationOptions, need_attention: bool) -> AttentionChoice | None:
    """The attention the caller wants with each hypothesis (generation.attention_layer / attention_head)."""
    return AttentionChoice(opts.attention_layer, opts.attention_head) if need_attention else None


def _hypothesis(tokens: list[int], logprob: float, len_penalty: float, attention, penalty: float = 0.0) -> Hypothesis:
    return Hypothesis(tokens, logprob, logprob / (len(tokens) + 1) ** len_penalty + penalty, attention)


@torch.no_grad()
def generate(model, src: torch.Tensor, opts: GenerationOptions, need_attention: bool = False,
             generator: torch.Generator | None = None) -> list[list[Hypothesis]]:
    """Hypotheses for each source row of src [B, S] (right-padded, EOS-terminated), best first."""
    if opts.strategy == "beam":
        return beam_search(model, src, opts, need_attention)
    return sample(model, src, opts, need_attention, generator)


@torch.no_grad()
def beam_search(model, src: torch.Tensor, opts: GenerationOptions, need_attention: bool = False):
    batch, k = src.size(0), opts.beam_size
    min_lens, limits = length_bounds(src, opts, model.max_positions)
    beta = opts.coverage_penalty
    enc = model.encode(src)
    rows = torch.arange(batch, device=src.device).repeat_interleave(k)
    state = model.init_state(enc, _report(opts, need_attention or beta > 0)).reorder(rows)  # k hypotheses per sentence
    active = torch.arange(batch, device=src.device)  # sentence of each block of k rows
    last = torch.full((batch * k,), BOS, dtype=torch.long, device=src.device)
    history = torch.zeros(batch * k, 0, dtype=torch.long, device=src.device)
    attn_history = None
    # attention summed over the steps of each hypothesis, for the coverage penalty
    coverage = torch.zeros(batch * k, src.size(1), device=src.device) if beta > 0 else None
    real = src.ne(PAD)
    scores = torch.full((batch, k), -math.inf, device=src.device)  # what the search ranks (penalised)
    scores[:, 0] = 0.0
    true_scores = scores.clone() if opts.penalised else scores   # the model's log-probabilities
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    positions = torch.arange(2 * k, device=src.device)
    for t in range(int(limits.max()) + 1):
        n = active.numel()
        logp, state, attn = model.step(last, state)
        force = (limits[active] <= t).repeat_interleave(k)
        eos_logp = logp[:, EOS].clone() if opts.no_repeat_ngram_size > 0 else None
        logp = _mask_scores(logp, t, min_lens[active].repeat_interleave(k), force)
        search = _penalise(logp, history, opts, eos_logp)
        if need_attention:
            step_attn = attn.unsqueeze(1).float()
            attn_history = step_attn if attn_history is None else torch.cat([attn_history, step_attn], dim=1)
        if beta > 0:
            coverage = coverage + attn.float()
        vocab = logp.size(1)
        top_scores, top_idx = (scores.view(-1, 1) + search).view(n, k * vocab).topk(2 * k, dim=1)
        if opts.penalised:
            top_true = (true_scores.view(-1, 1) + logp).view(n, k * vocab).gather(1, top_idx)
        else:
            top_true = top_scores
        beam_of, token = top_idx // vocab, top_idx % vocab
        is_eos = token.eq(EOS) & top_scores.gt(-math.inf)

        # Hypotheses ending in EOS among the k best candidates are finished.
        done = torch.zeros(n, dtype=torch.bool)
        eos_rows = is_eos[:, :k].nonzero().tolist()
        if eos_rows:
            true_cpu, beam_cpu = top_true.tolist(), beam_of.tolist()
            penalties = None
            if beta > 0:
                penalties = _coverage_penalty(coverage, real[active].repeat_interleave(k, dim=0), beta).tolist()
            for i, j in eos_rows:
                sentence = int(active[i])
                if len(finished[sentence]) < k:
                    row = i * k + beam_cpu[i][j]
                    attention = attn_history[row].cpu() if need_attention else None
                    finished[sentence].append(
                        _hypothesis(history[row].tolist(), true_cpu[i][j], opts.len_penalty, attention,
                                    penalties[row] if penalties is not None else 0.0))
        counts = torch.tensor([len(finished[int(s)]) for s in active.tolist()])
        done = counts.ge(k) | limits[active].le(t).cpu()
        if bool(done.all()):
            break

        # The k best candidates that do not end here continue.
        order = (positions + is_eos.long() * 2 * k).argsort(dim=1)[:, :k]
        next_scores = top_scores.gather(1, order)
        next_true = top_true.gather(1, order) if opts.penalised else next_scores
        next_rows = (torch.arange(n, device=src.device) * k).unsqueeze(1) + beam_of.gather(1, order)
        next_tokens = token.gather(1, order)
        keep = (~done).to(src.device)
        rows = next_rows[keep].view(-1)
        state = state.reorder(rows)
        history = torch.cat([history.index_select(0, rows), next_tokens[keep].view(-1, 1)], dim=1)
        if need_attention:
            attn_history = attn_history.index_select(0, rows)
        if beta > 0:
            coverage = coverage.index_select(0, rows)
        last, scores, active = next_tokens[keep].view(-1), next_scores[keep], active[keep]
        true_scores = next_true[keep] if opts.penalised else scores
    results = []
    for sentence, hyps in enumerate(finished):
        hyps.sort(key=lambda h: h.score, reverse=True)
        src_len = int(src[sentence].ne(PAD).sum())
        for h in hyps:
            if h.attention is not None:
                h.attention = h.attention[:, :src_len]
        results.append(hyps[: opts.nbest])
    return results


@torch.no_grad()
def sample(model, src: torch.Tensor, opts: GenerationOptions, need_attention: bool = False,
           generator: torch.Generator | None = None):
    """Greedy decoding (strategy=greedy) or ancestral sampling with temperature, top-k and top-p (nbest samples each)."""
    copies = opts.nbest if opts.strategy == "sampling" else 1
    batch = src.size(0)
    rows = torch.arange(batch, device=src.device).repeat_interleave(copies)
    min_lens, limits = (x[rows] for x in length_bounds(src, opts, model.max_positions))
    state = model.init_state(model.encode(src), _report(opts, need_attention)).reorder(rows)
    total = rows.numel()
    active = torch.arange(total, device=src.device)
    last = torch.full((total,), BOS, dtype=torch.long, device=src.device)
    history = torch.zeros(total, 0, dtype=torch.long, device=src.device)  # tokens of the active rows
    tokens: list[list[int]] = [[] for _ in range(total)]
    logprobs = [0.0] * total
    attentions: list[list[torch.Tensor]] = [[] for _ in range(total)]
    outputs: list[Hypothesis | None] = [None] * total
    for t in range(int(limits.max()) + 1):
        logp, state, attn = model.step(last, state)
        eos_logp = logp[:, EOS].clone() if opts.no_repeat_ngram_size > 0 else None
        logp = _mask_scores(logp, t, min_lens[active], limits[active] <= t)
        search = _penalise(logp, history, opts, eos_logp)
        if opts.strategy == "greedy":
            choice = search.argmax(dim=1)
        else:
            choice = _draw(search, opts, generator)
        chosen_logp = logp.gather(1, choice[:, None])[:, 0].tolist()  # the true log-probability
        choice_list, active_list = choice.tolist(), active.tolist()
        ended = []
        for i, (row, tok) in enumerate(zip(active_list, choice_list)):
            logprobs[row] += chosen_logp[i]
            if need_attention:
                attentions[row].append(attn[i].float().cpu())
            if tok == EOS:
                attention = torch.stack(attentions[row]) if need_attention else None
                outputs[row] = _hypothesis(tokens[row], logprobs[row], opts.len_penalty, attention)
                ended.append(i)
            else:
                tokens[row].append(tok)
        if len(ended) == len(active_list):
            break
        if opts.penalised:
            history = torch.cat([history, choice[:, None]], dim=1)
        if ended:
            keep = torch.ones(len(active_list), dtype=torch.bool)
            keep[ended] = False
            keep_idx = keep.nonzero()[:, 0].to(src.device)
            state, active, choice = state.reorder(keep_idx), active[keep_idx], choice[keep_idx]
            if opts.penalised:
                history = history.index_select(0, keep_idx)
        last = choice
    results = []
    for sentence in range(batch):
        hyps = [h for h in outputs[sentence * copies : (sentence + 1) * copies]]
        src_len = int(src[sentence].ne(PAD).sum())
        for h in hyps:
            if h.attention is not None:
                h.attention = h.attention[:, :src_len]
        results.append(sorted(hyps, key=lambda h: h.score, reverse=True))
    return results


def _draw(logp: torch.Tensor, opts: GenerationOptions, generator) -> torch.Tensor:
    logits = logp / max(opts.temperature, 1e-5)
    if opts.top_k > 0:
        kth = logits.topk(min(opts.top_k, logits.size(1)), dim=1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if opts.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=1, descending=True)
        cumulative = sorted_logits.softmax(dim=1).cumsum(dim=1)
        remove = cumulative - sorted_logits.softmax(dim=1) >= opts.top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(remove, -math.inf)
        logits = torch.full_like(logits, -math.inf).scatter(1, order, sorted_logits)
    return torch.multinomial(logits.softmax(dim=1), 1, generator=generator)[:, 0]
