"""The training loop: token-count batches, accumulation, clipping, validation, checkpoints, resume.

Everything the loop needs arrives through the constructor. Rank 0 alone writes files
and logs; every stopping decision (steps, epochs, minutes, patience, a signal) is
shared, so all ranks stop at the same step. The last.pt checkpoint holds everything
that decides what happens next (weights, optimizer, grad scaler, position in the
epoch, every rank's RNG state), so a resumed run continues exactly where it stopped.
"""
# long: one class holds the loop state that resume restores bit for bit; its parts live in training/options,
# rng, validation, averaging, progress, precision and checkpoint
from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import sys
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from seq2seq.data.batching import PlanBatches, bucket_batches, epoch_shard
from seq2seq.data.prepare import PreparedData
from seq2seq.errors import PeerFailure
from seq2seq.generation.options import GenerationOptions
from seq2seq.metrics import higher_is_better
from seq2seq.training import distributed, precision
from seq2seq.training.averaging import average_and_compare
from seq2seq.training.checkpoint import (check_positions_layout, load_checkpoint, load_model_state, save_checkpoint,
                                         step_checkpoints)
from seq2seq.training.distributed import DistInfo
from seq2seq.training.optim import OptimOptions, build_optimizer, build_schedule
from seq2seq.training.options import PRECISIONS, StepStats, TrainerOptions
from seq2seq.training.progress import Budget
from seq2seq.training.rng import rng_state, set_rng_state
from seq2seq.training.validation import Validator

__all__ = ["Trainer", "TrainerOptions", "StepStats"]

log = logging.getLogger(__name__)


