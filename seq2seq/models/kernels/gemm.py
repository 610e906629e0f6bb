"""The models' matrix products on the faster of the two CPU kernels PyTorch ships, chosen on the host.

PyTorch's CPU build multiplies float32 matrices with MKL (`torch.mm`, what `nn.Linear` uses). MKL does
not use AVX-512 on AMD processors: on this project's 2-core AMD EPYC host oneDNN, also part of the
build, is about twice as fast on the Transformer's shapes; on an Intel Xeon with AVX-512 MKL is the
faster one (oneDNN 0.92x of it over the same products). So neither is a default: `linear`, `Linear`
and the three products below ask the process's KernelPlan, per product kind (forward, input
gradient, weight gradient) and size class, whether to take oneDNN's inner-product kernel.

The entry points configure it from `kernels.linear` (configure / calibrate below):
  - mkl: torch's kernels everywhere (the plan of a process that configured nothing);
  - onednn: oneDNN for every float32 CPU product of MIN_MACS multiply-adds or more;
  - auto: the model's own product shapes timed on both kernels at start-up (well under a second),
    the faster taken per class, the result kept in the cache folder per CPU model, flags, torch
    version and thread count (seq2seq.host).
oneDNN is used only for float32 CPU tensors with autocast off and `torch.backends.mkldnn` enabled;
anything else (CUDA, float64, bf16 autocast) takes torch's kernels. Before the first use the private
op is checked once against F.linear: missing, changed (another signature) or wrong, the plan falls
back to MKL with one warning. Results equal torch's up to float32 rounding (tests/test_gemm.py).

oneDNN compiles a kernel for every new shape and caches up to 1,024 (two caches: oneDNN's and
PyTorch's ideep wrapper), at ~1.5 MB each; batches of varying length make new shapes all the time,
so configure() lowers both capacities to `kernels.onednn_cache_capacity` (16: measured on the Multi30k
Transformer, 60 steps, peak memory 1,720 MiB with the defaults and 871 with 16, no slower). oneDNN
reads the two variables at its first use, so they are set there (a value the user set wins).
"""
from __future__ import annotations

import logging
import os
import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from seq2seq.host import fastest, measured

log = logging.getLogger(__name__)

MIN_MACS = 1_500_000  # kernels.linear=onednn: rows x inner x columns below it stay on MKL (its lower call overhead)
KINDS = ("forward", "input_grad", "weight_grad")
CHOICES = ("auto", "onednn", "mkl")
SIZE_LIMITS = (1 << 20, 1 << 23, 1 << 26)  # size classes by multiply-adds: < 1M, < 8M, < 64M, larger


def size_class(macs: int) -> int:
    return sum(macs >= limit for limit in SIZE_LIMITS)


@dataclass(frozen=True)
class KernelPlan:
    """Which (kind, size class) products run on oneDNN; `name` says how it was chosen (for the logs and metrics)."""

    name: str = "mkl"
    onednn: frozenset = field(default_factory=frozenset)  # of (kind, size class)
    min_macs: int = 0  # and at least this many multiply-adds

    def uses_onednn(self, kind: str, macs: int) -> bool:
        return macs >= self.min_macs and (kind, size_class(macs)) in self.onednn

    def summary(self) -> dict:
        return {"choice": self.name, "onednn": sorted(f"{k}/{c}" for k, c in self.onednn)}


ALL_ONEDNN = frozenset((k, c) for k in KINDS for c in range(len(SIZE_LIMITS) + 1))
_plan = KernelPlan()


def current_plan() -> KernelPlan:
    return _plan


def set_plan(plan: KernelPlan) -> KernelPlan:
    """Make plan the process's; returns the previous one (tests put it back)."""
    global _plan
    previous, _plan = _plan, plan
    return previous


def _op_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


_checked: bool | None = None


