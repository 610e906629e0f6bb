"""What every decoding backend offers (`Backend`) and what it is told (`BackendSettings`)."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Protocol

import torch

from seq2seq.data.tokenizer import Tokenizer
from seq2seq.generation.options import GenerationOptions, Guide, Hypothesis


class Backend(Protocol):
    name: str
    tokenizer: Tokenizer
    checkpoint: Path      # the file (or exported folder) the outputs come from
    max_positions: int    # longest source (EOS included) the model reads; longer ones are truncated
    model: torch.nn.Module | None  # this project's model where the backend has one (attention reports)

    def decode(self, src_ids: list[list[int]], opts: GenerationOptions, *, need_attention: bool = False,
               progress=None, guides: list[Guide] | None = None) -> list[list[Hypothesis]]:
        """Hypotheses (best first) of every source, in input order; an empty source gives one empty hypothesis;
        guides: one per source (a target prefix), refused by a backend that cannot honour them."""


@dataclasses.dataclass(frozen=True)
class BackendSettings:
    """How to decode, as seq2seq-decode's config says it (each backend refuses what it cannot honour)."""

    name: str = "torch"
    device: torch.device = torch.device("cpu")
    batch_tokens: int = 6000
    precision: str = "auto"          # torch: auto | fp32 | bf16 (seq2seq.training.precision)
    kernels: dict | None = None      # torch, on a CPU: kernels.linear, attention, onednn_cache_capacity, cache_dir
    compute_type: str = "default"    # ctranslate2: int8 | int8_float32 | float32 | ...
    weights: tuple | None = None     # torch, several members: ensemble.weights (None: equal)
    combine: str = "logprob"         # torch, several members: ensemble.combine (seq2seq.generation.ensemble)
