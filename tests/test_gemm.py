"""The oneDNN matrix products (seq2seq/models/kernels/gemm.py) against float64 references, and when they are used."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from seq2seq.models.kernels import gemm
from seq2seq.models.kernels.gemm import Linear, linear, mm_nn, mm_nt, mm_tn
from seq2seq.models.model import DecoderOut, OutputSizes
from seq2seq.models.output import OutputLayer, log_normaliser, smoothed_nll

needs_onednn = pytest.mark.skipif(not gemm._op_available(), reason="this torch build has no oneDNN inner product")


@pytest.fixture(autouse=True)
def onednn_plan():
    """These tests check the oneDNN route: kernels.linear=onednn (a process's plan is MKL until configured)."""
    previous = gemm.set_plan(gemm.KernelPlan("onednn", gemm.ALL_ONEDNN, gemm.MIN_MACS))
    yield
    gemm.set_plan(previous)


def close_to_float64(got: torch.Tensor, want: torch.Tensor) -> None:
    """float32 rounding only: relative to the largest value, as a matrix product's error grows with it."""
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert (got.double() - want).abs().max() <= 1e-5 * want.abs().max() + 1e-6


@pytest.fixture
def count_onednn(monkeypatch):
    """Counts the calls that reach oneDNN."""
    calls = []
    real = gemm._inner_product
    monkeypatch.setattr(gemm, "_inner_product", lambda *a: calls.append(1) or real(*a))
    return calls


@needs_onednn
@pytest.mark.parametrize("rows, inner, columns", [(300, 64, 160), (300, 160, 64), (200, 96, 96)])
def test_the_three_products_equal_float64(rows, inner, columns, count_onednn):
    torch.manual_seed(0)
    a, b = torch.randn(rows, inner), torch.randn(columns, inner)
    close_to_float64(mm_nt(a, b), a.double() @ b.double().t())
    g = torch.randn(rows, columns)
    close_to_float64(mm_nn(g, b), g.double() @ b.double())
    close_to_float64(mm_tn(g, a), g.double().t() @ a.double())  # both orientations: columns > or <= inner
    assert len(count_onednn) == 3


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(7, 40, 64), (300, 64), (5, 3, 20, 64)])
def test_linear_values_and_gradients_equal_float64(shape, bias, count_onednn):
    torch.manual_seed(0)
    layer = Linear(64, 96, bias=bias)
    x = torch.randn(*shape, requires_grad=True)
    y = layer(x)
    grad = torch.randn_like(y)
    y.backward(grad)
    assert count_onednn, "the product did not go through oneDNN"

    ref_layer = torch.nn.Linear(64, 96, bias=bias).double()
    ref_layer.load_state_dict(layer.state_dict())
    x64 = x.detach().double().requires_grad_()
    y64 = ref_layer(x64)
    y64.backward(grad.double())
    close_to_float64(y, y64)
    close_to_float64(x.grad, x64.grad)
    close_to_float64(layer.weight.grad, ref_layer.weight.grad)
    if bias:
        close_to_float64(layer.bias.grad, ref_layer.bias.grad)


@needs_onednn
def test_a_frozen_input_or_weight_gets_no_gradient_and_no_grad_mode_builds_no_graph():
    layer = Linear(64, 200)
    x = torch.randn(100, 64)  # an input that needs no gradient (the first layer's embeddings may be frozen)
    layer(x).sum().backward()
    assert x.grad is None and layer.weight.grad is not None
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    x.requires_grad_()
    layer(x).sum().backward()
    assert x.grad is not None and layer.weight.grad.abs().sum() > 0
    with torch.no_grad():
        assert layer(x).grad_fn is None


