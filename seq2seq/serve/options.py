"""What a request may ask for: the server's Limits, a request's generation options over the model's defaults
(checked one by one, each error a 4xx ApiError), and the key that groups requests decoded together."""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from seq2seq.generation.options import GenerationOptions

REQUEST_FIELDS = ("model", "inputs", "options", "constraints")
NOT_REQUEST_OPTIONS = ("print_alignment",)  # seq2seq-decode's output format, not a setting of a result
INT_RANGE = 2**31 - 1


@dataclasses.dataclass
class Limits:
    """What one request may ask for, and how requests are batched (conf/serve.yaml explains each)."""

    batch_wait_ms: float = 5.0         # a request waits this long for others (from the oldest waiting one)
    max_batch_tokens: int = 6000       # source tokens decoded together; one request may exceed it
    max_inputs: int = 64               # inputs in one request
    max_input_tokens: int = 256        # source subwords in one input
    max_request_bytes: int = 1_000_000  # size of one request body
    max_beam_size: int = 16            # largest options.beam_size (and nbest)
    max_pending_inputs: int = 1024     # inputs waiting per model; more are answered 503

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



def option_types() -> dict[str, str]:
    """Request option name -> 'int' | 'float' | 'str' | 'bool' (GenerationOptions' fields, and attention)."""
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
