"""`seq2seq-serve models='{en-de: outputs/m30k, samsum: outputs/samsum}' [host=127.0.0.1] [port=8080] [generation.beam_size=5 ...] [auth_token=...]`.

Serves run folders over HTTP (FastAPI + uvicorn: `pip install -e ".[serve]"`):

* `POST /v1/generate` (aliases `/v1/translate`, `/v1/summarize`) with
  `{"model": "en-de", "inputs": ["...", ...], "options": {"beam_size": 5, "attention": true, ...}}`
  answers `{"model", "outputs": [{"text", "score", "logprob"[, "nbest"][, "attention"]}, ...], "options"}`,
  one output per input, in input order. `model` may be left out when one model is served.
  `options` are the generation settings (generation.* of seq2seq-decode, except print_alignment) and
  `attention`; what a request leaves out is the model's default: the run's own generation settings
  (its config.yaml) overridden by the command line's generation.<key>=<value>, as seq2seq-decode does,
  so a request gives the texts and scores seq2seq-decode gives for the same inputs and settings.
  `attention` adds the best hypothesis' cross-attention: source and target pieces (each with </s>)
  and the weights [target][source] (generation.attention_layer / attention_head pick the layer and head).
* `GET /v1/models`: each model's configuration summary, generation defaults and counters.
* `GET /health`: status and counters (requests, inputs, batches); `GET /`: a web page to try a model.

Dynamic batching: one worker thread per model owns it. A request waits at most batch_wait_ms
(counted from the oldest waiting request) for others; the waiting requests, up to max_batch_tokens
source tokens, are then decoded together, those with identical options in one decode_ids call.
Each caller gets its own outputs. Per-request limits (max_inputs, max_input_tokens,
max_request_bytes, max_beam_size) and a cap on waiting inputs (max_pending_inputs, then 503) keep one
client from starving the others.

A bad request is answered with a 4xx status and `{"error": "<one line>"}`; the server keeps serving.
It binds 127.0.0.1 unless host= says otherwise, never opens a path named in a request (models are
the configured names only), and with auth_token set (or SEQ2SEQ_SERVE_TOKEN in the environment)
answers 401 to /v1/* requests without `Authorization: Bearer <token>`.
"""
# No `from __future__ import annotations`: FastAPI reads the route functions' annotations (Request) at run time.
import asyncio
import contextlib
import dataclasses
import hmac
import ipaddress
import json
import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from seq2seq.cli import Command
from seq2seq.config import config_dir, resolve_device, set_threads, setup_logging, to_dict

log = logging.getLogger("seq2seq.serve")

STATIC = Path(__file__).resolve().parent / "static"
GENERATE_PATHS = ("/v1/generate", "/v1/translate", "/v1/summarize")
REQUEST_FIELDS = ("model", "inputs", "options")
NOT_REQUEST_OPTIONS = ("print_alignment",)  # seq2seq-decode's output format, not a setting of a result
INT_RANGE = 2**31 - 1


@dataclasses.dataclass
class Limits:
    """What one request may ask for, and how requests are batched (conf/serve.yaml explains each)."""

    batch_wait_ms: float = 5.0
    max_batch_tokens: int = 6000
    max_inputs: int = 64
    max_input_tokens: int = 256
    max_request_bytes: int = 1_000_000
    max_beam_size: int = 16
    max_pending_inputs: int = 1024

    def __post_init__(self):
        if not (isinstance(self.batch_wait_ms, (int, float)) and 0 <= self.batch_wait_ms <= 10_000):
            raise ValueError(f"batch_wait_ms={self.batch_wait_ms} must be between 0 and 10000")
        for name in ("max_batch_tokens", "max_inputs", "max_input_tokens", "max_request_bytes", "max_beam_size",
                     "max_pending_inputs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value} must be a positive integer")
        if self.max_pending_inputs < self.max_inputs:
            raise ValueError(f"max_pending_inputs={self.max_pending_inputs} must be at least "
                             f"max_inputs={self.max_inputs}, or no full request could ever wait")


