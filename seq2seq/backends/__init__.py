"""Decoding backends: what turns a run's checkpoint and source ids into hypotheses for seq2seq-decode
(and, for the PyTorch backend, the server). Each backend is one module offering the `Backend` protocol;
`open_backend` picks one by name (decode.yaml's `backend`), and a backend refuses, with a message, the
settings it cannot honour instead of ignoring them.

    torch        seq2seq.backends.pytorch: this project's search (every strategy, control and attention report)
    ctranslate2  seq2seq.backends.ctranslate2: the checkpoint exported once into <run>/exports/, decoded by
                 CTranslate2 (pip install seq2seq[export])
"""
from __future__ import annotations

from seq2seq.backends.base import Backend, BackendSettings
from seq2seq.backends.ctranslate2 import CTranslate2Backend
from seq2seq.backends.pytorch import TorchBackend
from seq2seq.generation.options import GenerationOptions
from seq2seq.runs import Member

__all__ = ["Backend", "BackendSettings", "open_backend", "BACKENDS"]

BACKENDS = {"torch": TorchBackend, "ctranslate2": CTranslate2Backend}


def open_backend(members: list[Member], settings: BackendSettings, opts: GenerationOptions, *,
                 need_attention: bool, sample_texts: list[str] | None, generation: dict, label: str) -> Backend:
    """The named backend for the members' checkpoints (several: their ensemble). sample_texts: inputs that
    precision=auto times (None: random in-vocabulary pieces); generation: the settings in force (part of that
    timing's cache key)."""
    if settings.name not in BACKENDS:
        raise ValueError(f"backend={settings.name}: choose one of {', '.join(BACKENDS)}")
    return BACKENDS[settings.name].open(members, settings, opts, need_attention=need_attention,
                                        sample_texts=sample_texts, generation=generation, label=label)