class Trainer:
    def __init__(self, model: torch.nn.Module, data: PreparedData, run_dir: Path, options: TrainerOptions, *,
                 optim: dict, schedule, batch_tokens: int, valid_batch_tokens: int,
                 generation: GenerationOptions, model_config: dict, seed: int, device: torch.device,
                 dist: DistInfo = DistInfo(), host_cache: str | None = None, setup: dict | None = None):
        """host_cache: where trainer.precision=auto keeps its measurement (seq2seq.host); setup: what the
        entry point chose for this host (the kernels), written to the metrics with the precision."""
        self.model, self.data, self.run_dir, self.opts = model, data, Path(run_dir), options
        self.device, self.dist, self.seed = device, dist, seed
        self.batch_tokens, self.valid_batch_tokens = batch_tokens, valid_batch_tokens
        self.model_config = model_config
        optim = OptimOptions.from_config(optim)
        self.label_smoothing, self.clip_norm = optim.label_smoothing, optim.clip_norm
        self.coverage_loss, self.coverage_from_step = optim.coverage_loss, optim.coverage_from_step
        self.optimizer = build_optimizer(model, optim.lr, optim.betas, optim.eps, optim.weight_decay)
        # schedule: the lr_scheduler group (name and settings), or a schedule already built from it
        self.schedule = schedule if callable(schedule) else build_schedule(optim.lr, schedule)
        # validation decodes with trainer.valid_beam_size (1 = greedy) and the run's other generation settings
        beam = options.valid_beam_size > 1
        self.validator = Validator(data, options.valid_metric, options.valid_max_sentences, GenerationOptions(**{
            **generation.__dict__, "strategy": "beam" if beam else "greedy", "beam_size": max(options.valid_beam_size, 1),
            "nbest": 1, "coverage_penalty": generation.coverage_penalty if beam else 0.0}), valid_batch_tokens, device,
            dist, seed)
        self.pairs = data.train  # TrainingPairs: an index into the cache's token arrays (seq2seq.data.pairs)
        self.src_lens, self.tgt_lens = self.pairs.lengths()
        self._batches_of: tuple[int, list] = (-1, [])  # (epoch, its batches)
        self.seed = seed
        self.precision, record = self._choose_precision(options.precision, host_cache, model_config)
        self.setup = {**(setup or {}), "precision": record}
        self.amp_dtype = PRECISIONS[self.precision]
        if self.precision == "fp16" and device.type != "cuda":
            raise ValueError("trainer.precision=fp16 needs a CUDA device (its gradient scaling is CUDA-only); "
                             "use trainer.precision=bf16 on a CPU")
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "fp16" else None
        self.ddp = None
        if dist.enabled:
            self.ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                               find_unused_parameters=model.coverage_attention)
            torch.manual_seed(seed + dist.rank)  # own dropout masks per rank; the weights came from rank 0
        # position: `epoch`, the epoch's batches consumed before the current shard plan began
        # (`epoch_start`, counted over all ranks) and the batches of this rank's plan done since
        self.step = self.epoch = self.epoch_start = self.batch_in_epoch = 0
        # the schedules' step (seq2seq.training.progress): the step itself unless the clock runs ahead
        self.budget = Budget(options.max_steps, options.max_minutes)
        self.position = 0.0             # of the last update
        self.update_position = 1.0      # of the update being made (learning rate, coverage switch)
        self.next_validation = float(options.valid_every)
        self.lr = 0.0                   # of the last update
        self.step_seconds = 0.0         # how long the last update took
        self.bad_steps = 0
        self.best_score, self.bad_validations = None, 0  # best trainer.valid_metric so far
        self.elapsed_before = 0.0
        self.last_valid_seconds = 0.0
        self.stop_signal = None
        self.checkpoints = self.run_dir / "checkpoints"
        self.writer = None

    def _choose_precision(self, requested: str, host_cache, model_config: dict) -> tuple[str, dict]:
        """trainer.precision, with auto resolved by timing the model's step on a real batch of the
        epoch's (the median-sized one of the first few; seq2seq.training.precision)."""
        batches = []
        if requested == "auto" and self.device.type != "cuda":
            first = self._batches(0)[:5] if len(self.pairs) else []
            if first:
                batches = [self.pairs.collate(sorted(first, key=len)[len(first) // 2]).to(self.device)]
        if requested == "auto" and self.device.type != "cuda" and not batches:
            return "fp32", {"precision": "fp32", "chosen_by": "auto: no training batch to time"}
        chosen = record = None
        if self.dist.is_main or requested != "auto":  # rank 0 times; every rank takes its choice
            chosen, record = precision.choose(requested, self.device,
                                              lambda: precision.measure_step(self.model, batches, self.device),
                                              host_cache, key={"model": model_config, "batch_tokens": self.batch_tokens})
        chosen, record = distributed.broadcast_object((chosen, record), self.dist)
        if requested == "auto":
            log.info("trainer.precision=auto: %s (%s)", chosen, ", ".join(f"{k} {v}" for k, v in record.items()
                                                                        if k != "precision"))
        return chosen, record

    # ---------------------------------------------------------------- files
    def _metrics(self, row: dict) -> None:
        if not self.dist.is_main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter  # lazy: a second of start-up, only where metrics are written

            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, row["step"])

    def _epoch_batches(self) -> list:
        """The whole epoch's batches, the same on every rank and in every run with this seed (made once per epoch:
        a second or so at millions of pairs)."""
        return self._batches(self.epoch)

    def _batches(self, epoch: int) -> list:
        if self._batches_of[0] != epoch:
            self._batches_of = (epoch, bucket_batches(self.src_lens, self.tgt_lens, self.batch_tokens, shuffle=True,
                                                      seed=self.seed, epoch=epoch))
        return self._batches_of[1]

    def _plan(self, batches: list) -> list:
        """This rank's batches for the rest of the epoch (from epoch_start on)."""
        return epoch_shard(batches[self.epoch_start :], self.dist.rank, self.dist.world_size)

    def _loader(self, plan: list) -> torch.utils.data.DataLoader:
        """The plan's batches in order, assembled by trainer.num_workers processes (pinned on CUDA). The loader gets a
        generator of its own: an iterator draws its workers' seed from it, which would otherwise be a draw from the
        global RNG (the dropout masks'), made at every epoch's start, and resume would no longer be exact."""
        workers = self.opts.num_workers
        return torch.utils.data.DataLoader(PlanBatches(plan, self.pairs.collate), batch_size=None, shuffle=False,
                                           num_workers=workers, pin_memory=self.device.type == "cuda",
                                           prefetch_factor=4 if workers else None, persistent_workers=False,
                                           generator=torch.Generator().manual_seed(self.seed))

    def _global_done(self, plan_length: int) -> int:
        """Batches of the epoch consumed by all ranks together: where any number of processes resumes."""
        if plan_length and self.batch_in_epoch >= plan_length:
            return len(self._epoch_batches())
        return self.epoch_start + self.batch_in_epoch * self.dist.world_size

    def _state(self, full: bool, rng: list | None = None, plan_length: int = 0) -> dict:
        state = {"model": self.model.state_dict(), "model_config": self.model_config, "step": self.step,
                 "epoch": self.epoch, "best_score": self.best_score,
                 "valid_metric": self.opts.valid_metric}
        if full:
            state.update(optimizer=self.optimizer.state_dict(), rng=rng,
                         scaler=self.scaler.state_dict() if self.scaler else None,
                         global_batches_done=self._global_done(plan_length), world_size=self.dist.world_size,
                         bad_validations=self.bad_validations, elapsed=self._elapsed(),
                         last_valid_seconds=self.last_valid_seconds, precision=self.precision,
                         position=self.position, step_seconds=self.step_seconds)
        return state

    def save(self, best: bool = False, plan_length: int = 0) -> None:
        """Write last.pt (and best.pt, step_N.pt). Collective: every rank calls it, rank 0 writes,
        and the others wait until the files are complete."""
        rng = distributed.gather_objects(rng_state(), self.dist)
        if self.dist.is_main:
            save_checkpoint(self._state(True, rng, plan_length), self.checkpoints / "last.pt")
            if best:
                save_checkpoint(self._state(full=False), self.checkpoints / "best.pt")
            if self.opts.keep_last > 0:
                save_checkpoint(self._state(full=False), self.checkpoints / f"step_{self.step}.pt")
                for old in step_checkpoints(self.checkpoints)[: -self.opts.keep_last]:
                    old.unlink(missing_ok=True)
        distributed.wait_for_main(self.dist)

    def resume(self) -> None:
        path = self.checkpoints / "last.pt"
        state = load_checkpoint(path)
        check_positions_layout(self.model, state["model"], path)  # a clear message for pre-export checkpoints
        load_model_state(self.model, state["model"], path)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.bad_validations = state["bad_validations"]
        if state.get("valid_metric", "bleu") == self.opts.valid_metric:
            self.best_score = state.get("best_score", state.get("best_bleu"))
        else:
            log.warning("the run chose best by %s, now by trainer.valid_metric=%s: the best score starts afresh",
                        state.get("valid_metric", "bleu"), self.opts.valid_metric)
        self.elapsed_before, self.last_valid_seconds = state["elapsed"], state["last_valid_seconds"]
        self.position = float(state.get("position", self.step))  # older checkpoints: the step schedule
        self.next_validation = self._validation_after(self.position)
        self.step_seconds = float(state.get("step_seconds", 0.0))
        self.lr = self.schedule(self.position) if self.step else 0.0
        self.epoch_start, self.batch_in_epoch = state["global_batches_done"], 0
        rng = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        if state["world_size"] != self.dist.world_size and self.dist.is_main:
            log.warning("resuming a %d-process run with %d processes: the rest of epoch %d is sharded anew "
                        "(every remaining pair still once), so the data order differs from the original run",
                        state["world_size"], self.dist.world_size, self.epoch)
        set_rng_state(rng[self.dist.rank % len(rng)])
        log.info("resumed from %s at step %d (epoch %d, %d batches of it done)", path, self.step, self.epoch,
                 self.epoch_start)

    # ---------------------------------------------------------------- steps
    def _elapsed(self) -> float:
        return self.elapsed_before + (time.time() - self.started)

    def _autocast(self):
        """Mixed precision for the forward pass (the loss itself stays fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _final_reserve(self) -> float:
        """Seconds kept at the end of trainer.max_minutes for the final validation (and, with
        trainer.average_last, the average's), estimated from the last validation."""
        return (2 if self.opts.average_last else 1) * self.last_valid_seconds

    def _position_of(self, step: int) -> float:
        """The schedules' step for update number `step`, starting now: the step, or further when the clock
        runs ahead (both trainer.max_steps and trainer.max_minutes set; seq2seq.training.progress), read at
        the time the update will end (now + the last update's duration), so that the last update of a run
        that the clock stops is made at the schedule's end; never backwards."""
        ends = self._elapsed() + self.step_seconds
        return max(self.position, self.budget.position(step, ends, self._final_reserve()))

    def _validation_after(self, position: float) -> float:
        """The position of the first validation after `position` (every trainer.valid_every steps of it)."""
        every = self.opts.valid_every
        return (math.floor(position / every + 1e-9) + 1) * every

    def _coverage_phase(self) -> bool:
        """From optim.coverage_from_step on (a position: it moves with the clock like the learning rate),
        a coverage attention reads the coverage vector (before, its weight w_c stays 0 and the decoder runs
        faster without it: See et al. add it last)."""
        return self.update_position >= self.coverage_from_step

    def _coverage_loss_weight(self) -> float:
        """optim.coverage_loss from optimizer step optim.coverage_from_step on (coverage from the first
        step is known to stall training: See et al. add it at the end), else 0."""
        return self.coverage_loss if self._coverage_phase() else 0.0

    def _train_step(self, batches: list) -> "StepStats":
        """One optimizer step over micro-batches; sums over the ranks, and whether the update was made
        (False: skipped, non-finite)."""
        module = self.ddp or self.model
        ntokens = sum(b.ntokens for b in batches)
        position = self._position_of(self.step + 1) if self.budget.adapts else float(self.step + 1)
        # the ranks' mean position, the same on every rank: all switch coverage on and set one rate together
        global_tokens, position_sum = distributed.all_reduce_sum([float(ntokens), position], self.dist)
        self.update_position = max(self.position, position_sum / self.dist.world_size)
        scale = self.dist.world_size / global_tokens  # DDP averages gradients over ranks
        loss_sum = nll_sum = coverage_sum = 0.0
        for i, batch in enumerate(batches):
            batch = batch.to(self.device)
            sync = i == len(batches) - 1 or self.ddp is None  # gradients are all-reduced once, with the last
            with contextlib.nullcontext() if sync else self.ddp.no_sync():
                with self._autocast():
                    out = module(batch.src, batch.prev_tokens, batch.target, label_smoothing=self.label_smoothing,
                                 coverage_loss_weight=self._coverage_loss_weight(),
                                 coverage_vector=self._coverage_phase())
                    loss, nll = out.loss, out.nll
                scaled = loss * scale
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss_sum += loss.item()
            nll_sum += nll.item()
            coverage_sum += out.coverage_loss.item()
        loss_sum, nll_sum, coverage_sum = distributed.all_reduce_sum([loss_sum, nll_sum, coverage_sum], self.dist)
        problem = None if math.isfinite(loss_sum) else f"loss {loss_sum}"
        if problem is None:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                                  self.clip_norm if self.clip_norm > 0 else math.inf)
            if self.scaler is None and not math.isfinite(norm):  # fp16 overflow is the scaler's business
                problem = f"gradient norm {norm.item()}"
        if problem is not None:
            self.optimizer.zero_grad(set_to_none=True)
            self._bad_step(problem)
            return StepStats(loss_sum, nll_sum, coverage_sum, int(global_tokens), False)
        lr = self.schedule(self.update_position)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.scaler.get_scale() < scale:  # inf/NaN gradients: the scaler skipped the update
                self.optimizer.zero_grad(set_to_none=True)
                log.info("update %d skipped by the fp16 gradient scaler (scale %g -> %g); the step and the "
                         "learning-rate schedule wait for a real update", self.step + 1, scale,
                         self.scaler.get_scale())
                return StepStats(loss_sum, nll_sum, coverage_sum, int(global_tokens), False)
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.position, self.lr = self.update_position, lr
        self.bad_steps = 0
        return StepStats(loss_sum, nll_sum, coverage_sum, int(global_tokens), True)

    def _bad_step(self, problem: str) -> None:
        """Skip an update with a non-finite loss or gradient; give up after max_bad_steps in a row."""
        self.bad_steps += 1
        limit = self.opts.max_bad_steps
        log.warning("update %d skipped: non-finite %s (%d in a row; training stops at trainer.max_bad_steps=%d)",
                    self.step + 1, problem, self.bad_steps, limit)
        if self.bad_steps >= limit:
            raise FloatingPointError(
                f"{self.bad_steps} updates in a row had a non-finite loss or gradient (trainer.max_bad_steps="
                f"{limit}), at step {self.step}; the last good checkpoint is {self.checkpoints / 'last.pt'}. "
                "Lower optim.lr, lengthen lr_scheduler.warmup_steps, check the data, or use trainer.precision=fp32")

    def validate(self, shared: bool = True) -> dict:
        """Validation loss and metric of the model as it is now (seq2seq.training.validation): every rank
        validates its share (shared), or the calling rank all of it."""
        row = {"step": self.step, **self.validator(self.model, self._autocast, shared)}
        self.last_valid_seconds = row["valid_seconds"]
        return row

    def _validate_and_save(self, plan_length: int) -> bool:
        """Validate (every rank its share), keep best and last (rank 0); True when patience has run out."""
        out_of_patience = improved = False
        metric = self.opts.valid_metric
        row = self.validate()
        if self.dist.is_main:
            value = row[f"valid_{metric}"]
            better = (lambda a, b: a > b) if higher_is_better(metric) else (lambda a, b: a < b)
            improved = self.best_score is None or better(value, self.best_score)
            if improved:
                self.best_score, self.bad_validations = value, 0
            else:
                self.bad_validations += 1
            row.update({f"best_{metric}": self.best_score, "elapsed": self._elapsed()})
            self._metrics(row)
            copied = f" | copied {100 * row['valid_copied']:.1f}% of output tokens" if "valid_copied" in row else ""
            log.info("step %d | valid nll %.3f | ppl %.2f | %s %.2f (best %.2f)%s | %.1fs", self.step,
                     row["valid_nll"], row["valid_ppl"], metric, value, self.best_score, copied, row["valid_seconds"])
            out_of_patience = self.opts.patience > 0 and self.bad_validations >= self.opts.patience
        self.save(best=improved, plan_length=plan_length)
        return distributed.broadcast_flag(out_of_patience, self.dist)

    # ---------------------------------------------------------------- averaging at the end
    def average_last_checkpoints(self) -> dict | None:
        """trainer.average_last=N: average the newest N step checkpoints into checkpoints/averaged.pt,
        validate it, and make best.pt whichever of it and the best single checkpoint validates better
        (a tie keeps the single one). Rank 0 works, the others wait; every rank returns rank 0's
        metrics row ({"averaged": score, "best_single": score, "best_is": "averaged" | "single", ...})."""
        row = None
        if self.dist.is_main:
            row = average_and_compare(self.model, self.checkpoints, self.opts.average_last, self.opts.valid_metric,
                                      self.best_score, self.epoch, lambda: self.validate(shared=False))
            if row is not None:
                row["step"] = self.step
                if row["best_is"] == "averaged":
                    self.best_score = row["averaged"]
                self._metrics(row)
        return distributed.broadcast_object(row, self.dist)

    # ---------------------------------------------------------------- loop
    def _stop_reason(self) -> str | None:
        o = self.opts
        if self.stop_signal is not None:
            return f"signal {signal.Signals(self.stop_signal).name}"
        if o.max_steps and self.step >= o.max_steps:
            return f"reached trainer.max_steps={o.max_steps}"
        # room for the final validation (and, with trainer.average_last, the average's)
        if o.max_minutes and self._elapsed() + self._final_reserve() >= o.max_minutes * 60:
            return f"reached trainer.max_minutes={o.max_minutes:g} (validation time included)"
        return None

    def _agreed_stop_reason(self) -> str | None:
        """The stop reason, the same on every rank: any rank's reason (a signal, the clock) stops all."""
        reason = self._stop_reason()
        if not self.dist.enabled:
            return reason
        stop, signum = distributed.all_reduce_max([int(reason is not None), self.stop_signal or 0], self.dist)
        if signum and self.stop_signal is None:
            self.stop_signal = signum
            reason = f"signal {signal.Signals(signum).name} on another rank"
        if stop and reason is None:
            reason = "stopped by another rank"
        return reason

    def _on_signal(self, signum, frame):
        self.stop_signal = signum
        log.warning("%s received: stopping at the next step boundary after saving a checkpoint",
                    signal.Signals(signum).name)

    def fit(self) -> dict:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.opts.resume:
            self.resume()
        self.started = time.time()
        self._metrics({"step": self.step, "setup": self.setup})
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._loop()
        except Exception as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            if self.dist.enabled and (isinstance(err, torch.distributed.DistError)
                                      or any(w in first.lower() for w in ("gloo", "nccl", "connection"))):
                log.error("rank %d: a collective operation failed at step %d (%s). Another rank has probably "
                          "died, been killed or hung past dist.timeout_minutes; its log shows the cause.",
                          self.dist.rank, self.step, first)
                raise PeerFailure(f"rank {self.dist.rank} lost its peers at step {self.step}: {first}") \
                    from err
            raise
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            if self.writer is not None:
                self.writer.close()

    def _log_window(self, window: dict, bar, bar_shown: bool) -> None:
        """The metrics row of the last trainer.log_every updates: to metrics.jsonl and TensorBoard, and to the
        progress bar on a terminal or, with trainer.progress and no terminal, one line of the log."""
        tps = window["tokens"] / max(window["time"], 1e-9)
        row = {"step": self.step, "epoch": self.epoch, "loss": window["loss"] / window["tokens"],
               "nll": window["nll"] / window["tokens"], "lr": self.optimizer.param_groups[0]["lr"],
               "tokens_per_s": tps, "elapsed": self._elapsed()}
        if self.budget.adapts:
            row["position"] = self.position
        if window["coverage"]:
            row["coverage"] = window["coverage"] / window["tokens"]
        self._metrics(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", lr=f"{row['lr']:.2e}", tok_s=f"{tps:.0f}")
        if self.opts.progress and not bar_shown and self.dist.is_main:
            log.info("step %d | loss %.3f | lr %.2e | %.0f tokens/s", self.step, row["loss"], row["lr"], tps)

    def _loop(self) -> dict:
        o = self.opts
        # a progress bar on a terminal only; in a log file (stderr redirected) one line every log_every steps
        bar_shown = self.dist.is_main and o.progress and sys.stderr.isatty()
        bar = tqdm(total=o.max_steps or None, initial=self.step, disable=not bar_shown, unit="step",
                   dynamic_ncols=True, mininterval=1.0)
        empty_window = {"loss": 0.0, "nll": 0.0, "coverage": 0.0, "tokens": 0, "time": 0.0}
        window = dict(empty_window)
        total_tokens, train_seconds = 0, 0.0
        reason, validated_at = None, -1
        plan: list = []
        while reason is None:
            if o.max_epochs and self.epoch >= o.max_epochs:
                reason = f"reached trainer.max_epochs={o.max_epochs}"
                break
            plan = self._plan(self._epoch_batches())
            loader = iter(self._loader(plan[self.batch_in_epoch :]))
            while self.batch_in_epoch < len(plan):
                group = [next(loader) for _ in range(min(o.accum_steps, len(plan) - self.batch_in_epoch))]
                t0 = time.time()
                stats = self._train_step(group)
                updated = stats.updated
                self.step_seconds = dt = time.time() - t0
                self.batch_in_epoch += len(group)
                if updated:
                    for key in ("loss", "nll", "coverage", "tokens"):
                        window[key] += getattr(stats, key)
                    window["time"] += dt
                    total_tokens, train_seconds = total_tokens + stats.tokens, train_seconds + dt
                    bar.update(1)
                    if self.step % o.log_every == 0:
                        self._log_window(window, bar, bar_shown)
                        window = dict(empty_window)
                reason = self._agreed_stop_reason()
                if reason is None and updated and self.position >= self.next_validation - 1e-9:
                    validated_at = self.step
                    self.next_validation = self._validation_after(self.position)
                    if self._validate_and_save(len(plan)):
                        reason = (f"no better validation {o.valid_metric} for {o.patience} validations "
                                  "(trainer.patience)")
                if reason is not None:
                    break
            else:
                self.epoch += 1
                self.epoch_start = self.batch_in_epoch = 0
        bar.close()
        if self.stop_signal is not None:
            self.save(plan_length=len(plan))
            log.warning("stopped by %s at step %d; checkpoint saved to %s; continue with trainer.resume=true",
                        signal.Signals(self.stop_signal).name, self.step, self.checkpoints / "last.pt")
        elif validated_at != self.step:
            self._validate_and_save(len(plan))
        log.info("training stopped: %s", reason)
        summary = self._summary(reason, total_tokens / max(train_seconds, 1e-9))
        self._metrics({**summary, "final": True})
        return summary

    def _summary(self, reason: str, tokens_per_s: float) -> dict:
        """What fit() returns (and the metrics' final row), after trainer.average_last's averaging."""
        o = self.opts
        averaging = None
        if o.average_last and self.stop_signal is None:  # a signalled run is unfinished: it averages when resumed
            averaging = self.average_last_checkpoints()
        summary = {"step": self.step, "epoch": self.epoch, f"best_valid_{o.valid_metric}": self.best_score,
                   "train_tokens_per_s": tokens_per_s, "elapsed": self._elapsed(), "stop_reason": reason,
                   "final_lr": self.lr, "position": self.position, "setup": self.setup,
                   "signal": signal.Signals(self.stop_signal).name if self.stop_signal else None}
        if averaging is not None:
            summary["averaging"] = averaging
        return summary