class ApiError(Exception):
    """A request that cannot be served: its HTTP status and a one-line message."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


# ---------------------------------------------------------------- generation options of a request
def option_types() -> dict[str, str]:
    """Request option name -> 'int' | 'float' | 'str' | 'bool' (GenerationOptions' fields, and attention)."""
    from seq2seq.generation.search import GenerationOptions

    types = {f.name: f.type if isinstance(f.type, str) else f.type.__name__
             for f in dataclasses.fields(GenerationOptions) if f.name not in NOT_REQUEST_OPTIONS}
    types["attention"] = "bool"
    return types


def _checked_value(name: str, value: Any, kind: str):
    what = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}[kind]
    given = f"{json.dumps(value)[:40]} ({type(value).__name__ if value is not None else 'null'})"
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        if ok and abs(value) > INT_RANGE:
            raise ApiError(400, f"options.{name}={value} is out of range")
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):
            raise ApiError(400, f"options.{name} must be a finite number, not {value}")
        if ok:
            value = float(value)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ApiError(400, f"options.{name} must be {what}, not {given}")
    return value


def request_options(defaults: dict, given: Any, limits: Limits):
    """(GenerationOptions, attention wanted) of a request's "options" over the model's defaults."""
    from seq2seq.generation.search import GenerationOptions

    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ApiError(400, f"options must be an object, not {type(given).__name__}")
    types = option_types()
    unknown = sorted(set(given) - set(types))
    if unknown:
        raise ApiError(400, f"unknown option(s): {', '.join(map(str, unknown))} (known: {', '.join(sorted(types))})")
    settings = dict(defaults)
    attention = False
    for name, value in given.items():
        value = _checked_value(name, value, types[name])
        if name == "attention":
            attention = value
        else:
            settings[name] = value
    for name in ("beam_size", "nbest"):
        if settings[name] > limits.max_beam_size:
            raise ApiError(400, f"options.{name}={settings[name]} is more than this server allows "
                                f"(max_beam_size={limits.max_beam_size})")
    try:
        opts = GenerationOptions(**settings)
    except ValueError as err:
        raise ApiError(400, str(err).replace("generation.", "options.")) from None
    return opts, attention


def options_key(opts, attention: bool) -> tuple:
    """Requests whose keys are equal are decoded together."""
    return tuple(sorted(dataclasses.asdict(opts).items())) + (("attention", attention),)


# ---------------------------------------------------------------- models and their worker threads
@dataclasses.dataclass
class Job:
    src_ids: list[list[int]]
    opts: Any                # GenerationOptions
    attention: bool
    key: tuple
    tokens: int              # source tokens (+ EOS) as decoded: what max_batch_tokens counts
    arrived: float           # time.monotonic()
    future: Future = dataclasses.field(default_factory=Future)
    batch: dict | None = None  # filled by the worker: the batch this job was decoded in


class Worker:
    """The one thread that decodes with a model: collects waiting jobs, groups them by options, decodes."""

    def __init__(self, name: str, model, device, limits: Limits, amp=None):
        """amp: the autocast dtype of decoding (None: fp32; precision=auto chose it at start-up)."""
        self.name, self.model, self.device, self.limits, self.amp = name, model, device, limits, amp
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
        import torch

        from seq2seq.generation.decoding import decode_ids

        src_ids = [ids for job in group for ids in job.src_ids]
        first = group[0]
        try:
            with torch.autocast(self.device.type, dtype=self.amp) if self.amp else contextlib.nullcontext():
                results = decode_ids(self.model, src_ids, first.opts, batch_tokens=self.limits.max_batch_tokens,
                                     device=self.device, need_attention=first.attention)
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


@dataclasses.dataclass
class ServedModel:
    name: str
    run: Path
    model: Any
    tokenizer: Any
    checkpoint: Path
    defaults: dict           # generation settings a request starts from
    summary: dict
    worker: Worker


