"""Training for summarization: validation by any metric, the copy share, the coverage loss's switch-on step."""
from __future__ import annotations

import json

import pytest
import torch

from helpers.models import transformer_config
from helpers.training import make_trainer
from seq2seq.training.checkpoint import load_checkpoint


def rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_validation_by_loss_picks_the_lowest_loss(corpus, tmp_path):
    trainer = make_trainer(corpus, tmp_path, 6, valid_every=2, valid_metric="loss")
    summary = trainer.fit()
    valid = [r for r in rows(tmp_path) if "valid_loss" in r]
    assert [r["step"] for r in valid] == [2, 4, 6]
    assert all("valid_bleu" not in r for r in valid)  # no decoding needed
    best = min(valid, key=lambda r: r["valid_loss"])
    assert summary["best_valid_loss"] == pytest.approx(best["valid_loss"])
    assert load_checkpoint(tmp_path / "checkpoints" / "best.pt")["step"] == best["step"]
    assert valid[-1]["best_loss"] == pytest.approx(best["valid_loss"])


@pytest.mark.parametrize("metric", ["rougeL", "chrf"])
def test_validation_by_a_text_metric(corpus, tmp_path, metric):
    trainer = make_trainer(corpus, tmp_path, 4, valid_every=2, valid_metric=metric)
    summary = trainer.fit()
    valid = [r for r in rows(tmp_path) if f"valid_{metric}" in r]
    assert [r["step"] for r in valid] == [2, 4]
    assert all(0.0 <= r[f"valid_{metric}"] <= 100.0 for r in valid)
    assert summary[f"best_valid_{metric}"] == max(r[f"valid_{metric}"] for r in valid)


def test_an_unknown_validation_metric_is_refused(corpus, tmp_path):
    with pytest.raises(ValueError, match="trainer.valid_metric=bleurt"):
        make_trainer(corpus, tmp_path, 2, valid_metric="bleurt")


def test_copy_share_is_logged_and_coverage_switches_on_at_its_step(corpus, tmp_path):
    config = {**transformer_config(layers=1, dim=32, heads=2, ffn=64, dropout=0.0, max_positions=128),
              "output": {"_target_": "seq2seq.models.copy.PointerGenerator", "attention_layer": -1,
                         "attention_head": -1}}
    trainer = make_trainer(corpus, tmp_path, 4, config=config, valid_every=4,
                           optim={"coverage_loss": 2.0, "coverage_from_step": 3})
    weights = []
    for done in range(4):  # updates done so far; the next one is number done + 1
        trainer.step, trainer.update_position = done, float(done + 1)  # steps bind: the position is the step
        weights.append(trainer._coverage_loss_weight())
    assert weights == [0.0, 0.0, 2.0, 2.0]  # updates 3 and 4 carry the coverage loss
    trainer.step = 0
    trainer.fit()
    steps = {r["step"]: r for r in rows(tmp_path) if "loss" in r}
    for step, r in steps.items():
        smoothed = r["loss"] - (2.0 * r["coverage"] if step >= 3 else 0.0)
        assert smoothed < r["nll"] + 1.0  # before step 3 the loss has no coverage term; after, it has
    assert steps[3]["loss"] - steps[2]["loss"] > 1.0 * steps[3]["coverage"]
    valid = [r for r in rows(tmp_path) if "valid_copied" in r]
    assert len(valid) == 1 and 0.0 <= valid[0]["valid_copied"] <= 1.0


def test_optim_refuses_unknown_keys(corpus, tmp_path):
    with pytest.raises(ValueError, match=r"unknown optim setting\(s\): optim.momentum"):
        make_trainer(corpus, tmp_path, 2, optim={"momentum": 0.9})


def test_an_update_the_gradient_scaler_skips_advances_neither_step_nor_schedule(corpus, tmp_path):
    """fp16's GradScaler skips an update whose gradients overflow; the step counter and the
    learning-rate schedule must wait for the next real update. (A CPU scaler, and a gradient hook
    that makes one gradient infinite, stand in for an fp16 overflow.)"""
    trainer = make_trainer(corpus, tmp_path, 3)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    overflow = [True]
    first = next(trainer.model.parameters())
    first.register_hook(lambda grad: grad * float("inf") if overflow[0] else grad)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    idx = trainer._plan(trainer._epoch_batches())[0]
    group = [trainer.pairs.collate(idx)]
    stats = trainer._train_step(group)
    assert not stats.updated and trainer.step == 0
    assert trainer.scaler.get_scale() == 512.0
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters())
    overflow[0] = False
    assert trainer._train_step(group).updated
    assert trainer.step == 1
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(trainer.schedule(1))
