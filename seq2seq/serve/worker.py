"""Dynamic batching: one worker thread per served model collects the waiting jobs (at most batch_wait_ms after
the oldest, up to max_batch_tokens source tokens), groups them by options and decodes each group in one call."""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future

from seq2seq.backends.pytorch import TorchBackend
from seq2seq.generation.options import GenerationOptions, Guide
from seq2seq.serve.options import ApiError, Limits

log = logging.getLogger("seq2seq.serve")


@dataclasses.dataclass
class Job:
    src_ids: list[list[int]]
    opts: GenerationOptions
    attention: bool
    key: tuple
    tokens: int              # source tokens (+ EOS) as decoded: what max_batch_tokens counts
    arrived: float           # time.monotonic()
    future: Future = dataclasses.field(default_factory=Future)
    batch: dict | None = None  # filled by the worker: the batch this job was decoded in
    guides: list[Guide] | None = None  # one per input (prefix, phrases), None when no input has either
    constraints: list | None = None    # each input's phrases as text, for the answer's unmet_constraints


class Worker:
    """The one thread that decodes with a model: collects waiting jobs, groups them by options, decodes."""

    def __init__(self, name: str, backend: TorchBackend, limits: Limits):
        """backend: the model on its device, kernels and precision (precision=auto chose them at start-up)."""
        self.name, self.backend, self.limits = name, backend, limits
        self._pending: deque[Job] = deque()
        self._pending_inputs = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.stats = {"requests": 0, "inputs": 0, "batches": 0, "batched_requests": 0,
                      "max_batch_requests": 0, "max_batch_inputs": 0, "errors": 0}

    def submit(self, job: Job) -> Future:
        with self._cond:
            if self._closed:
                raise ApiError(503, "the server is shutting down")
            n = len(job.src_ids)
            if self._pending_inputs + n > self.limits.max_pending_inputs:
                raise ApiError(503, f"model '{self.name}' is busy ({self._pending_inputs} inputs waiting); "
                                    f"retry later", {"Retry-After": "1"})
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=f"seq2seq-serve-{self.name}", daemon=True)
                self._thread.start()
            self._pending.append(job)
            self._pending_inputs += n
            self._cond.notify()
        return job.future

    def close(self, timeout: float = 30.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def snapshot(self) -> dict:
        with self._cond:
            return {**self.stats, "pending_inputs": self._pending_inputs}

    def _take(self) -> list[Job] | None:
        """Wait for jobs; then for batch_wait_ms after the oldest one (or until max_batch_tokens wait)."""
        wait = self.limits.batch_wait_ms / 1000.0
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if not self._pending:
                return None
            deadline = self._pending[0].arrived + wait
            while not self._closed and sum(j.tokens for j in self._pending) < self.limits.max_batch_tokens:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            jobs, tokens = [], 0
            while self._pending and (not jobs or tokens + self._pending[0].tokens <= self.limits.max_batch_tokens):
                job = self._pending.popleft()
                self._pending_inputs -= len(job.src_ids)
                if job.future.set_running_or_notify_cancel():  # False: its caller went away
                    jobs.append(job)
                    tokens += job.tokens
            return jobs

    def _loop(self) -> None:
        while True:
            jobs = self._take()
            if jobs is None:
                return
            groups: dict[tuple, list[Job]] = {}
            for job in jobs:
                groups.setdefault(job.key, []).append(job)
            for group in groups.values():
                try:
                    self._decode(group)
                except Exception as err:  # noqa: BLE001 - a bug here must not leave callers waiting forever
                    log.exception("model %s: a batch failed", self.name)
                    for job in group:
                        if not job.future.done():
                            job.future.set_exception(err)

    def _decode(self, group: list[Job]) -> None:
        src_ids = [ids for job in group for ids in job.src_ids]
        guides = None
        if any(job.guides for job in group):
            guides = [g for job in group for g in (job.guides or [Guide() for _ in job.src_ids])]
        first = group[0]
        try:
            results = self.backend.decode(src_ids, first.opts, need_attention=first.attention, guides=guides)
        except Exception as err:  # noqa: BLE001 - every caller gets the error, the worker goes on
            log.exception("model %s: decoding %d inputs failed", self.name, len(src_ids))
            with self._cond:
                self.stats["errors"] += len(group)
            for job in group:
                job.future.set_exception(err)
            return
        with self._cond:
            s = self.stats
            s["batches"] += 1
            s["requests"] += len(group)
            s["inputs"] += len(src_ids)
            s["batched_requests"] += len(group) if len(group) > 1 else 0
            s["max_batch_requests"] = max(s["max_batch_requests"], len(group))
            s["max_batch_inputs"] = max(s["max_batch_inputs"], len(src_ids))
            batch = {"id": s["batches"], "requests": len(group), "inputs": len(src_ids)}
        start = 0
        for job in group:
            job.batch = batch
            job.future.set_result(results[start:start + len(job.src_ids)])
            start += len(job.src_ids)
