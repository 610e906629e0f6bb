"""The served models (each a run folder's checkpoint on the PyTorch backend, its generation defaults and its
worker) and what the routes do with a request: parse it, make it a job, shape the answer."""
from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from seq2seq.backends import BackendSettings
from seq2seq.backends.pytorch import TorchBackend
from seq2seq.config import config_dir
from seq2seq.data.corpus import GuidedDocument
from seq2seq.generation.options import GenerationOptions, guides_of
from seq2seq.host import resolve_device
from seq2seq.models.model import AttentionChoice
from seq2seq.runs import RunFolder, members
from seq2seq.serve.options import (NOT_REQUEST_OPTIONS, REQUEST_FIELDS, ApiError, Limits, option_types,
                                   options_key, request_options)
from seq2seq.serve.worker import Job, Worker
from seq2seq.visualize import EOS_PIECE, attention_record

log = logging.getLogger("seq2seq.serve")


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
    return OmegaConf.to_container(OmegaConf.load(Path(config_dir()) / "generation" / "beam.yaml"))


def _summary(name: str, run: RunFolder, model, tokenizer, checkpoint: Path, defaults: dict) -> dict:
    saved = run.saved_config
    model_cfg, data_cfg = saved.get("model") or {}, saved.get("data") or {}

    def part(key: str) -> dict:
        node = model_cfg.get(key) or {}
        keep = ("name", "cell", "layers", "heads", "hidden_size", "bidirectional", "ffn_dim")
        return {k: v for k, v in node.items() if k in keep}

    return {
        "name": name,
        "run": run.path.name,
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
                  precision: str = "fp32", kernels: dict | None = None, ensemble: dict | None = None,
                  **limits) -> "Server":
        """Load {name: run folder, or a list of run folders: their ensemble served as one model}; checkpoint:
        a name or a list (an ensemble of each run's checkpoints, seq2seq.runs.members); ensemble: weights and
        combine for the ensembles. generation: the composed generation settings (default: beam.yaml's, with
        these keys changed); overrides: the command line's, which of them win over each run's saved settings
        (default: the keys of generation=...), as seq2seq.runs.RunFolder.generation_settings reads them."""
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
            if not (isinstance(run, (str, Path)) and str(run)) and not (
                    isinstance(run, list) and run and all(isinstance(r, (str, Path)) and str(r) for r in run)):
                raise ValueError(f"models.{name} must be a run folder or a list of them (an ensemble), not {run!r}")
            models = members(run, checkpoint)
            run = models[0].run  # an ensemble starts from its first run's generation settings
            defaults = run.generation_settings(composed, overrides)
            settings = {k: v for k, v in defaults.items() if k not in NOT_REQUEST_OPTIONS}
            opts = GenerationOptions(**settings)  # the defaults alone must make valid options (else a ValueError: exit 2)
            for key in ("beam_size", "nbest"):
                if settings[key] > limits.max_beam_size:
                    raise ValueError(f"model {name}: generation.{key}={settings[key]} is more than "
                                     f"max_beam_size={limits.max_beam_size}; raise max_beam_size or lower it")
            # no request is known at start-up: precision=auto times 16 decodes of 20 random in-vocabulary pieces
            weights = (ensemble or {}).get("weights") if len(models) > 1 else None  # the ensembles' weights
            backend = TorchBackend.open(
                models, BackendSettings(device=dev, batch_tokens=limits.max_batch_tokens, precision=precision,
                                        kernels=kernels, weights=None if weights is None else tuple(weights),
                                        combine=(ensemble or {}).get("combine") or "logprob"),
                opts, need_attention=False, sample_texts=None, generation=settings, label=f"model {name}: precision")
            model, tokenizer, path = backend.model, backend.tokenizer, backend.checkpoint
            summary = _summary(name, run, model, tokenizer, path, settings)
            if len(backend.checkpoints) > 1:
                summary["ensemble"] = {"checkpoints": [f"{p.parent.parent.name}/{p.name}" for p in backend.checkpoints],
                                       "weights": model.weights, "combine": model.combine}
                summary["architecture"]["parameters"] = sum(p.numel() for p in model.parameters())
            served.append(ServedModel(name, run.path, model, tokenizer, path, settings, summary,
                                      Worker(name, backend, limits)))
            log.info("model %s: %s (%s)", name, " + ".join(map(str, backend.checkpoints)),
                     ", ".join(f"{k}={v}" for k, v in settings.items()))
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

    def parse(self, body: bytes) -> tuple[ServedModel, list[GuidedDocument], Any, bool]:
        """(model, inputs, options, attention) of a request body, or ApiError. An input is a string or an
        object {"text": ..., "prefix": ..., "constraints": [phrases]}; the request's "constraints", if given,
        is one list of phrases per input."""
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
        if not isinstance(inputs, list):
            raise ApiError(400, "inputs must be a list of strings (or of objects {\"text\": ..., \"prefix\": ...})")
        if not inputs:
            raise ApiError(400, "inputs is empty: send at least one input")
        inputs = [_input(i, x) for i, x in enumerate(inputs)]
        if request.get("constraints") is not None:
            inputs = _with_constraints(inputs, request["constraints"])
        if len(inputs) > self.limits.max_inputs:
            raise ApiError(413, f"{len(inputs)} inputs in one request; this server takes at most "
                                f"{self.limits.max_inputs} (max_inputs): split the request")
        served = self.models[name]
        opts, attention = request_options(served.defaults, request.get("options"), self.limits)
        if attention:
            try:
                served.model.check_report(AttentionChoice(opts.attention_layer, opts.attention_head))
            except ValueError as err:
                raise ApiError(400, str(err).replace("generation.", "options.")) from None
        if any(d.constraints for d in inputs) and opts.strategy != "beam" and not (
                opts.strategy == "mbr" and opts.mbr_candidates == "beam"):
            raise ApiError(400, f"constraints need beam search: options.strategy=beam, not {opts.strategy}")
        return served, inputs, opts, attention

    def job(self, served: ServedModel, inputs: list[GuidedDocument | str], opts, attention: bool) -> Job:
        inputs = [GuidedDocument(d) if isinstance(d, str) else d for d in inputs]
        limit = self.limits.max_input_tokens
        for i, doc in enumerate(inputs):  # a cheap bound before tokenizing: a subword has at least one character
            if len(doc.text) > 64 * limit:
                raise ApiError(413, f"inputs[{i}] is {len(doc.text)} characters long; this server takes at most "
                                    f"{limit} subwords per input (max_input_tokens)")
        src_ids = served.tokenizer.encode_src([d.text for d in inputs])
        for i, ids in enumerate(src_ids):
            if len(ids) > limit:
                raise ApiError(413, f"inputs[{i}] is {len(ids)} subwords long; this server takes at most "
                                    f"{limit} per input (max_input_tokens)")
        cap = served.model.max_positions - 1
        tokens = sum(min(len(ids), cap) + 1 for ids in src_ids if ids)
        guides = guides_of(served.tokenizer, inputs)
        for i, guide in enumerate(guides or []):
            size = len(guide.prefix) + sum(len(p) for p in guide.constraints)
            if size > min(limit, cap):
                raise ApiError(413, f"inputs[{i}]: its prefix and constraints are {size} subwords long; this server "
                                    f"takes at most {min(limit, cap)} (max_input_tokens, the model's longest output)")
        return Job(src_ids, opts, attention, options_key(opts, attention), tokens, time.monotonic(), guides=guides,
                   constraints=[d.constraints for d in inputs])

    def response(self, served: ServedModel, job: Job, results) -> dict:
        tok = served.tokenizer
        outputs = []
        for ids, hyps, phrases in zip(job.src_ids, results, job.constraints or [()] * len(results)):
            texts = tok.decode_tgt([h.tokens for h in hyps])
            best = hyps[0]
            out = {"text": texts[0], "score": _number(best.score), "logprob": _number(best.logprob)}
            if phrases:
                out["unmet_constraints"] = [phrases[j] for j in best.unmet]
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


