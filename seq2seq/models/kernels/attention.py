"""Scaled dot-product attention on the faster of two CPU routes, chosen on the host (kernels.attention).

torch's fused CPU attention (F.scaled_dot_product_attention: a flash-attention kernel that walks the keys
in blocks and never holds the [B, H, T, S] scores) pays a fixed cost per block and per row that long
documents amortise and sentences do not. The explicit route, two batched products around a softmax, holds
the scores and has no such cost. Measured on a 2-core AMD EPYC (4 heads of 64, 2,048 tokens a batch,
bench/attention_kernels.py, bench/README.md): for training (forward and backward) explicit is 1.5-2.3x
faster at 16-32 keys, 1.1-1.3x at 64, 0.9-1.07x at 128 and 0.7x from 256; for a beam-search step (5 queries
of a sentence against its source) 2.3-6x at 16-64 keys and even from 256. On the Multi30k Transformer's
training step that is +2-7% at two threads and level at one (the per-call gain is smaller there). Where the
crossover lies depends on the host and its threads, so it is measured:
  - fused: torch's kernel always (what a process that configured nothing uses);
  - explicit: the products and softmax always (memory: the scores, B x H x T x S floats);
  - auto: the model's own heads and head size timed on both routes at start-up (0.3-1 s),
    for training and for decoding steps, at key lengths from 16 up (doubling, at most 512) until explicit
    is no longer at least 5% faster; explicit up to the last length where it was. The result is kept in
    the cache folder per CPU model, flags, torch version and thread count (seq2seq.host).
The choice applies to CPU tensors; CUDA keeps the fused kernel. Under bf16 autocast on a CPU either route
runs in float32 between the bf16 projections: torch's fused CPU attention is several times slower in
bf16 than in float32 (its backward most: 34 against 7.7 ms a call on the Multi30k Transformer).
The two routes agree up to float32 rounding (tests/test_attention_kernels.py).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from seq2seq.host import fastest, measured

CHOICES = ("auto", "fused", "explicit")
LENGTHS = (16, 32, 64, 128, 256, 512)  # key lengths timed by auto
EVERY_LENGTH = 1 << 30
STEP_QUERIES, STEP_ROWS = 5, 64  # a decoding step as auto times it: 5 hypotheses of 64 sentences
MARGIN = 0.05  # explicit must be at least 5% faster at a length to be taken there


@dataclass(frozen=True)
class AttentionPlan:
    """Explicit attention on a CPU while the keys are at most training_up_to (with gradients) or
    decoding_up_to (without) long; fused otherwise. `name` says how it was chosen."""

    name: str = "fused"
    training_up_to: int = 0
    decoding_up_to: int = 0

    def explicit(self, keys: int, grad: bool) -> bool:
        return keys <= (self.training_up_to if grad else self.decoding_up_to)

    def summary(self) -> dict:
        def say(n):
            return "always" if n >= EVERY_LENGTH else "never" if n <= 0 else f"up to {n} keys"
        return {"choice": self.name, "explicit": {"training": say(self.training_up_to),
                                                  "decoding": say(self.decoding_up_to)}}


_plan = AttentionPlan()


def current_plan() -> AttentionPlan:
    return _plan


def set_plan(plan: AttentionPlan) -> AttentionPlan:
    """Make plan the process's; returns the previous one (tests put it back)."""
    global _plan
    previous, _plan = _plan, plan
    return previous


def explicit(q, k, v, mask=None, dropout: float = 0.0, causal: bool = False):
    """softmax(q k^T / sqrt(dh)) v written out: (output [B,H,T,dh], weights [B,H,T,S]), exactly zero where
    masked. mask [B,1,1,S] or [B,1,T,S], True where allowed; causal: query i sees keys up to S - T + i."""
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(1.0 / math.sqrt(q.size(-1)))
    if causal:
        t, s = scores.shape[-2:]
        scores.masked_fill_(torch.ones(t, s, dtype=torch.bool, device=q.device).triu_(s - t + 1), float("-inf"))
    if mask is not None:
        scores.masked_fill_(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    dropped = F.dropout(weights, dropout, training=True) if dropout > 0 else weights
    return torch.matmul(dropped, v), weights


def attend(q, k, v, mask=None, dropout: float = 0.0, need_weights: bool = False, causal: bool = False):
    """Attention of q [B,H,T,dh] over k, v [B,H,S,dh]; mask [B,1,1,S] or [B,1,T,S], True where allowed.
    Returns (output [B,H,T,dh], weights [B,H,T,S] when need_weights, else None), on the process's plan."""
    if need_weights:
        return explicit(q, k, v, mask, dropout, causal)
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal), None
    if q.dtype == torch.bfloat16:  # float32 between the bf16 projections (see the module's docstring)
        with torch.autocast("cpu", enabled=False):
            out, _ = attend(q.float(), k.float(), v.float(), mask, dropout, False, causal)
        return out.to(q.dtype), None
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if _plan.explicit(k.size(-2), grad):
        return explicit(q, k, v, mask, dropout, causal)[0], None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal), None


