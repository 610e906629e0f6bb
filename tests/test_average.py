"""Checkpoint averaging as part of training (trainer.average_last): the mean of the last N step
checkpoints, validated, and best.pt the better of it and the best single checkpoint."""
from __future__ import annotations

import json
import logging
import signal

import pytest
import torch
from omegaconf import OmegaConf

from helpers.commands import run_cli, weights
from helpers.corpora import tiny_train_overrides
from helpers.training import make_trainer
from seq2seq.training.checkpoint import load_checkpoint
from seq2seq.training.trainer import TrainerOptions


def rows(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def scripted_validation(trainer, metric: str, scores: list[float]) -> list[int]:
    """Replace decoding-based validation by the given scores, one per call, in order (the last one
    is the average's); returns the steps at which validation ran."""
    scores, steps = list(scores), []

    def validate(shared: bool = True):
        steps.append(trainer.step)
        return {"step": trainer.step, "valid_nll": 1.0, "valid_ppl": 2.7, f"valid_{metric}": scores.pop(0),
                "valid_seconds": 0.0}

    trainer.validate = validate
    return steps


def test_averaged_weights_are_the_mean_of_the_last_n_step_checkpoints(corpus, tmp_path):
    trainer = make_trainer(corpus, tmp_path, 8, valid_every=2, keep_last=3, average_last=3, valid_metric="loss")
    summary = trainer.fit()
    folder = tmp_path / "checkpoints"
    assert sorted(p.name for p in folder.glob("step_*.pt")) == ["step_4.pt", "step_6.pt", "step_8.pt"]
    singles = [weights(folder / f"step_{s}.pt") for s in (4, 6, 8)]
    averaged = load_checkpoint(folder / "averaged.pt")  # seq2seq's loader: weights only, no pickled code
    assert set(averaged["model"]) == set(singles[0])
    for key, value in averaged["model"].items():
        expected = sum(s[key].to(torch.float64) for s in singles) / 3
        torch.testing.assert_close(value, expected.to(value.dtype), rtol=0, atol=1e-7)
    assert averaged["step"] == 8 and averaged["valid_metric"] == "loss"
    embedding = next(k for k in singles[0] if "embed" in k and k.endswith(".weight"))
    tied = [k for k, v in singles[0].items() if v.data_ptr() == singles[0][embedding].data_ptr()]
    assert len(tied) >= 2  # shared embeddings and output layer: one tensor under several names...
    assert len({averaged["model"][k].data_ptr() for k in tied}) == 1  # ...in the average too (stored once)
    assert averaged["model_config"] == load_checkpoint(folder / "last.pt")["model_config"]
    # the trainer's own weights are the last step's again after validating the average
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, singles[-1][key])

    row = [r for r in rows(tmp_path) if "best_is" in r]
    assert len(row) == 1 and row[0]["averaged_steps"] == [4, 6, 8]
    assert summary["averaging"] == row[0]
    assert row[0]["averaged"] == pytest.approx(averaged["valid_score"])
    best_single = min(r["valid_loss"] for r in rows(tmp_path) if "valid_loss" in r)
    assert row[0]["best_single"] == pytest.approx(best_single)
    assert row[0]["best_is"] == ("averaged" if row[0]["averaged"] < best_single else "single")
    assert rows(tmp_path)[-1]["final"] and rows(tmp_path)[-1]["averaging"] == row[0]


def test_the_averaged_checkpoint_decodes_by_name_and_equals_seq2seq_average(corpus, tmp_path):
    """`seq2seq-decode checkpoint=averaged` finds it; `seq2seq-average` by hand gives the same weights."""
    from seq2seq.average import average
    from seq2seq.decode import load_run

    trainer = make_trainer(corpus, tmp_path, 4, valid_every=2, keep_last=2, average_last=2, valid_metric="loss")
    trainer.fit()
    trainer.data.tokenizer.save(tmp_path / "tokenizer")
    model, _, path = load_run(tmp_path, checkpoint="averaged")
    assert path == tmp_path / "checkpoints" / "averaged.pt"
    by_hand = average(OmegaConf.create({"run": str(tmp_path), "last": 2, "output": str(tmp_path / "avg.pt")}))
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights(by_hand)[key])
    with pytest.raises(FileNotFoundError, match="fewer than last=3"):  # seq2seq-average's own check, unchanged
        average(OmegaConf.create({"run": str(tmp_path), "last": 3, "output": None}))


