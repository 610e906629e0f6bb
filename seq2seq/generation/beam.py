"""Batched beam search through the decoder seam (EncoderDecoder.step and state.reorder): k hypotheses per
sentence, the 2k best candidates each step, a sentence finished when k of its hypotheses have ended or its
length limit is reached; finished sentences leave the batch. A sentence's guide forces its first tokens (a
target prefix, scored as the model scores them) and the phrases its output must contain
(seq2seq.generation.constraints: the candidates and the order in which they fill the beams)."""
from __future__ import annotations

import math

import torch

from seq2seq.data.tokenizer import BOS, EOS, PAD
from seq2seq.generation import constraints
from seq2seq.generation.controls import coverage_penalty, force_tokens, mask_scores, penalise
from seq2seq.generation.options import (GenerationOptions, Guide, Hypothesis, attention_report, forced_at,
                                        length_bounds, prefix_tensors, scored_hypothesis)


@torch.no_grad()
def beam_search(model, src: torch.Tensor, opts: GenerationOptions, need_attention: bool = False,
                guides: list[Guide] | None = None):
    # long: one loop over the steps whose state (scores, rows, history, coverage) changes together in one
    # place; tests/test_beam_exhaustive.py holds it against exhaustive search
    batch, k = src.size(0), opts.beam_size
    min_lens, limits = length_bounds(src, opts, model.max_positions)
    prefix = prefix_tensors(guides, src.device)
    if prefix is not None:
        limits = torch.maximum(limits, prefix[1].to(limits.device))  # a prefix longer than the limit is kept whole
    beta = opts.coverage_penalty
    enc = model.encode(src)
    rows = torch.arange(batch, device=src.device).repeat_interleave(k)
    state = model.init_state(enc, attention_report(opts, need_attention or beta > 0)).reorder(rows)  # k hypotheses per sentence
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
    phrases = constraints.Constraints.of([g.constraints for g in guides] if guides else None,
                                         opts.constraints_ordered, src.device)
    progress = phrases.start(rows) if phrases is not None else None
    for t in range(int(limits.max()) + 1):
        n = active.numel()
        logp, state, attn = model.step(last, state)
        force = (limits[active] <= t).repeat_interleave(k)
        eos_logp = logp[:, EOS].clone() if opts.no_repeat_ngram_size > 0 else None
        logp = mask_scores(logp, t, min_lens[active].repeat_interleave(k), force)
        search = penalise(logp, history, opts, eos_logp)
        forced = forced_at(prefix, t, active.repeat_interleave(k))
        if forced is not None:
            force_tokens(logp, search, forced)
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
        if phrases is not None:
            cand = constraints.expand(constraints.Candidates(top_scores, top_true, beam_of, token), phrases,
                                      progress, scores, true_scores, search, logp, active,
                                      limits[active].le(t), EOS)
            top_scores, top_true, beam_of, token = cand.score, cand.true, cand.beam, cand.token
        is_eos = token.eq(EOS) & top_scores.gt(-math.inf)
        width = top_scores.size(1)

        # Hypotheses ending in EOS among the k best candidates are finished.
        done = torch.zeros(n, dtype=torch.bool)
        eos_rows = is_eos[:, :k].nonzero().tolist()
        if eos_rows:
            true_cpu, beam_cpu = top_true.tolist(), beam_of.tolist()
            penalties = None
            if beta > 0:
                penalties = coverage_penalty(coverage, real[active].repeat_interleave(k, dim=0), beta).tolist()
            for i, j in eos_rows:
                sentence = int(active[i])
                if len(finished[sentence]) < k:
                    row = i * k + beam_cpu[i][j]
                    attention = attn_history[row].cpu() if need_attention else None
                    hyp = scored_hypothesis(history[row].tolist(), true_cpu[i][j], opts.len_penalty, attention,
                                            penalties[row] if penalties is not None else 0.0)
                    if phrases is not None:
                        hyp.unmet = phrases.unmet(cand.progress.index_select(
                            torch.tensor([i * width + j], device=src.device)), active[i : i + 1])[0]
                    finished[sentence].append(hyp)
        counts = torch.tensor([len(finished[int(s)]) for s in active.tolist()])
        done = counts.ge(k) | limits[active].le(t).cpu()
        if bool(done.all()):
            break

        # The k best candidates that do not end here continue.
        order = (torch.arange(width, device=src.device) + is_eos.long() * width).argsort(dim=1)[:, :k]
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
        if phrases is not None:
            picked = (torch.arange(n, device=src.device)[:, None] * width + order)[keep].view(-1)
            progress = cand.progress.index_select(picked)
        last, scores, active = next_tokens[keep].view(-1), next_scores[keep], active[keep]
        true_scores = next_true[keep] if opts.penalised else scores
    results = []
    for sentence, hyps in enumerate(finished):
        hyps.sort(key=lambda h: (not h.unmet, h.score), reverse=True)  # every phrase met first
        src_len = int(src[sentence].ne(PAD).sum())
        for h in hyps:
            if h.attention is not None:
                h.attention = h.attention[:, :src_len]
        results.append(hyps[: opts.nbest])
    return results