def onednn_works() -> bool:
    """Whether oneDNN's private inner product exists, takes the arguments used here and equals F.linear
    (checked once per process)."""
    global _checked
    if _checked is None:
        problem = None
        if not _op_available():
            problem = "this torch build has no torch.ops.mkldnn._linear_pointwise"
        else:
            try:
                g = torch.Generator().manual_seed(0)
                x, w, b = (torch.randn(*s, generator=g) for s in ((37, 48), (40, 48), (40,)))
                got = _inner_product(x, w, b)
                if got.shape != (37, 40) or not torch.allclose(got, F.linear(x, w, b), rtol=1e-4, atol=1e-4):
                    problem = "its result differs from torch.nn.functional.linear"
            except Exception as err:  # a changed signature of a private op
                problem = f"it failed ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        if problem:
            warnings.warn(f"oneDNN's inner product cannot be used ({problem}): matrix products stay on MKL",
                          RuntimeWarning, stacklevel=2)
        _checked = problem is None
    return _checked


def configure(choice: str, cache_capacity: int = 16, model: nn.Module | None = None, rows: tuple = (),
              cache_dir=None) -> dict:
    """Apply kernels.linear=auto|onednn|mkl for this process (the entry points call it before the model
    runs) and return what was chosen, for the logs and the run's metrics. auto calibrates on the model's
    product shapes at these row counts (see calibrate). Sets oneDNN's kernel cache capacities unless
    the user set them."""
    if choice not in CHOICES:
        raise ValueError(f"kernels.linear={choice}: expected one of {', '.join(CHOICES)}")
    if cache_capacity < 1:
        raise ValueError(f"kernels.onednn_cache_capacity={cache_capacity}: expected 1 or more")
    for variable in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        os.environ.setdefault(variable, str(cache_capacity))
    if choice == "mkl":
        set_plan(KernelPlan("mkl"))
    elif not onednn_works():
        set_plan(KernelPlan(f"mkl (oneDNN unusable; kernels.linear={choice})"))
    elif choice == "onednn":
        set_plan(KernelPlan("onednn", ALL_ONEDNN, MIN_MACS))
    else:
        if model is None or not rows:
            raise ValueError("kernels.linear=auto needs the model and the row counts to time")
        return calibrate(linear_shapes(model), list(rows), cache_dir)[1]
    return _plan.summary()


def measure_shapes(shapes: list[tuple[int, int]], rows: list[int], repeats: int = 3) -> dict:
    """Seconds of each product of x [r, inner] -> [r, columns] on both kernels: {"kind/class": [mkl, onednn]}."""
    totals: dict[str, list[float]] = {}
    with torch.no_grad():
        for inner, columns in sorted(set(shapes)):
            for r in rows:
                x, w, dy = torch.randn(r, inner), torch.randn(columns, inner), torch.randn(r, columns)
                macs = r * inner * columns
                pairs = {"forward": (lambda: x @ w.t(), lambda: _inner_product(x, w)),
                         "input_grad": (lambda: dy @ w, lambda: _inner_product(dy, w.t())),
                         "weight_grad": (lambda: dy.t() @ x, lambda: _weight_grad_onednn(dy, x))}
                for kind, (mkl, onednn) in pairs.items():
                    key = f"{kind}/{size_class(macs)}"
                    got = totals.setdefault(key, [0.0, 0.0])
                    got[0] += fastest(mkl, repeats)
                    got[1] += fastest(onednn, repeats)
    return totals


def plan_from(totals: dict, name: str = "auto") -> KernelPlan:
    """oneDNN for the classes where it measured faster; a class not measured follows the nearest measured
    class of its kind (none: MKL)."""
    chosen = set()
    for kind in KINDS:
        measured = {int(k.split("/")[1]): v for k, v in totals.items() if k.startswith(kind + "/")}
        for c in range(len(SIZE_LIMITS) + 1):
            if not measured:
                break
            nearest = min(measured, key=lambda m: (abs(m - c), m))
            mkl, onednn = measured[nearest]
            if onednn < mkl:
                chosen.add((kind, c))
    return KernelPlan(name, frozenset(chosen))


