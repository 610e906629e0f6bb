"""The models' matrix products on the faster of the two CPU kernels PyTorch ships.

PyTorch's CPU build multiplies float32 matrices with MKL, which does not use AVX-512 on AMD
processors: on this project's 2-core AMD EPYC host `torch.mm` reaches ~200 GFLOP/s where
oneDNN, also part of the build, reaches ~400 on the Transformer's shapes (bench/README.md).
`linear` and the three products below run on oneDNN's inner-product kernel when every
tensor is a float32 CPU tensor, oneDNN is enabled (`torch.backends.mkldnn.flags(enabled=False)`
turns it off) and autocast is off; anything else (CUDA, float64, bf16 autocast) takes
torch's own kernels. Results equal torch's up to float32 rounding (tests/test_gemm.py).

oneDNN costs ~10 microseconds more per call than MKL, so products of fewer than MIN_MACS
multiply-adds (a decoding step of a few hypotheses) stay on MKL.

oneDNN compiles a kernel for every new shape and caches up to 1,024 of them (two caches: oneDNN's
and PyTorch's ideep wrapper), at ~1.5 MB each. Batches of varying length make new shapes all
the time, so with the defaults a training run's memory grows towards ~1.5 GB; this module lowers both
capacities to CACHE_CAPACITY (the variables are read when oneDNN first runs, so they are set at
import; a value the user set wins). Measured on the Multi30k Transformer, 60 steps: peak memory
1,720 MiB with the defaults, 871 with 16 (MKL: 849), and no slower (recompiling a kernel costs
~1 ms); the pointer-generator recipe trains as fast (60 steps: 1,700 tokens/s against 1,630).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

MIN_MACS = 1_500_000  # rows x inner x columns; below it MKL's lower call overhead wins (measured)
CACHE_CAPACITY = 16  # compiled oneDNN kernels kept (see above)

for _variable in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
    os.environ.setdefault(_variable, str(CACHE_CAPACITY))

_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _inner_product(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """oneDNN's a [M, K] @ b [N, K]^T (+ bias [N]). a and b may be transposed views; any other
    layout (an expanded gradient such as that of .sum() has stride 0: oneDNN crawls) is copied."""
    return torch.ops.mkldnn._linear_pointwise(_dense(a), _dense(b), bias, "none", [], "")


def _dense(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_contiguous() or t.t().is_contiguous() else t.contiguous()


def _use_onednn(macs: int, *tensors: torch.Tensor | None) -> bool:
    return (
        _ONEDNN
        and macs >= MIN_MACS
        and torch._C._get_mkldnn_enabled()
        and all(t is None or (t.dtype == torch.float32 and t.device.type == "cpu") for t in tensors)
        and not torch.is_autocast_enabled("cpu")
    )


def mm_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [M, K] @ b [N, K]^T -> [M, N] (features times a weight matrix)."""
    if _use_onednn(a.size(0) * a.size(1) * b.size(0), a, b):
        return _inner_product(a, b)
    return a @ b.t()


def mm_nn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [M, N] @ b [N, K] -> [M, K] (a gradient back through a weight matrix)."""
    if _use_onednn(a.numel() * b.size(1), a, b):
        return _inner_product(a, b.t())
    return a @ b


def mm_tn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [M, N]^T @ b [M, K] -> [N, K] (a weight gradient: the sum over rows of outer products)."""
    n, k = a.size(1), b.size(1)
    if _use_onednn(a.numel() * k, a, b):
        # oneDNN is fastest with the longer side as the "weight" operand (measured both ways)
        return _inner_product(b.t(), a.t()).t() if n > k else _inner_product(a.t(), b.t())
    return a.t() @ b


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        x2 = _dense(x.reshape(-1, x.size(-1)))  # copied at most once, here, for both products that read it
        ctx.save_for_backward(x2, weight)
        ctx.has_bias, ctx.input_shape = bias is not None, x.shape
        return _inner_product(x2, weight, bias).view(*x.shape[:-1], weight.size(0))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x2, weight = ctx.saved_tensors
        grad2 = grad.reshape(-1, grad.size(-1))
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = mm_nn(grad2, weight).view(ctx.input_shape)
        if ctx.needs_input_grad[1]:
            grad_weight = mm_tn(grad2, x2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad2.sum(0)
        return grad_x, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """torch.nn.functional.linear (x [..., K], weight [N, K], bias [N]) on oneDNN where it is faster."""
    if not _use_onednn(x.numel() * weight.size(0), x, weight, bias):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        return _Linear.apply(x, weight, bias)
    return _inner_product(x.reshape(-1, x.size(-1)), weight, bias).view(*x.shape[:-1], weight.size(0))


class Linear(nn.Linear):
    """nn.Linear (same parameters, initialisation and state-dict keys) whose products go through `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
