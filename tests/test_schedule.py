"""Learning-rate schedules: values against their formulas, config errors, and the trainer following them."""
from __future__ import annotations

import json
import math

import pytest

from helpers.training import make_trainer
from seq2seq.training.optim import InverseSqrtSchedule, LinearSchedule, build_schedule


def test_inverse_sqrt_warms_up_then_decays_as_one_over_the_root():
    s = build_schedule(1e-3, {"name": "inverse_sqrt", "warmup_steps": 100, "warmup_init_lr": 0.0})
    assert isinstance(s, InverseSqrtSchedule)
    assert s(50) == pytest.approx(5e-4) and s(100) == pytest.approx(1e-3)
    assert s(400) == pytest.approx(1e-3 * math.sqrt(100 / 400))


def test_linear_reaches_its_final_lr_at_total_steps_and_stays():
    s = build_schedule(2e-3, {"name": "linear", "warmup_steps": 100, "warmup_init_lr": 0.0, "total_steps": 1100,
                              "final_lr": 0.0})
    assert isinstance(s, LinearSchedule)
    assert s(100) == pytest.approx(2e-3)
    assert s(600) == pytest.approx(1e-3)     # half-way down
    assert s(1100) == 0.0 and s(5000) == 0.0
    floor = LinearSchedule(2e-3, 100, 1100, final_lr=1e-4)
    assert floor(600) == pytest.approx(1e-4 + 1.9e-3 / 2) and floor(2000) == pytest.approx(1e-4)
    assert all(s(t) >= s(t + 1) for t in range(100, 1200))


def test_a_warmup_longer_than_the_budget_is_shortened_with_a_warning(caplog):
    with caplog.at_level("WARNING"):
        s = build_schedule(1e-3, {"name": "linear", "warmup_steps": 400, "total_steps": 50})
    assert "warmup_steps=400 is not below total_steps=50: warming up over 5 steps instead" in caplog.text
    assert s(5) == pytest.approx(1e-3) and s(50) == 0.0 and s(4) < s(5)
    tiny = build_schedule(1e-3, {"name": "linear", "warmup_steps": 10, "total_steps": 2})  # trainer.max_steps=2
    assert tiny(1) == pytest.approx(1e-3) and tiny(2) == 0.0


@pytest.mark.parametrize("node, message", [
    ({"name": "cosine", "warmup_steps": 10}, "lr_scheduler=cosine: choose one of inverse_sqrt, linear"),
    ({"name": "linear", "warmup_steps": 400, "total_steps": 0}, r"total_steps=0; it needs the number of updates .*trainer.max_steps"),
    ({"name": "linear", "warmup_steps": 4, "total_steps": 10, "final_lr": 1.0}, r"final_lr=1.0 must lie in \[0, optim.lr=0.001\]"),
    ({"name": "inverse_sqrt", "warmup_steps": 4, "total_steps": 10}, r"unknown lr_scheduler setting\(s\): lr_scheduler.total_steps"),
])
def test_impossible_schedules_are_refused_with_the_key(node, message):
    with pytest.raises(ValueError, match=message):
        build_schedule(1e-3, node)


def test_the_trainer_follows_the_linear_schedule_to_zero(corpus, tmp_path):
    schedule = {"name": "linear", "warmup_steps": 4, "warmup_init_lr": 0.0, "total_steps": 12}
    make_trainer(corpus, tmp_path, 12, schedule=schedule).fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lr = {r["step"]: r["lr"] for r in rows if "lr" in r}
    expected = LinearSchedule(0.005, 4, 12, warmup_init_lr=0.0)
    assert sorted(lr) == list(range(1, 13))
    for step, value in lr.items():  # logged after the update: the rate that step used
        assert value == pytest.approx(expected(step)), step
    assert lr[12] == 0.0


def test_adamw_takes_the_fused_kernel_and_falls_back_where_there_is_none(monkeypatch):
    import torch

    from seq2seq.training import optim

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    fused = optim.build_optimizer(model, 1e-3, (0.9, 0.98), 1e-9, 0.01)
    assert fused.defaults["fused"] is True
    assert [g["weight_decay"] for g in fused.param_groups] == [0.01, 0.0]  # matrices decay, gains and biases not
    twin = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    twin.load_state_dict(model.state_dict())
    plain = torch.optim.AdamW(twin.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.0)
    for m, opt in ((model, fused), (twin, plain)):
        m(torch.ones(2, 4)).square().sum().backward()
        opt.step()
    # one step of the fused kernel equals torch's plain AdamW on the parameters without weight decay
    torch.testing.assert_close(model[1].weight, twin[1].weight)
    torch.testing.assert_close(model[0].bias, twin[0].bias)

    real = torch.optim.AdamW

    def without_fused(params, **kwargs):
        if kwargs.get("fused"):
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        return real(params, **kwargs)

    monkeypatch.setattr(optim.torch.optim, "AdamW", without_fused)
    fallback = optim.build_optimizer(model, 1e-3, (0.9, 0.98), 1e-9, 0.01)
    assert not fallback.defaults.get("fused") and len(fallback.param_groups) == 2