def calibrate(shapes: list[tuple[int, int]], rows: list[int], cache_dir=None) -> tuple[KernelPlan, dict]:
    """kernels.linear=auto: (the plan, a record for the logs and metrics) for a model's linear shapes
    (inner, columns) at these row counts, measured once per host (seq2seq.host) and kept in cache_dir."""
    start = time.perf_counter()
    totals, cached = measured(cache_dir, "kernels", {"shapes": sorted(set(shapes)), "rows": rows},
                              lambda: measure_shapes(shapes, rows, repeats=2))
    seconds = time.perf_counter() - start
    plan = plan_from(totals)
    set_plan(plan)
    mkl, onednn = sum(v[0] for v in totals.values()), sum(v[1] for v in totals.values())
    record = {**plan.summary(), "cached": cached, "seconds": round(seconds, 3),
              "onednn_over_mkl": round(mkl / max(onednn, 1e-12), 3),
              "auto_over_mkl": round(mkl / max(sum(min(v) for v in totals.values()), 1e-12), 3)}
    return plan, record


def linear_shapes(model: nn.Module) -> list[tuple[int, int]]:
    """(inner, columns) of every product a model sends through this module (its Linear layers and
    any module that declares `product_shapes`, as the output layers do)."""
    shapes = []
    for m in model.modules():
        if isinstance(m, Linear):
            shapes.append((m.in_features, m.out_features))
        shapes.extend(getattr(m, "product_shapes", lambda: [])())
    return shapes


def _inner_product(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """oneDNN's a [M, K] @ b [N, K]^T (+ bias [N]). a and b may be transposed views; any other
    layout (an expanded gradient such as that of .sum() has stride 0: oneDNN crawls) is copied."""
    return torch.ops.mkldnn._linear_pointwise(_dense(a), _dense(b), bias, "none", [], "")


def _weight_grad_onednn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [M, N]^T @ b [M, K] on oneDNN, the longer side as its "weight" operand (measured faster)."""
    return _inner_product(b.t(), a.t()).t() if a.size(1) > b.size(1) else _inner_product(a.t(), b.t())


def _dense(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_contiguous() or t.t().is_contiguous() else t.contiguous()


def _use_onednn(kind: str, macs: int, *tensors: torch.Tensor | None) -> bool:
    return (
        bool(_plan.onednn)
        and _plan.uses_onednn(kind, macs)
        and torch._C._get_mkldnn_enabled()
        and all(t is None or (t.dtype == torch.float32 and t.device.type == "cpu") for t in tensors)
        and not torch.is_autocast_enabled("cpu")
    )


def mm_nt(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [M, K] @ b [N, K]^T -> [M, N] (features times a weight matrix)."""
    if _use_onednn("forward", a.size(0) * a.size(1) * b.size(0), a, b):
        return _inner_product(a, b)
    return a @ b.t()


def mm_nn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [M, N] @ b [N, K] -> [M, K] (a gradient back through a weight matrix)."""
    if _use_onednn("input_grad", a.numel() * b.size(1), a, b):
        return _inner_product(a, b.t())
    return a @ b


def mm_tn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [M, N]^T @ b [M, K] -> [N, K] (a weight gradient: the sum over rows of outer products)."""
    if _use_onednn("weight_grad", a.numel() * b.size(1), a, b):
        return _weight_grad_onednn(a, b)
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
    if not _use_onednn("forward", x.numel() * weight.size(0), x, weight, bias):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        return _Linear.apply(x, weight, bias)
    return _inner_product(x.reshape(-1, x.size(-1)), weight, bias).view(*x.shape[:-1], weight.size(0))


class Linear(nn.Linear):
    """nn.Linear (same parameters, initialisation and state-dict keys) whose products go through `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
