"""What the entry points choose on the host: the kernel plan (kernels.linear, seq2seq/models/kernels/gemm.py) from a
calibration, its cache and the oneDNN check's fallback; trainer.precision=auto (seq2seq/training/precision.py)."""
from __future__ import annotations

import json
import warnings

import pytest
import torch

from helpers.models import transformer_config
from helpers.training import make_trainer
from seq2seq.models.kernels import gemm
from seq2seq.models.kernels.gemm import Linear
from seq2seq.models.model import build_model
from seq2seq.training import precision

BIG = 1 << 27  # multiply-adds of a product in the largest size class


@pytest.fixture(autouse=True)
def keep_plan(monkeypatch):
    previous = gemm.current_plan()
    monkeypatch.setattr(gemm, "_checked", None)
    yield
    gemm.set_plan(previous)


@pytest.fixture
def onednn_calls(monkeypatch):
    calls = []
    real = gemm._inner_product
    monkeypatch.setattr(gemm, "_inner_product", lambda *a: calls.append(1) or real(*a))
    return calls


def test_where_mkl_measured_faster_auto_picks_mkl_and_linear_takes_it(onednn_calls):
    # seconds [mkl, onednn] per kind/size class, as an Intel host with AVX-512 measures them
    totals = {f"{kind}/{c}": [1.0, 1.3] for kind in gemm.KINDS for c in (2, 3)}
    plan = gemm.plan_from(totals)
    assert plan.onednn == frozenset() and plan.summary() == {"choice": "auto", "onednn": []}
    gemm.set_plan(plan)
    if gemm._op_available():
        layer = Linear(256, 1024)
        layer(torch.randn(600, 256, requires_grad=True)).sum().backward()
        assert not onednn_calls


def test_auto_chooses_per_class_and_an_unmeasured_class_follows_the_nearest():
    totals = {"forward/3": [2.0, 1.0], "forward/1": [1.0, 1.5], "input_grad/3": [1.0, 1.2],
              "weight_grad/2": [3.0, 1.0]}
    plan = gemm.plan_from(totals)
    assert plan.uses_onednn("forward", BIG) and not plan.uses_onednn("forward", 2_000_000)
    assert plan.uses_onednn("forward", 1 << 25) is False  # class 2: nearest measured are 1 and 3, the lower wins
    assert not plan.uses_onednn("input_grad", BIG) and not plan.uses_onednn("input_grad", 10)
    assert plan.uses_onednn("weight_grad", 10) and plan.uses_onednn("weight_grad", BIG)  # only class 2 measured
    assert not gemm.plan_from({}).onednn


@pytest.mark.skipif(not gemm._op_available(), reason="this torch build has no oneDNN inner product")
def test_calibration_times_the_models_shapes_once_per_host_and_keeps_it(tmp_path, monkeypatch):
    model = build_model(transformer_config(layers=1, dim=64, heads=2, ffn=128), 300, 300)
    shapes = gemm.linear_shapes(model)
    assert (64, 192) in shapes and (64, 128) in shapes and (128, 64) in shapes and (64, 300) in shapes
    timed = []
    real = gemm.measure_shapes
    monkeypatch.setattr(gemm, "measure_shapes", lambda *a, **k: timed.append(1) or real(*a, **k))
    first = gemm.configure("auto", 16, model, rows=(128, 8), cache_dir=tmp_path)
    second = gemm.configure("auto", 16, model, rows=(128, 8), cache_dir=tmp_path)
    assert len(timed) == 1 and first["cached"] is False and second["cached"] is True
    assert first["onednn"] == second["onednn"] and first["choice"] == "auto"
    (cached,) = (tmp_path / "host").glob("kernels-*.json")
    identity = json.loads(cached.read_text())["identity"]
    assert identity["torch"] == torch.__version__ and identity["threads"] == torch.get_num_threads()
    assert identity["cpu"]
    gemm.configure("auto", 16, model, rows=(64, 8), cache_dir=tmp_path)  # other shapes: measured anew
    assert len(timed) == 2