def test_small_products_other_dtypes_and_the_off_switch_take_torchs_kernels(count_onednn):
    layer = Linear(64, 64)
    small = torch.randn(2, 64)  # 2 x 64 x 64 multiply-adds < MIN_MACS: a decoding step of two hypotheses
    torch.testing.assert_close(layer(small), F.linear(small, layer.weight, layer.bias), rtol=0, atol=0)
    layer64 = Linear(64, 200).double()
    x64 = torch.randn(300, 64, dtype=torch.float64)
    torch.testing.assert_close(layer64(x64), F.linear(x64, layer64.weight, layer64.bias), rtol=0, atol=0)
    big = torch.randn(300, 64)
    with torch.backends.mkldnn.flags(enabled=False):
        torch.testing.assert_close(layer(big), F.linear(big, layer.weight, layer.bias), rtol=0, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(big).dtype == torch.bfloat16
    assert not count_onednn
    assert linear(torch.randn(0, 64), layer.weight, layer.bias).shape == (0, 64)


def test_linear_keeps_nn_linear_parameters_and_state_dict_keys():
    torch.manual_seed(0)
    ours = Linear(8, 4)
    torch.manual_seed(0)
    theirs = torch.nn.Linear(8, 4)
    assert isinstance(ours, torch.nn.Linear) and list(ours.state_dict()) == ["weight", "bias"]
    torch.testing.assert_close(ours.weight, theirs.weight, rtol=0, atol=0)


@needs_onednn
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_fused_output_loss_and_gradients_equal_float64_autograd(smoothing, count_onednn):
    """The chunked loss with its products on oneDNN (several chunks, a ragged last one) against
    autograd through log_softmax in float64."""
    torch.manual_seed(0)
    layer = OutputLayer(OutputSizes(64, 64, 64, 300, True), chunk=128)
    features = torch.randn(350, 64, requires_grad=True)
    target = torch.randint(0, 300, (350,))
    loss, nll = layer.loss(DecoderOut(features), None, target, smoothing)
    loss.backward()
    assert count_onednn

    f64 = features.detach().double().requires_grad_()
    w64 = layer.weight.detach().double().requires_grad_()
    ref_loss, ref_nll = smoothed_nll(torch.log_softmax(f64 @ w64.t(), dim=-1), target, smoothing)
    ref_loss.backward()
    torch.testing.assert_close(loss.double(), ref_loss.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(nll.double(), ref_nll, rtol=1e-5, atol=0)
    close_to_float64(features.grad, f64.grad)
    close_to_float64(layer.weight.grad, w64.grad)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_fused_output_loss_keeps_targets_with_vanishing_probability_exact(precision):
    """The loss takes log-normalisers from the softmax at the target (lse = x_t - log p_t); rows whose
    target probability underflows (here 100-400 nats below the best word) take a logsumexp instead,
    so their loss is finite and equals float64 autograd, as do the gradients of every row."""
    torch.manual_seed(0)
    layer = OutputLayer(OutputSizes(16, 16, 16, 50, True), chunk=8)
    features = torch.randn(20, 16)
    target = torch.randint(0, 50, (20,))
    with torch.no_grad():  # rows 3, 9 and 17: the target word's score far below the others
        for row, gap in ((3, 100.0), (9, 250.0), (17, 400.0)):
            w = layer.weight[target[row]]
            features[row] = -gap * w / w.square().sum()
    features.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss, nll = layer.loss(DecoderOut(features), None, target, 0.1)
    loss.backward()

    f64 = features.detach().double().requires_grad_()
    w64 = layer.weight.detach().double().requires_grad_()
    logits = f64 @ w64.t()
    if precision == "bf16":  # the products' rounding of the fused loss, in the reference too
        logits = f64.bfloat16().double() @ w64.bfloat16().double().t()
    ref_loss, ref_nll = smoothed_nll(torch.log_softmax(logits, dim=-1), target, 0.1)
    ref_loss.backward()
    assert ref_nll > 700 and torch.isfinite(loss) and torch.isfinite(features.grad).all()
    rtol = 1e-5 if precision == "fp32" else 1e-3
    torch.testing.assert_close(loss.double(), ref_loss.detach(), rtol=rtol, atol=0)
    torch.testing.assert_close(nll.double(), ref_nll, rtol=rtol, atol=0)
    if precision == "fp32":
        close_to_float64(features.grad, f64.grad)
        close_to_float64(layer.weight.grad, w64.grad)


@pytest.mark.parametrize("select_rows", [True, False])
def test_log_normaliser_equals_logsumexp_with_or_without_a_host_sync(select_rows):
    """Both ways of the fallback (the CPU's: only the underflowing rows; an accelerator's: every row,
    no host sync) give logsumexp, including a row whose target probability underflows to 0."""
    torch.manual_seed(0)
    x = torch.randn(6, 40) * 3
    t = torch.randint(0, 40, (6, 1))
    x[2, t[2, 0]] = -500.0
    p = torch.softmax(x, dim=1)
    assert p[2, t[2, 0]] == 0
    lse = log_normaliser(p, x, t, x.gather(1, t), select_rows)
    torch.testing.assert_close(lse, torch.logsumexp(x, dim=1, keepdim=True), rtol=1e-6, atol=1e-6)


@needs_onednn
def test_memory_stays_bounded_over_many_batch_shapes():
    """Every new row count compiles new oneDNN kernels (forward, input and weight gradients); the
    module caps the caches, so 150 shapes (a training run's worth of batch lengths) add little memory:
    ~60 MiB here, most of it freed heap, against ~740 MiB with oneDNN's default capacity."""
    import subprocess
    import sys

    script = """
import os, sys, torch
from seq2seq.models.kernels import gemm
from seq2seq.models.kernels.gemm import Linear
assert "ONEDNN_PRIMITIVE_CACHE_CAPACITY" not in os.environ  # nothing is set at import
gemm.configure("onednn", cache_capacity=16)
assert os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == os.environ["LRU_CACHE_CAPACITY"] == "16"
def rss():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) / 1024
layer = Linear(256, 1024)
x = torch.randn(1400, 256, requires_grad=True)
layer(x[:1000]).sum().backward()
before = rss()
for rows in range(1000, 1300, 2):
    layer(x[:rows]).sum().backward()
print(rss() - before)
"""
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True)
    assert float(out.stdout) < 200, f"memory grew by {float(out.stdout):.0f} MiB over 150 shapes"
