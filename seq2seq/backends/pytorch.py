"""The PyTorch backend: this project's own search (seq2seq.generation) over a run's checkpoint (or the ensemble
of several, seq2seq.generation.ensemble), on the host's kernels and, where precision=auto measured it faster,
in bf16 autocast."""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import torch

from seq2seq.backends.base import BackendSettings
from seq2seq.data.tokenizer import Tokenizer
from seq2seq.generation.decoding import decode_ids
from seq2seq.generation import mbr
from seq2seq.generation.ensemble import Ensemble, check_vocabularies
from seq2seq.generation.options import GenerationOptions, Guide, Hypothesis
from seq2seq.models.model import AttentionChoice, EncoderDecoder
from seq2seq.runs import Member
from seq2seq.training import precision

def mbr_select(results: list[list[Hypothesis]], tokenizer: Tokenizer, opts: GenerationOptions) -> list[list[Hypothesis]]:
    """strategy=mbr: each input's candidates reduced to its nbest by expected utility (seq2seq.generation.mbr)."""
    texts = tokenizer.decode_tgt([h.tokens for hyps in results for h in hyps])
    chosen, start = [], 0
    for hyps in results:
        chosen.append(mbr.select(hyps, texts[start:start + len(hyps)], opts.mbr_utility, opts.nbest))
        start += len(hyps)
    return chosen


DEFAULT_KERNELS = {"linear": "mkl", "attention": "fused", "onednn_cache_capacity": 16, "cache_dir": None}


def random_sample(vocab_size: int, sentences: int = 16, length: int = 20) -> list[list[int]]:
    """Source ids to time decoding with when no input is known yet (the server at start-up)."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(4, max(vocab_size, 5), (sentences, length), generator=g).tolist()


@dataclasses.dataclass
class TorchBackend:
    model: EncoderDecoder | Ensemble
    tokenizer: Tokenizer
    checkpoint: Path                # the first (or only) member's file
    device: torch.device
    batch_tokens: int
    amp: torch.dtype | None = None  # the autocast dtype of decoding (None: fp32)
    name: str = "torch"
    checkpoints: tuple = ()         # every member's file (an ensemble has several)

    @property
    def max_positions(self) -> int:
        return self.model.max_positions

    @classmethod
    def open(cls, members: list[Member], settings: BackendSettings, opts: GenerationOptions, *,
             need_attention: bool, sample_texts: list[str] | None, generation: dict, label: str) -> "TorchBackend":
        if settings.compute_type != "default":
            raise ValueError(f"compute_type={settings.compute_type} is for backend=ctranslate2; backend=torch "
                             f"decodes in the checkpoint's precision (precision=auto|fp32|bf16)")
        precision.check_decoding(settings.precision)
        loaded = [m.run.load(m.checkpoint, settings.device) for m in members]
        tokenizer, path = loaded[0].tokenizer, loaded[0].checkpoint
        paths = tuple(run.checkpoint for run in loaded)
        if len(loaded) == 1:
            model = loaded[0].model
        else:
            check_vocabularies([run.tokenizer for run in loaded], [str(p) for p in paths])
            model = Ensemble([run.model for run in loaded], settings.weights, settings.combine)
        if settings.weights is not None and len(loaded) == 1:
            raise ValueError("ensemble.weights is for an ensemble: name several runs (run=[a,b]) or checkpoints "
                             "(checkpoint=[best,last])")
        if need_attention:
            model.check_report(AttentionChoice(opts.attention_layer, opts.attention_head))
        if sample_texts is None:
            sample = random_sample(tokenizer.src_vocab_size)
        else:
            sample = tokenizer.encode_src([t for t in sample_texts if t.strip()][:32])
        amp = precision.decoding_paths(
            model, sample, opts, settings.device, requested=settings.precision,
            kernels=settings.kernels or DEFAULT_KERNELS, batch_tokens=settings.batch_tokens,
            checkpoint=path if len(paths) == 1 else paths, settings=generation, what=label)
        return cls(model, tokenizer, path, settings.device, settings.batch_tokens, amp, checkpoints=paths)

    def decode(self, src_ids: list[list[int]], opts: GenerationOptions, *, need_attention: bool = False,
               progress=None, guides: list[Guide] | None = None) -> list[list[Hypothesis]]:
        autocast = torch.autocast(self.device.type, dtype=self.amp) if self.amp else contextlib.nullcontext()
        with autocast:
            results = decode_ids(self.model, src_ids, opts, batch_tokens=self.batch_tokens, device=self.device,
                                 need_attention=need_attention, progress=progress, guides=guides)
        if opts.strategy == "mbr":
            results = mbr_select(results, self.tokenizer, opts)
        return results