@pytest.mark.parametrize("broken", ["missing", "raises", "wrong"])
def test_an_unusable_onednn_op_falls_back_to_mkl_with_one_warning(broken, monkeypatch):
    if broken == "missing":
        monkeypatch.setattr(gemm, "_op_available", lambda: False)
    elif broken == "raises":  # a changed signature of the private op
        def changed(*args):
            raise TypeError("_linear_pointwise() takes 3 positional arguments but 6 were given")
        monkeypatch.setattr(gemm, "_inner_product", changed)
    else:
        monkeypatch.setattr(gemm, "_inner_product", lambda a, b, bias=None: torch.zeros(a.size(0), b.size(0)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = gemm.configure("onednn")
        again = gemm.configure("auto", model=torch.nn.Linear(2, 2), rows=(8,))
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "matrix products stay on MKL" in messages[0]
    assert record["choice"] == "mkl (oneDNN unusable; kernels.linear=onednn)" and record["onednn"] == []
    assert again["choice"].startswith("mkl (oneDNN unusable") and not gemm.current_plan().onednn


def test_kernel_settings_are_checked():
    with pytest.raises(ValueError, match="kernels.linear=fast: expected one of auto, onednn, mkl"):
        gemm.configure("fast")
    with pytest.raises(ValueError, match="kernels.onednn_cache_capacity=0"):
        gemm.configure("mkl", cache_capacity=0)


def test_precision_auto_takes_bf16_only_where_it_measured_faster():
    cpu = torch.device("cpu")
    # a CPU without AMX: bf16 measured slower (today's step on the AMD host) or within the margin -> fp32
    assert precision.choose("auto", cpu, lambda: {"fp32": 1.0, "bf16": 1.4})[0] == "fp32"
    assert precision.choose("auto", cpu, lambda: {"fp32": 1.0, "bf16": 0.97})[0] == "fp32"
    # a faked AMX host: bf16 measured 2x faster -> bf16, and the record says why
    chosen, record = precision.choose("auto", cpu, lambda: {"fp32": 1.0, "bf16": 0.5})
    assert chosen == "bf16" and record["bf16_speedup"] == 2.0 and record["chosen_by"] == "auto: measured"
    assert precision.choose("fp32", cpu, lambda: pytest.fail("not timed"))[0] == "fp32"


def test_timing_the_step_leaves_weights_gradients_and_random_state_alone():
    torch.manual_seed(0)
    model = build_model(transformer_config(layers=1, dim=32, heads=2, ffn=64, dropout=0.3), 50, 50)
    src = torch.randint(4, 50, (3, 7))
    tgt = torch.randint(4, 50, (3, 6))

    class Batch:
        pass

    batch = Batch()
    batch.src, batch.prev_tokens, batch.target = src, tgt, tgt
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    rng = torch.get_rng_state()
    seconds = precision.measure_step(model, [batch], torch.device("cpu"))
    assert set(seconds) == {"fp32", "bf16"} and all(s > 0 for s in seconds.values())
    assert torch.equal(torch.get_rng_state(), rng) and not model.training
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("measured, expected", [({"fp32": 1.0, "bf16": 0.5}, "bf16"), ({"fp32": 1.0, "bf16": 1.5}, "fp32")])
def test_the_trainer_resolves_auto_and_writes_the_choice_to_the_metrics(corpus, tmp_path, monkeypatch, measured,
                                                                         expected):
    monkeypatch.setattr(precision, "measure_step", lambda model, batches, device: measured)
    trainer = make_trainer(corpus, tmp_path, 2, precision="auto")
    assert trainer.precision == expected
    assert trainer.amp_dtype == (torch.bfloat16 if expected == "bf16" else None)
    summary = trainer.fit()
    first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert first["setup"]["precision"]["precision"] == expected == summary["setup"]["precision"]["precision"]
