"""Greedy decoding and ancestral sampling (temperature, top-k, top-p; nbest samples per input) through the
decoder seam; a row leaves the batch when it ends. A sentence's guide (a target prefix) forces its first
tokens, scored as the model scores them."""
from __future__ import annotations

import math

import torch

from seq2seq.data.tokenizer import BOS, EOS, PAD
from seq2seq.generation.controls import force_tokens, mask_scores, penalise
from seq2seq.generation.options import (GenerationOptions, Guide, Hypothesis, attention_report, forced_at,
                                        length_bounds, prefix_tensors, scored_hypothesis)


@torch.no_grad()
def sample(model, src: torch.Tensor, opts: GenerationOptions, need_attention: bool = False,
           generator: torch.Generator | None = None, guides: list[Guide] | None = None):
    """Greedy decoding (strategy=greedy) or ancestral sampling with temperature, top-k and top-p (nbest samples each)."""
    copies = opts.nbest if opts.strategy == "sampling" else 1
    batch = src.size(0)
    rows = torch.arange(batch, device=src.device).repeat_interleave(copies)
    least, most = length_bounds(src, opts, model.max_positions)
    prefix = prefix_tensors(guides, src.device)
    if prefix is not None:
        most = torch.maximum(most, prefix[1].to(most.device))  # a prefix longer than the limit is kept whole
    min_lens, limits = least[rows], most[rows]
    state = model.init_state(model.encode(src), attention_report(opts, need_attention)).reorder(rows)
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
        logp = mask_scores(logp, t, min_lens[active], limits[active] <= t)
        search = penalise(logp, history, opts, eos_logp)
        forced = forced_at(prefix, t, rows[active])
        if forced is not None:
            force_tokens(logp, search, forced)
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
                outputs[row] = scored_hypothesis(tokens[row], logprobs[row], opts.len_penalty, attention)
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
    return _per_sentence(outputs, src, copies)


def _per_sentence(outputs: list[Hypothesis], src: torch.Tensor, copies: int) -> list[list[Hypothesis]]:
    """Each sentence's copies best first, their attention cut to the sentence's source length."""
    results = []
    for sentence in range(src.size(0)):
        hyps = outputs[sentence * copies : (sentence + 1) * copies]
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
    if opts.epsilon > 0:  # epsilon sampling (Hewitt et al., 2022): never a token below epsilon (the best stays)
        probs = logits.softmax(dim=1)
        low = probs < opts.epsilon
        low.scatter_(1, probs.argmax(dim=1, keepdim=True), False)
        logits = logits.masked_fill(low, -math.inf)
    if opts.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=1, descending=True)
        cumulative = sorted_logits.softmax(dim=1).cumsum(dim=1)
        remove = cumulative - sorted_logits.softmax(dim=1) >= opts.top_p  # keep the smallest set reaching top_p
        sorted_logits = sorted_logits.masked_fill(remove, -math.inf)
        logits = torch.full_like(logits, -math.inf).scatter(1, order, sorted_logits)
    return torch.multinomial(logits.softmax(dim=1), 1, generator=generator)[:, 0]
