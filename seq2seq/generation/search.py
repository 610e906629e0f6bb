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


@dataclass
class Hypothesis:
    tokens: list[int]          # target ids, without BOS and EOS
    logprob: float             # log-probability of tokens + EOS under the model
    score: float               # logprob / (len(tokens) + 1) ** len_penalty: what ranks hypotheses
    attention: torch.Tensor | None = field(default=None, repr=False)  # [len(tokens) + 1, source length]


@dataclass
class GenerationOptions:
    strategy: str = "beam"
    beam_size: int = 5
    nbest: int = 1
    len_penalty: float = 1.0
    min_len: int = 1
    max_len_a: float = 1.2
    max_len_b: int = 10
    max_len: int = 512
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    print_alignment: bool = False  # seq2seq-decode: hard alignments as an extra column
    attention_layer: int = -1      # which decoder layer's attention seq2seq-decode shows (-1 = last)
    attention_head: int = -1       # which head (-1 = mean over heads)

    def __post_init__(self):
        if self.strategy not in ("beam", "greedy", "sampling"):
            raise ValueError(f"generation.strategy must be beam, greedy or sampling, not '{self.strategy}'")
        if self.strategy == "beam" and not 1 <= self.nbest <= self.beam_size:
            raise ValueError(f"generation.nbest={self.nbest} must be between 1 and generation.beam_size={self.beam_size}")
        if self.strategy == "greedy" and self.nbest != 1:
            raise ValueError("greedy decoding gives one hypothesis: set generation.nbest=1 or use beam search")


def length_limits(src: torch.Tensor, opts: GenerationOptions, max_positions: int) -> torch.Tensor:
    """Most target tokens (EOS excluded) allowed per sentence: a * source length + b, capped."""
    src_len = (src.ne(PAD).sum(dim=1) - 1).float()  # the source's EOS does not count
    limit = (opts.max_len_a * src_len + opts.max_len_b).floor().long()
    return limit.clamp(min=max(opts.min_len, 1), max=min(opts.max_len, max_positions - 1))


def _mask_scores(logp: torch.Tensor, t: int, min_len: int, force_eos: torch.Tensor) -> torch.Tensor:
    """Forbid PAD and BOS, EOS before min_len, and everything but EOS where the length limit is reached."""
    logp[:, PAD] = -math.inf
    logp[:, BOS] = -math.inf
    if t < min_len:
        logp[:, EOS] = -math.inf
    if force_eos.any():
        eos = logp[force_eos, EOS].clone()
        logp[force_eos] = -math.inf
        logp[force_eos, EOS] = eos if t >= min_len else 0.0
    return logp


def _hypothesis(tokens: list[int], logprob: float, len_penalty: float, attention) -> Hypothesis:
    return Hypothesis(tokens, logprob, logprob / (len(tokens) + 1) ** len_penalty, attention)


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
    limits = length_limits(src, opts, model.max_positions)
    enc = model.encode(src)
    rows = torch.arange(batch, device=src.device).repeat_interleave(k)
    state = model.init_state(enc, need_attention).reorder(rows)  # k hypotheses per sentence
    active = torch.arange(batch, device=src.device)  # sentence of each block of k rows
    last = torch.full((batch * k,), BOS, dtype=torch.long, device=src.device)
    history = torch.zeros(batch * k, 0, dtype=torch.long, device=src.device)
    attn_history = None
    scores = torch.full((batch, k), -math.inf, device=src.device)
    scores[:, 0] = 0.0
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    positions = torch.arange(2 * k, device=src.device)
    for t in range(int(limits.max()) + 1):
        n = active.numel()
        logp, state, attn = model.step(last, state)
        force = (limits[active] <= t).repeat_interleave(k)
        logp = _mask_scores(logp, t, opts.min_len, force)
        if need_attention:
            step_attn = attn.unsqueeze(1).float()
            attn_history = step_attn if attn_history is None else torch.cat([attn_history, step_attn], dim=1)
        vocab = logp.size(1)
        top_scores, top_idx = (scores.view(-1, 1) + logp).view(n, k * vocab).topk(2 * k, dim=1)
        beam_of, token = top_idx // vocab, top_idx % vocab
        is_eos = token.eq(EOS) & top_scores.gt(-math.inf)

        # Hypotheses ending in EOS among the k best candidates are finished.
        done = torch.zeros(n, dtype=torch.bool)
        eos_rows = is_eos[:, :k].nonzero().tolist()
        if eos_rows:
            top_cpu, beam_cpu = top_scores.tolist(), beam_of.tolist()
            for i, j in eos_rows:
                sentence = int(active[i])
                if len(finished[sentence]) < k:
                    row = i * k + beam_cpu[i][j]
                    attention = attn_history[row].cpu() if need_attention else None
                    finished[sentence].append(
                        _hypothesis(history[row].tolist(), top_cpu[i][j], opts.len_penalty, attention))
        counts = torch.tensor([len(finished[int(s)]) for s in active.tolist()])
        done = counts.ge(k) | limits[active].le(t).cpu()
        if bool(done.all()):
            break

        # The k best candidates that do not end here continue.
        order = (positions + is_eos.long() * 2 * k).argsort(dim=1)[:, :k]
        next_scores = top_scores.gather(1, order)
        next_rows = (torch.arange(n, device=src.device) * k).unsqueeze(1) + beam_of.gather(1, order)
        next_tokens = token.gather(1, order)
        keep = (~done).to(src.device)
        rows = next_rows[keep].view(-1)
        state = state.reorder(rows)
        history = torch.cat([history.index_select(0, rows), next_tokens[keep].view(-1, 1)], dim=1)
        if need_attention:
            attn_history = attn_history.index_select(0, rows)
        last, scores, active = next_tokens[keep].view(-1), next_scores[keep], active[keep]
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
    limits = length_limits(src, opts, model.max_positions)[rows]
    state = model.init_state(model.encode(src), need_attention).reorder(rows)
    total = rows.numel()
    active = torch.arange(total, device=src.device)
    last = torch.full((total,), BOS, dtype=torch.long, device=src.device)
    tokens: list[list[int]] = [[] for _ in range(total)]
    logprobs = [0.0] * total
    attentions: list[list[torch.Tensor]] = [[] for _ in range(total)]
    outputs: list[Hypothesis | None] = [None] * total
    for t in range(int(limits.max()) + 1):
        logp, state, attn = model.step(last, state)
        logp = _mask_scores(logp, t, opts.min_len, limits[active] <= t)
        if opts.strategy == "greedy":
            choice = logp.argmax(dim=1)
        else:
            choice = _draw(logp, opts, generator)
        chosen_logp = logp.gather(1, choice[:, None])[:, 0].tolist()
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
        if ended:
            keep = torch.ones(len(active_list), dtype=torch.bool)
            keep[ended] = False
            keep_idx = keep.nonzero()[:, 0].to(src.device)
            state, active, choice = state.reorder(keep_idx), active[keep_idx], choice[keep_idx]
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