INPUT_FIELDS = ("text", "prefix", "constraints")


def _input(i: int, item) -> GuidedDocument:
    """inputs[i]: a string, or an object with "text" and optional "prefix" and "constraints"."""
    if isinstance(item, dict):
        unknown = sorted(set(item) - set(INPUT_FIELDS))
        if unknown:
            raise ApiError(400, f"inputs[{i}]: unknown field(s) {', '.join(map(str, unknown))} "
                                f"(known: {', '.join(INPUT_FIELDS)})")
        text, prefix = item.get("text"), item.get("prefix")
        if not isinstance(text, str):
            raise ApiError(400, f"inputs[{i}].text must be a string")
        if prefix is not None and not isinstance(prefix, str):
            raise ApiError(400, f"inputs[{i}].prefix must be a string or null")
        phrases = _phrases(item.get("constraints"), f"inputs[{i}].constraints")
    elif isinstance(item, str):
        text, prefix, phrases = item, None, ()
    else:
        raise ApiError(400, f"inputs[{i}] must be a string or an object {{\"text\": ..., \"prefix\": ...}}, "
                            f"not {type(item).__name__}")
    for value, what in ((text, ""), (prefix or "", ".prefix"), *((p, ".constraints") for p in phrases)):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(400, f"inputs[{i}]{what} is not valid Unicode text (a lone surrogate)") from None
    return GuidedDocument(text, prefix or None, phrases)


def _phrases(value, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(400, f"{where} must be a list of strings (phrases), e.g. [\"Hund\", \"am Strand\"]")
    return tuple(v for v in value if v.strip())


def _with_constraints(inputs: list[GuidedDocument], given) -> list[GuidedDocument]:
    """The request's "constraints": one list of phrases per input."""
    if not isinstance(given, list) or len(given) != len(inputs):
        raise ApiError(400, f"constraints must be a list with one list of phrases per input ({len(inputs)}), "
                            f"e.g. [[\"Hund\"], [\"am Strand\"]]")
    out = []
    for i, (doc, phrases) in enumerate(zip(inputs, given)):
        if doc.constraints and phrases:
            raise ApiError(400, f"inputs[{i}] has constraints of its own and in the request's constraints: give one")
        out.append(dataclasses.replace(doc, constraints=doc.constraints or _phrases(phrases, f"constraints[{i}]")))
    return out


def _number(x: float):
    x = float(x)
    return x if math.isfinite(x) else None