@pytest.mark.parametrize("metric, singles, average, outcome", [
    ("bleu", [10.0, 30.0, 20.0], 35.0, "averaged"),   # higher is better
    ("bleu", [10.0, 30.0, 20.0], 25.0, "single"),
    ("bleu", [10.0, 30.0, 20.0], 30.0, "single"),     # a tie keeps the single checkpoint
    ("loss", [3.0, 1.0, 2.0], 0.5, "averaged"),       # lower is better
    ("loss", [3.0, 1.0, 2.0], 1.5, "single"),
])
def test_best_is_the_better_of_the_average_and_the_best_single(corpus, tmp_path, caplog, metric, singles, average,
                                                                 outcome):
    trainer = make_trainer(corpus, tmp_path, 6, valid_every=2, keep_last=3, average_last=3, valid_metric=metric)
    steps = scripted_validation(trainer, metric, [*singles, average])
    with caplog.at_level(logging.INFO, logger="seq2seq.training.trainer"):
        summary = trainer.fit()
    assert steps == [2, 4, 6, 6]  # three validations while training, then the average's
    folder = tmp_path / "checkpoints"
    best = load_checkpoint(folder / "best.pt")
    expected = weights(folder / ("averaged.pt" if outcome == "averaged" else "step_4.pt"))
    assert set(best["model"]) == set(expected)
    assert all(torch.equal(best["model"][k], expected[k]) for k in expected)
    assert ("averaged" in best) == (outcome == "averaged")
    assert best["step"] == (6 if outcome == "averaged" else 4)

    winner = average if outcome == "averaged" else singles[1]
    row = {"averaged": average, "best_single": singles[1], "best_is": outcome, "valid_metric": metric}
    assert {k: summary["averaging"][k] for k in row} == row
    assert summary[f"best_valid_{metric}"] == winner
    assert load_checkpoint(folder / "last.pt")["best_score"] == winner  # a resumed run keeps the better one
    message = [r.getMessage() for r in caplog.records if "averaged step checkpoints" in r.getMessage()]
    assert len(message) == 1
    assert f"{metric} {average:.2f} vs best single checkpoint {singles[1]:.2f}" in message[0]
    assert message[0].endswith("the average" if outcome == "averaged" else "the best single checkpoint")


def test_fewer_step_checkpoints_than_n_are_averaged_with_a_warning(corpus, tmp_path, caplog):
    trainer = make_trainer(corpus, tmp_path, 4, valid_every=2, keep_last=5, average_last=5, valid_metric="loss")
    with caplog.at_level(logging.WARNING, logger="seq2seq.training.trainer"):
        summary = trainer.fit()
    assert summary["averaging"]["averaged_steps"] == [2, 4]
    assert any("only 2 step checkpoint(s)" in r.getMessage() for r in caplog.records)


def test_a_run_stopped_by_a_signal_does_not_average(corpus, tmp_path):
    """A signal means 'save and resume later': the run is unfinished, so nothing is averaged or replaced."""
    trainer = make_trainer(corpus, tmp_path, 8, valid_every=2, keep_last=2, average_last=2, valid_metric="loss")
    step = trainer._train_step

    def step_then_signal(batches):
        stats = step(batches)
        if trainer.step == 5:
            trainer.stop_signal = signal.SIGTERM
        return stats

    trainer._train_step = step_then_signal
    summary = trainer.fit()
    assert summary["signal"] == "SIGTERM" and summary["step"] == 5
    assert "averaging" not in summary
    assert not (tmp_path / "checkpoints" / "averaged.pt").exists()
    assert not any("best_is" in r for r in rows(tmp_path))


def test_without_average_last_nothing_is_averaged(corpus, tmp_path):
    summary = make_trainer(corpus, tmp_path, 4, valid_every=2, keep_last=2, valid_metric="loss").fit()
    assert "averaging" not in summary and not (tmp_path / "checkpoints" / "averaged.pt").exists()


@pytest.mark.parametrize("options, message", [
    ({"average_last": -1}, r"trainer.average_last=-1"),
    ({"average_last": 3, "keep_last": 2}, r"trainer.average_last=3 .*trainer.keep_last=2 .*trainer.keep_last>=3"),
    ({"average_last": 1, "keep_last": 0}, r"trainer.average_last=1 .*trainer.keep_last=0"),
])
def test_a_bad_average_last_is_refused(options, message):
    with pytest.raises(ValueError, match=message):
        TrainerOptions(max_steps=10, **options)


def test_a_bad_average_last_is_refused_by_the_command_line(corpus, tmp_path):
    proc = run_cli("train", *tiny_train_overrides(corpus, tmp_path / "run"), "trainer.average_last=4",
                   "trainer.keep_last=2", check=False)
    assert proc.returncode == 2
    assert "trainer.average_last=4" in proc.stderr and "trainer.keep_last=2" in proc.stderr