def default_generation() -> dict:
    """conf/generation/beam.yaml: what seq2seq-decode composes when nothing is set."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(Path(config_dir()) / "generation" / "beam.yaml"))


def _summary(name: str, run: Path, model, tokenizer, checkpoint: Path, defaults: dict) -> dict:
    from omegaconf import OmegaConf

    saved = {}
    if (run / "config.yaml").is_file():
        saved = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"))
    model_cfg, data_cfg = saved.get("model") or {}, saved.get("data") or {}

    def part(key: str) -> dict:
        node = model_cfg.get(key) or {}
        keep = ("name", "cell", "layers", "heads", "hidden_size", "bidirectional", "ffn_dim")
        return {k: v for k, v in node.items() if k in keep}

    return {
        "name": name,
        "run": run.name,
        "checkpoint": checkpoint.name,
        "data": {k: data_cfg.get(k) for k in ("name", "src", "tgt") if k in data_cfg},
        "architecture": {
            "encoder": part("encoder") or type(model.encoder).__name__,
            "decoder": part("decoder") or type(model.decoder).__name__,
            "attention": part("attention").get("name") if part("attention") else None,
            "output": part("output").get("name") if part("output") else type(model.output_layer).__name__,
            "embed_dim": model_cfg.get("embed_dim"),
            "max_positions": model.max_positions,
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        "vocabulary": {"source": tokenizer.src_vocab_size, "target": tokenizer.tgt_vocab_size,
                       "joint": tokenizer.joint},
        "generation": {k: v for k, v in defaults.items() if k not in NOT_REQUEST_OPTIONS},
    }


class Server:
    """The served models, their workers and limits; create_app(server) is the HTTP side."""

    def __init__(self, models: list[ServedModel], limits: Limits, auth_token: str | None = None):
        if not models:
            raise ValueError("no models to serve: set models='{name: run folder, ...}'")
        self.models = {m.name: m for m in models}
        self.limits = limits
        self.auth_token = auth_token or None
        self.started = time.time()

    @classmethod
    def from_runs(cls, runs: dict, *, generation: dict | None = None, overrides: list[str] | None = None,
                  checkpoint: str = "best", device: str = "cpu", auth_token: str | None = None,
                  precision: str = "fp32", kernels: dict | None = None, **limits) -> "Server":
        """Load {name: run folder}. generation: the composed generation settings (default: beam.yaml's, with
        these keys changed); overrides: the command line's, which of them win over each run's saved settings
        (default: the keys of generation=...), as seq2seq.decode.generation_settings reads them."""
        from seq2seq.decode import generation_settings, load_run
        from seq2seq.generation.search import GenerationOptions

        if not isinstance(runs, dict) or not runs:
            raise ValueError("models must be a non-empty mapping of names to run folders, "
                             "e.g. models='{en-de: outputs/m30k}'")
        composed = default_generation()
        unknown = sorted(set(generation or {}) - set(composed))
        if unknown:
            raise ValueError(f"unknown generation setting(s): {', '.join(unknown)}")
        composed.update(generation or {})
        if overrides is None:
            overrides = [f"generation.{key}={value}" for key, value in (generation or {}).items()]
        limits = Limits(**limits)
        dev = resolve_device(device)
        served = []
        for name, run in runs.items():
            name = str(name)
            if not name or not all(c.isalnum() or c in "-_." for c in name):
                raise ValueError(f"model name {name!r} must be letters, digits, '-', '_' or '.'")
            if not isinstance(run, (str, Path)) or not str(run):
                raise ValueError(f"models.{name} must be a run folder, not {run!r}")
            run = Path(run)
            model, tokenizer, path = load_run(run, checkpoint, dev)
            defaults = generation_settings(composed, run, overrides)
            settings = {k: v for k, v in defaults.items() if k not in NOT_REQUEST_OPTIONS}
            GenerationOptions(**settings)  # the defaults alone must make valid options (else a ValueError: exit 2)
            for key in ("beam_size", "nbest"):
                if settings[key] > limits.max_beam_size:
                    raise ValueError(f"model {name}: generation.{key}={settings[key]} is more than "
                                     f"max_beam_size={limits.max_beam_size}; raise max_beam_size or lower it")
            amp = _decoding_paths(name, model, tokenizer, path, settings, dev, precision, kernels, limits)
            worker = Worker(name, model, dev, limits, amp)
            served.append(ServedModel(name, run, model, tokenizer, path, settings,
                                      _summary(name, run, model, tokenizer, path, settings), worker))
            log.info("model %s: %s (%s)", name, path, ", ".join(f"{k}={v}" for k, v in settings.items()))
        return cls(served, limits, auth_token)

    def close(self) -> None:
        for m in self.models.values():
            m.worker.close()

    # ------------------------------------------------------------ what the routes do
    def check_token(self, authorization: str | None) -> None:
        if self.auth_token is None:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.auth_token.encode()):
            raise ApiError(401, "missing or wrong token: send 'Authorization: Bearer <token>'",
                           {"WWW-Authenticate": "Bearer"})

    def stats(self) -> dict:
        per_model = {name: m.worker.snapshot() for name, m in self.models.items()}
        total = {key: sum(s[key] for s in per_model.values())
                 for key in ("requests", "inputs", "batches", "batched_requests", "errors", "pending_inputs")}
        total["max_batch_requests"] = max(s["max_batch_requests"] for s in per_model.values())
        total["max_batch_inputs"] = max(s["max_batch_inputs"] for s in per_model.values())
        return {"total": total, "models": per_model}

    def health(self) -> dict:
        stats = self.stats()
        return {"status": "ok", "models": list(self.models), "uptime_s": round(time.time() - self.started, 1),
                **stats["total"]}

    def list_models(self) -> dict:
        stats = self.stats()["models"]
        limits = {k: v for k, v in dataclasses.asdict(self.limits).items()}
        return {"models": [{**m.summary, "stats": stats[name]} for name, m in self.models.items()],
                "limits": limits, "options": option_types()}

    def parse(self, body: bytes) -> tuple[ServedModel, list[str], Any, bool]:
        """(model, inputs, options, attention) of a request body, or ApiError."""
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError) as err:
            raise ApiError(400, f"the request body is not valid JSON: {err}") from None
        except RecursionError:
            raise ApiError(400, "the request body is not valid JSON here: nested too deeply") from None
        if not isinstance(request, dict):
            raise ApiError(400, f"the request must be a JSON object with {', '.join(REQUEST_FIELDS)}, "
                                f"not {type(request).__name__}")
        unknown = sorted(set(request) - set(REQUEST_FIELDS))
        if unknown:
            raise ApiError(400, f"unknown field(s): {', '.join(unknown)} (known: {', '.join(REQUEST_FIELDS)})")
        name = request.get("model")
        if name is None:
            if len(self.models) != 1:
                raise ApiError(400, f"say which model: \"model\" is one of {', '.join(self.models)}")
            name = next(iter(self.models))
        if not isinstance(name, str):
            raise ApiError(400, f"model must be a string, not {type(name).__name__}")
        if name not in self.models:
            raise ApiError(404, f"unknown model {name[:100]!r} (served: {', '.join(self.models)})")
        inputs = request.get("inputs")
        if not isinstance(inputs, list) or not all(isinstance(x, str) for x in inputs):
            raise ApiError(400, "inputs must be a list of strings")
        if not inputs:
            raise ApiError(400, "inputs is empty: send at least one input")
        for i, text in enumerate(inputs):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(400, f"inputs[{i}] is not valid Unicode text (a lone surrogate)") from None
        if len(inputs) > self.limits.max_inputs:
            raise ApiError(413, f"{len(inputs)} inputs in one request; this server takes at most "
                                f"{self.limits.max_inputs} (max_inputs): split the request")
        served = self.models[name]
        opts, attention = request_options(served.defaults, request.get("options"), self.limits)
        if attention:
            from seq2seq.models.model import AttentionChoice

            try:
                served.model.check_report(AttentionChoice(opts.attention_layer, opts.attention_head))
            except ValueError as err:
                raise ApiError(400, str(err).replace("generation.", "options.")) from None
        return served, inputs, opts, attention

    def job(self, served: ServedModel, inputs: list[str], opts, attention: bool) -> Job:
        limit = self.limits.max_input_tokens
        for i, text in enumerate(inputs):  # a cheap bound before tokenizing: a subword has at least one character
            if len(text) > 64 * limit:
                raise ApiError(413, f"inputs[{i}] is {len(text)} characters long; this server takes at most "
                                    f"{limit} subwords per input (max_input_tokens)")
        src_ids = served.tokenizer.encode_src(inputs)
        for i, ids in enumerate(src_ids):
            if len(ids) > limit:
                raise ApiError(413, f"inputs[{i}] is {len(ids)} subwords long; this server takes at most "
                                    f"{limit} per input (max_input_tokens)")
        cap = served.model.max_positions - 1
        tokens = sum(min(len(ids), cap) + 1 for ids in src_ids if ids)
        return Job(src_ids, opts, attention, options_key(opts, attention), tokens, time.monotonic())

    def response(self, served: ServedModel, job: Job, results) -> dict:
        from seq2seq.visualize import EOS_PIECE, attention_record

        tok = served.tokenizer
        outputs = []
        for ids, hyps in zip(job.src_ids, results):
            texts = tok.decode_tgt([h.tokens for h in hyps])
            best = hyps[0]
            out = {"text": texts[0], "score": _number(best.score), "logprob": _number(best.logprob)}
            if job.opts.nbest > 1:
                out["nbest"] = [{"text": t, "score": _number(h.score), "logprob": _number(h.logprob)}
                                for h, t in zip(hyps, texts)]
            if job.attention:
                if ids and best.attention is not None:
                    src = tok.src_pieces(ids[: served.model.max_positions - 1]) + [EOS_PIECE]
                    tgt = tok.tgt_pieces(best.tokens) + [EOS_PIECE]
                    record = attention_record(0, src, tgt, best.attention)
                    out["attention"] = {k: record[k] for k in ("source", "target", "weights")}
                else:
                    out["attention"] = {"source": [], "target": [], "weights": []}
            outputs.append(out)
        options = {k: v for k, v in dataclasses.asdict(job.opts).items() if k not in NOT_REQUEST_OPTIONS}
        return {"model": served.name, "outputs": outputs, "options": {**options, "attention": job.attention},
                "batch": job.batch}


def _number(x: float):
    x = float(x)
    return x if math.isfinite(x) else None


# ---------------------------------------------------------------- HTTP
def create_app(server: Server):
    """The FastAPI application of a Server (its workers stop when the application shuts down)."""
    try:
        from contextlib import asynccontextmanager

        from fastapi import FastAPI, Request
        from fastapi.responses import HTMLResponse, JSONResponse
        from starlette.exceptions import HTTPException
    except ImportError as err:
        raise ValueError(f"seq2seq-serve needs FastAPI and uvicorn ({err}): pip install -e \".[serve]\"") from None

    @asynccontextmanager
    async def lifespan(app):
        yield
        server.close()

    app = FastAPI(title="seq2seq", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    page_file = STATIC / "index.html"

    @app.exception_handler(ApiError)
    async def api_error(request, err: ApiError):
        return JSONResponse({"error": err.message}, status_code=err.status, headers=err.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request, err: HTTPException):  # 404 for an unknown path, 405 for a wrong method
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code,
                            headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request, err: Exception):  # a bug: logged with its traceback by the server
        return JSONResponse({"error": f"internal error ({type(err).__name__})"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        if not page_file.is_file():
            raise ApiError(404, f"the web page is not installed ({page_file.name} missing)")
        return HTMLResponse(page_file.read_text(encoding="utf-8"))

    @app.get("/health")
    async def health():
        return server.health()

    @app.get("/v1/models")
    async def models(request: Request):
        server.check_token(request.headers.get("authorization"))
        return server.list_models()

    async def generate(request: Request):
        server.check_token(request.headers.get("authorization"))
        body = await _read_body(request, server.limits.max_request_bytes)
        served, inputs, opts, attention = server.parse(body)
        job = server.job(served, inputs, opts, attention)
        start = time.perf_counter()
        try:
            results = await asyncio.wrap_future(served.worker.submit(job))
        except ApiError:
            raise
        except Exception as err:  # noqa: BLE001 - a failed decode is this request's error, not the server's
            raise ApiError(500, f"decoding failed: {type(err).__name__}: {' '.join(str(err).split())[:300]}") from None
        answer = server.response(served, job, results)
        answer["latency_ms"] = round((time.perf_counter() - start) * 1000, 2)
        return answer

    for path in GENERATE_PATHS:
        app.add_api_route(path, generate, methods=["POST"])
    return app


async def _read_body(request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"the request body is {int(length)} bytes; this server takes at most {limit} "
                            f"(max_request_bytes)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"the request body is more than {limit} bytes (max_request_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _command_line_overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _decoding_paths(name, model, tokenizer, path, settings, device, precision: str, kernels: dict | None, limits):
    """The served model's kernels and autocast dtype (None: fp32): no request is known at start-up, so
    precision=auto times 16 decodes of 20 random in-vocabulary pieces."""
    import torch

    from seq2seq.generation.search import GenerationOptions
    from seq2seq.training import precision as choosing

    g = torch.Generator().manual_seed(0)
    sample = torch.randint(4, max(tokenizer.src_vocab_size, 5), (16, 20), generator=g).tolist()
    return choosing.decoding_paths(
        model, sample, GenerationOptions(**settings), device, requested=precision,
        kernels=kernels or {"linear": "mkl", "onednn_cache_capacity": 16, "cache_dir": None},
        batch_tokens=limits.max_batch_tokens, checkpoint=path, settings=settings, what=f"model {name}: precision")


def serve(cfg: DictConfig) -> None:
    setup_logging()
    if not isinstance(cfg.port, int) or isinstance(cfg.port, bool) or not 0 <= cfg.port <= 65535:
        raise ValueError(f"port={cfg.port} must be a port number (0 to 65535)")
    set_threads(cfg.threads)
    try:
        import uvicorn
    except ImportError as err:
        raise ValueError(f"seq2seq-serve needs FastAPI and uvicorn ({err}): pip install -e \".[serve]\"") from None
    if not isinstance(cfg.models, DictConfig):
        raise ValueError(f"models must map names to run folders, e.g. models='{{en-de: outputs/m30k}}', "
                         f"not {cfg.models!r}")
    limits = {f.name: cfg[f.name] for f in dataclasses.fields(Limits)}
    server = Server.from_runs(to_dict(cfg.models),
                              generation=to_dict(cfg.generation), overrides=_command_line_overrides(),
                              checkpoint=cfg.checkpoint, device=cfg.device, precision=cfg.precision,
                              kernels=to_dict(cfg.kernels),
                              auth_token=None if cfg.auth_token is None else str(cfg.auth_token), **limits)
    app = create_app(server)
    if not is_loopback(str(cfg.host)):
        log.warning("serving on %s: other machines can reach this server%s", cfg.host,
                    "" if server.auth_token else " and no auth_token is set")
    log.info("serving %s on http://%s:%d/ (batch_wait_ms=%s, max_batch_tokens=%d)", ", ".join(server.models),
             cfg.host, cfg.port, limits["batch_wait_ms"], limits["max_batch_tokens"])
    uvicorn.run(app, host=str(cfg.host), port=int(cfg.port), log_level="info", access_log=bool(cfg.access_log))


COMMAND = Command("serve")  # one-line error reports and exit codes: seq2seq.cli


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="serve")
@COMMAND.task
def _hydra_main(cfg: DictConfig) -> None:
    serve(cfg)


def main() -> None:
    COMMAND.run(_hydra_main)


if __name__ == "__main__":
    main()
