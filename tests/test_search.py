"""The Transformer and the searches: learning, incremental decoding, beam search invariants."""
from __future__ import annotations

import math

import pytest
import torch

from helpers.models import TOY_SYMBOLS, greedy_reference, toy_pairs, transformer_config
from seq2seq.data.batching import collate, pad_source
from seq2seq.data.tokenizer import BOS, EOS
from seq2seq.generation.decoding import decode_ids
from seq2seq.generation.options import GenerationOptions
from seq2seq.generation.search import generate
from seq2seq.models.model import build_model


def test_tiny_transformer_learns_reversal(toy_model):
    pairs = toy_pairs(200, seed=123)
    src = pad_source([s for s, _ in pairs])
    hyps = generate(toy_model, src, GenerationOptions(strategy="greedy", nbest=1))
    exact = sum(h[0].tokens == t for h, (_, t) in zip(hyps, pairs)) / len(pairs)
    assert exact >= 0.95, f"only {exact:.0%} of reversals exact"


def test_incremental_decoding_matches_full_recomputation(toy_model):
    pairs = toy_pairs(6, seed=5)
    batch = collate([s for s, _ in pairs], [t for _, t in pairs])
    with torch.no_grad():
        full = toy_model.scores(batch.src, batch.prev_tokens).log_softmax(-1)
        state = toy_model.init_state(toy_model.encode(batch.src))
        for t in range(batch.prev_tokens.size(1)):
            logp, state, _ = toy_model.step(batch.prev_tokens[:, t], state)
            torch.testing.assert_close(logp, full[:, t], atol=1e-5, rtol=1e-5)


def test_beam_one_equals_greedy(toy_model):
    pairs = toy_pairs(40, seed=9, max_len=12)
    src = pad_source([s for s, _ in pairs])
    greedy = generate(toy_model, src, GenerationOptions(strategy="greedy", nbest=1))
    beam = generate(toy_model, src, GenerationOptions(strategy="beam", beam_size=1, nbest=1))
    for g, b in zip(greedy, beam):
        assert g[0].tokens == b[0].tokens
        assert g[0].logprob == pytest.approx(b[0].logprob, abs=1e-4)
    # and greedy equals the slow full-recomputation oracle
    for (s, _), g in zip(pairs[:8], greedy[:8]):
        assert g[0].tokens == greedy_reference(toy_model, s)


@pytest.mark.parametrize("beam_size,len_penalty", [(4, 1.0), (5, 0.0)])
def test_beam_scores_equal_forced_decoding(toy_model, beam_size, len_penalty):
    pairs = toy_pairs(12, seed=11)
    src = pad_source([s for s, _ in pairs])
    opts = GenerationOptions(beam_size=beam_size, nbest=beam_size, len_penalty=len_penalty)
    results = generate(toy_model, src, opts)
    for row, hyps in enumerate(results):
        assert len(hyps) == beam_size
        assert [h.score for h in hyps] == sorted([h.score for h in hyps], reverse=True)
        for h in hyps:
            prev = torch.tensor([[BOS] + h.tokens])
            target = torch.tensor(h.tokens + [EOS])
            with torch.no_grad():
                logp = toy_model.scores(src[row : row + 1], prev).log_softmax(-1)[0]
            forced = logp.gather(1, target[:, None]).sum().item()
            assert h.logprob == pytest.approx(forced, abs=1e-3)
            assert h.score == pytest.approx(h.logprob / (len(h.tokens) + 1) ** len_penalty, abs=1e-5)


@pytest.mark.parametrize("strategy,beam", [("beam", 5), ("greedy", 1)])
def test_sentence_alone_equals_sentence_in_padded_batch(toy_model, strategy, beam):
    pairs = toy_pairs(16, seed=21, min_len=1, max_len=14)
    srcs = [s for s, _ in pairs]
    opts = GenerationOptions(strategy=strategy, beam_size=beam)
    batched = generate(toy_model, pad_source(srcs), opts)
    for s, hyps in zip(srcs, batched):
        alone = generate(toy_model, pad_source([s]), opts)[0]
        assert alone[0].tokens == hyps[0].tokens
        assert alone[0].logprob == pytest.approx(hyps[0].logprob, abs=1e-4)


