"""kernels.attention (seq2seq/models/kernels/attention.py): the written-out attention against torch's fused kernel,
the plan's routing by key length and gradient mode, auto's choice from a measurement and its cache."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from helpers.corpora import tiny_train_overrides
from helpers.models import toy_pairs, transformer_config
from seq2seq.data.batching import collate, pad_source
from seq2seq.generation.options import GenerationOptions
from seq2seq.generation.search import generate
from seq2seq.models.kernels import attention as kernels
from seq2seq.models.model import build_model


@pytest.fixture(autouse=True)
def keep_plan():
    previous = kernels.current_plan()
    yield
    kernels.set_plan(previous)


def _qkv(rows, heads, queries, keys, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(rows, heads, queries, size, generator=g, dtype=torch.float64)
    k, v = (torch.randn(rows, heads, keys, size, generator=g, dtype=torch.float64) for _ in range(2))
    return q, k, v


@pytest.mark.parametrize("case", ["padding", "causal", "cached step", "per-query mask"])
def test_explicit_attention_equals_torchs_in_values_and_gradients(case):
    q, k, v = _qkv(3, 2, 7 if case != "cached step" else 2, 7, 8)
    mask, causal = None, False
    if case == "padding":
        mask = torch.ones(3, 1, 1, 7, dtype=torch.bool)
        mask[1, ..., 4:] = False
    elif case == "per-query mask":
        mask = torch.rand(3, 1, 7, 7, generator=torch.Generator().manual_seed(1)) > 0.3
        mask[..., 0] = True  # every query sees a key
    else:
        causal = True  # the cached step: 2 new queries see every earlier key and each other causally
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ours, weights = kernels.explicit(*leaves, mask, causal=causal)
    ours.backward(torch.ones_like(ours))
    theirs_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    if causal:  # torch's is_causal aligns to the top left; the decoder's cached step needs the bottom right
        t_, s_ = q.size(-2), k.size(-2)
        mask = torch.ones(t_, s_, dtype=torch.bool).tril(s_ - t_)
    theirs = F.scaled_dot_product_attention(*theirs_leaves, attn_mask=mask)
    theirs.backward(torch.ones_like(theirs))
    torch.testing.assert_close(ours, theirs)
    for a, b in zip(leaves, theirs_leaves):
        torch.testing.assert_close(a.grad, b.grad)
    if mask is not None:
        assert (weights.masked_select(~mask.expand_as(weights)) == 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1], dtype=weights.dtype))


def test_the_plan_routes_by_key_length_and_gradient_mode(monkeypatch):
    fused = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(kernels.F, "scaled_dot_product_attention", lambda *a, **k: fused.append(1) or real(*a, **k))
    kernels.set_plan(kernels.AttentionPlan("auto", training_up_to=32, decoding_up_to=128))

    def run(keys, grad):
        q, k, v = (t.float().requires_grad_(grad) for t in _qkv(2, 2, 3, keys, 8))
        fused.clear()
        out, weights = kernels.attend(q, k, v)
        assert weights is None and out.shape == (2, 2, 3, 8)
        return len(fused)

    assert run(32, grad=True) == 0 and run(33, grad=True) == 1  # training: explicit up to 32 keys
    assert run(128, grad=False) == 0 and run(129, grad=False) == 1  # decoding: up to 128
    with torch.no_grad():
        assert run(64, grad=True) == 0  # no graph is built: the decoding limit
    kernels.set_plan(kernels.AttentionPlan("fused"))
    assert run(4, grad=True) == 1 and run(4, grad=False) == 1


def test_auto_takes_explicit_up_to_the_first_length_where_it_lost():
    seconds = {"16": [2.0, 1.0], "32": [2.0, 1.5], "64": [1.0, 1.1], "128": [3.0, 1.0]}  # [fused, explicit]
    assert kernels.longest_faster(seconds) == 32  # 128 won again, but after a loss: not taken
    assert kernels.longest_faster({"16": [1.0, 1.2]}) == 0 and kernels.longest_faster({}) == 0
    plan = kernels.plan_from({"training": seconds, "decoding": {"16": [2.0, 1.0], "512": [2.0, 1.0]}})
    assert (plan.training_up_to, plan.decoding_up_to) == (32, 512)
    assert plan.summary() == {"choice": "auto", "explicit": {"training": "up to 32 keys", "decoding": "up to 512 keys"}}
    assert kernels.plan_from({"training": {"16": [1.0, 2.0]}}).summary()["explicit"] == {"training": "never",
                                                                                       "decoding": "never"}


def test_auto_stops_timing_at_the_first_length_where_explicit_did_not_win(monkeypatch):
    # seconds (fused, explicit) by (mode, length), as a host might measure them
    table = {("training", 16): (2.0, 1.0), ("training", 32): (1.0, 0.99), ("training", 64): (3.0, 1.0),
             ("decoding", 16): (2.0, 1.0), ("decoding", 32): (2.0, 1.0), ("decoding", 64): (2.0, 1.0)}
    monkeypatch.setattr(kernels, "LENGTHS", (16, 32, 64))
    monkeypatch.setattr(kernels, "timing_cases", lambda mode, h, s, length, *a: ((mode, length, 0), (mode, length, 1)))
    monkeypatch.setattr(kernels, "fastest", lambda case, repeats: table[case[:2]][case[2]])
    totals = kernels.measure([(4, 64)], tokens=2048)
    assert list(totals["training"]) == [16, 32]  # 32: explicit within the 5% margin, so 64 is not timed
    assert list(totals["decoding"]) == [16, 32, 64]
    plan = kernels.plan_from(totals)
    assert (plan.training_up_to, plan.decoding_up_to) == (16, 64)


def test_auto_measures_the_models_attention_once_per_host_and_keeps_it(tmp_path, monkeypatch):
    model = build_model(transformer_config(layers=1, dim=32, heads=2, ffn=64), 50, 50)
    assert kernels.attention_shapes(model) == [(2, 16)]  # self- and cross-attention: one shape
    timed = []
    monkeypatch.setattr(kernels, "LENGTHS", (8, 16))
    real = kernels.measure
    monkeypatch.setattr(kernels, "measure", lambda *a, **k: timed.append(a) or real(*a, **k))
    first = kernels.configure("auto", model, tokens=64, cache_dir=tmp_path)
    second = kernels.configure("auto", model, tokens=64, cache_dir=tmp_path)
    assert len(timed) == 1 and timed[0][0] == [(2, 16)] and timed[0][1] == 64
    assert first["cached"] is False and second["cached"] is True and first["explicit"] == second["explicit"]
    (cached,) = (tmp_path / "host").glob("attention-*.json")
    result = json.loads(cached.read_text())["result"]
    assert set(result) == {"training", "decoding"} and "8" in result["training"] and set(result["training"]) <= {"8", "16"}
    assert all(len(pair) == 2 and min(pair) > 0 for pair in result["training"].values())
    kernels.configure("auto", model, tokens=128, cache_dir=tmp_path)  # another batch size: measured anew
    assert len(timed) == 2


def test_fixed_choices_a_model_without_attention_and_a_bad_choice():
    assert kernels.configure("explicit")["explicit"] == {"training": "always", "decoding": "always"}
    assert kernels.current_plan().explicit(10**6, grad=True)
    assert kernels.configure("fused")["explicit"] == {"training": "never", "decoding": "never"}
    record = kernels.configure("auto", torch.nn.Linear(2, 2))
    assert record["choice"] == "auto (no multi-head attention to time)" and not kernels.current_plan().explicit(1, True)
    with pytest.raises(ValueError, match="kernels.attention=flash: expected one of auto, fused, explicit"):
        kernels.configure("flash")


def _loss_and_grads(model, batch):
    model.zero_grad()
    out = model(batch.src, batch.prev_tokens, batch.target, label_smoothing=0.1)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_a_transformer_trains_and_decodes_alike_on_both_routes(toy_model):
    torch.manual_seed(0)
    model = build_model(transformer_config(layers=2, dim=32, heads=2, ffn=64), 20, 20)
    pairs = toy_pairs(12, seed=3)
    batch = collate([s for s, _ in pairs], [t for _, t in pairs])
    results = {}
    for choice in ("fused", "explicit"):
        kernels.configure(choice)
        results[choice] = _loss_and_grads(model, batch)
    torch.testing.assert_close(results["fused"][0], results["explicit"][0], rtol=1e-5, atol=1e-5)
    for name, grad in results["fused"][1].items():
        torch.testing.assert_close(results["explicit"][1][name], grad, rtol=1e-4, atol=1e-5, msg=name)

    sources = pad_source([s for s, _ in toy_pairs(8, seed=5)])
    opts = GenerationOptions(beam_size=4, nbest=2, max_len_a=1.0, max_len_b=3)
    decoded = {}
    for choice in ("fused", "explicit"):
        kernels.configure(choice)
        with torch.no_grad():
            decoded[choice] = generate(toy_model, sources, opts)
    for a, b in zip(decoded["fused"], decoded["explicit"]):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)


def test_under_bf16_autocast_either_route_runs_in_float32_and_returns_bf16():
    q, k, v = (t.to(torch.bfloat16) for t in _qkv(2, 2, 5, 5, 8))
    mask = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    mask[0, ..., 3:] = False
    want = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
    for choice in ("fused", "explicit"):
        kernels.configure(choice)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, _ = kernels.attend(q, k, v, mask)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), want, rtol=0, atol=1e-2)


def test_training_takes_kernels_attention_and_records_both_kernel_choices(corpus, tmp_path):
    from helpers.commands import compose
    from seq2seq.train import train

    run = tmp_path / "run"
    overrides = [a for a in tiny_train_overrides(corpus, run, steps=2) if not a.startswith("kernels.attention")]
    summary = train(compose("train", *overrides, "kernels.attention=explicit", "trainer.valid_every=1000"), run)
    kernels_record = summary["setup"]["kernels"]
    assert summary["step"] == 2 and kernels_record["attention"]["explicit"]["training"] == "always"
    assert set(kernels_record) == {"linear", "attention"} and "choice" in kernels_record["linear"]
    assert kernels.current_plan().name == "explicit"
