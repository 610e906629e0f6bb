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
from __future__ import annotations

import dataclasses
import logging

from omegaconf import DictConfig

from seq2seq.cli import command_line_overrides
from seq2seq.config import setup_logging, to_dict, to_plain
from seq2seq.host import set_threads
from seq2seq.serve.app import GENERATE_PATHS, create_app, is_loopback
from seq2seq.serve.options import ApiError, Limits, request_options
from seq2seq.serve.registry import Server, ServedModel, default_generation

__all__ = ["serve", "Server", "ServedModel", "Limits", "ApiError", "create_app", "request_options",
           "default_generation", "GENERATE_PATHS"]

log = logging.getLogger("seq2seq.serve")


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
                              generation=to_dict(cfg.generation), overrides=command_line_overrides(),
                              checkpoint=to_plain(cfg.checkpoint), device=cfg.device, precision=cfg.precision,
                              kernels=to_dict(cfg.kernels), ensemble=to_dict(cfg.ensemble),
                              auth_token=None if cfg.auth_token is None else str(cfg.auth_token), **limits)
    app = create_app(server)
    if not is_loopback(str(cfg.host)):
        log.warning("serving on %s: other machines can reach this server%s", cfg.host,
                    "" if server.auth_token else " and no auth_token is set")
    log.info("serving %s on http://%s:%d/ (batch_wait_ms=%s, max_batch_tokens=%d)", ", ".join(server.models),
             cfg.host, cfg.port, limits["batch_wait_ms"], limits["max_batch_tokens"])
    uvicorn.run(app, host=str(cfg.host), port=int(cfg.port), log_level="info", access_log=bool(cfg.access_log))


if __name__ == "__main__":  # python -m seq2seq.serve: the seq2seq-serve command
    from seq2seq.cli.serve import main

    main()