def test_length_limits_and_min_length(toy_model):
    src = pad_source([[4, 5, 6, 7, 8, 9]])
    short = generate(toy_model, src, GenerationOptions(max_len_a=0.0, max_len_b=2))[0][0]
    assert len(short.tokens) <= 2
    longer = generate(toy_model, src, GenerationOptions(min_len=9, max_len_a=0.0, max_len_b=12))[0][0]
    assert 9 <= len(longer.tokens) <= 12


def test_decode_ids_keeps_input_order_and_empty_lines(toy_model, caplog):
    pairs = toy_pairs(30, seed=3, min_len=1, max_len=12)
    srcs = [s for s, _ in pairs]
    srcs[4] = []
    srcs[10] = [5] * 500  # longer than max_positions: truncated with a warning
    results = decode_ids(toy_model, srcs, GenerationOptions(beam_size=3), batch_tokens=40,
                         device=torch.device("cpu"))
    assert len(results) == 30
    assert results[4][0].tokens == []
    assert "line 11: 500 subwords, truncated" in caplog.text
    for i, (s, hyps) in enumerate(zip(srcs, results)):
        if i in (4, 10):
            continue
        alone = generate(toy_model, pad_source([s]), GenerationOptions(beam_size=3))[0]
        assert hyps[0].tokens == alone[0].tokens


def test_sampling_is_seeded_and_respects_top_k(toy_model):
    src = pad_source([[4, 5, 6, 7]])
    opts = GenerationOptions(strategy="sampling", nbest=4, top_k=1, beam_size=1)
    draws = generate(toy_model, src, opts, generator=torch.Generator().manual_seed(0))[0]
    greedy = generate(toy_model, src, GenerationOptions(strategy="greedy"))[0][0]
    assert len(draws) == 4 and all(d.tokens == greedy.tokens for d in draws)  # top_k=1 is greedy
    opts = GenerationOptions(strategy="sampling", nbest=3, temperature=2.0, beam_size=1)
    a = generate(toy_model, src, opts, generator=torch.Generator().manual_seed(7))[0]
    b = generate(toy_model, src, opts, generator=torch.Generator().manual_seed(7))[0]
    assert [h.tokens for h in a] == [h.tokens for h in b]


def test_generation_options_reject_bad_values():
    with pytest.raises(ValueError, match="nbest=6 must be between 1 and generation.beam_size=5"):
        GenerationOptions(beam_size=5, nbest=6)
    with pytest.raises(ValueError, match="strategy must be beam, greedy, sampling or mbr"):
        GenerationOptions(strategy="topk")
    with pytest.raises(ValueError, match="mbr_utility=rouge: choose one of chrf, bleu, rougeL"):
        GenerationOptions(strategy="mbr", mbr_utility="rouge")
    with pytest.raises(ValueError, match="nbest=5 is more than generation.mbr_samples=4"):
        GenerationOptions(strategy="mbr", mbr_samples=4, nbest=5)
    with pytest.raises(ValueError, match="epsilon=1.0 must be in"):
        GenerationOptions(epsilon=1.0)


def test_fused_loss_matches_plain_cross_entropy():
    torch.manual_seed(0)
    model = build_model(transformer_config(dropout=0.0), 4 + TOY_SYMBOLS, 4 + TOY_SYMBOLS)
    model.output_layer.chunk = 7  # several chunks, one of them partial
    pairs = toy_pairs(9, seed=1)
    batch = collate([s for s, _ in pairs], [t for _, t in pairs])
    out = model(batch.src, batch.prev_tokens, batch.target, label_smoothing=0.1)
    loss, nll = out.loss, out.nll
    loss.backward()
    fused = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    scores = model.scores(batch.src, batch.prev_tokens)
    mask = batch.target.ne(0)
    ref = torch.nn.functional.cross_entropy(scores[mask], batch.target[mask], reduction="sum", label_smoothing=0.1)
    ref_nll = torch.nn.functional.cross_entropy(scores[mask], batch.target[mask], reduction="sum")
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert nll.item() == pytest.approx(ref_nll.item(), rel=1e-5)
    for g, p in zip(fused, model.parameters()):
        torch.testing.assert_close(g, p.grad, atol=1e-5, rtol=1e-4)
    assert math.isfinite(loss.item())