def attention_shapes(model: nn.Module) -> list[tuple[int, int]]:
    """(heads, head size) of every attention of a model that goes through `attend` (the modules that
    declare `attention_shape`, as the Transformer's self- and multi-head attentions do)."""
    return sorted({m.attention_shape() for m in model.modules() if hasattr(m, "attention_shape")})


def timing_cases(mode: str, heads: int, size: int, length: int, tokens: int, g: torch.Generator):
    """(fused, explicit) functions of one case: training = forward and backward of masked self-attention over
    `tokens` tokens (a fifth of every fourth sentence padding); decoding = a step, STEP_QUERIES queries of
    STEP_ROWS sentences against `length` keys, without gradients."""
    if mode == "training":
        rows = max(tokens // length, 1)
        q, k, v = (torch.randn(rows, heads, length, size, generator=g).requires_grad_() for _ in range(3))
        mask = torch.ones(rows, 1, 1, length, dtype=torch.bool)
        mask[::4, ..., length - length // 5 :] = False
        grad = torch.randn(rows, heads, length, size, generator=g)
        return (lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask).backward(grad),
                lambda: explicit(q, k, v, mask)[0].backward(grad))
    q = torch.randn(STEP_ROWS, heads, STEP_QUERIES, size, generator=g)
    k, v = (torch.randn(STEP_ROWS, heads, length, size, generator=g) for _ in range(2))
    mask = torch.ones(STEP_ROWS, 1, 1, length, dtype=torch.bool)
    return (torch.no_grad()(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask)),
            torch.no_grad()(lambda: explicit(q, k, v, mask)))


def explicit_wins(seconds) -> bool:
    """[fused, explicit] seconds: explicit by at least MARGIN (a tie at the crossover is noise: fused)."""
    fused, written_out = seconds
    return written_out * (1.0 + MARGIN) < fused


def measure(shapes: list[tuple[int, int]], tokens: int, repeats: int = 2) -> dict:
    """Seconds [fused, explicit] per key length, summed over the shapes: {"training": {length: [..]},
    "decoding": {..}} (see timing_cases). Lengths are timed from the shortest up to the first where explicit
    did not win: longer ones are left to fused without timing them."""
    g = torch.Generator().manual_seed(0)
    totals = {"training": {}, "decoding": {}}
    for mode, seconds in totals.items():
        for length in LENGTHS:
            pair = [0.0, 0.0]
            for heads, size in shapes:
                fused, written_out = timing_cases(mode, heads, size, length, tokens, g)
                pair[0] += fastest(fused, repeats)
                pair[1] += fastest(written_out, repeats)
            seconds[length] = pair
            if not explicit_wins(pair):
                break
    return totals


def longest_faster(seconds: dict) -> int:
    """The longest measured key length up to which explicit won at every length (0: the shortest lost)."""
    up_to = 0
    for length in sorted(seconds, key=int):
        if not explicit_wins(seconds[length]):
            break
        up_to = int(length)
    return up_to


def plan_from(totals: dict, name: str = "auto") -> AttentionPlan:
    return AttentionPlan(name, longest_faster(totals.get("training", {})), longest_faster(totals.get("decoding", {})))


def configure(choice: str, model: nn.Module | None = None, tokens: int = 2048, cache_dir=None) -> dict:
    """Apply kernels.attention=auto|fused|explicit for this process (the entry points call it before the model
    runs) and return what was chosen, for the logs and the run's metrics. auto times the model's attention
    shapes (attention_shapes) over `tokens` tokens a batch, once per host (seq2seq.host)."""
    if choice not in CHOICES:
        raise ValueError(f"kernels.attention={choice}: expected one of {', '.join(CHOICES)}")
    if choice != "auto":
        up_to = EVERY_LENGTH if choice == "explicit" else 0
        set_plan(AttentionPlan(choice, up_to, up_to))
        return _plan.summary()
    shapes = attention_shapes(model) if model is not None else []
    if not shapes:  # no attention of this kind in the model: nothing to choose
        set_plan(AttentionPlan("auto (no multi-head attention to time)"))
        return _plan.summary()
    start = time.perf_counter()
    totals, cached = measured(cache_dir, "attention", {"shapes": shapes, "tokens": tokens},
                              lambda: measure(shapes, tokens))
    set_plan(plan_from(totals))
    return {**_plan.summary(), "cached": cached, "seconds": round(time.perf_counter() - start, 3)}
