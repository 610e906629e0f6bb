"""The CTranslate2 backend (backend=ctranslate2, pip install seq2seq[export]): the run's checkpoint exported
once into <run>/exports/ctranslate2-<checkpoint name>/ (again when the checkpoint changes), then decoded by
CTranslate2 with compute_type=int8|int8_float32|float32|... Its greedy outputs in float32 are this project's;
it has no attention to show, no coverage penalty, and another repetition penalty (all refused)."""
from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import torch

from seq2seq.backends.base import BackendSettings
from seq2seq.data.cachefiles import cache_lock, remove_stale_temps, temp_path
from seq2seq.data.tokenizer import Tokenizer
from seq2seq.export.ctranslate2 import export_ctranslate2
from seq2seq.export.shapes import TOKENIZER_FOLDER, copy_tokenizer, describe, require, vocabulary
from seq2seq.generation.options import GenerationOptions, Guide, Hypothesis, source_length_bounds
from seq2seq.runs import Member, RunFolder

log = logging.getLogger("seq2seq.backends.ctranslate2")

CACHE = "exports"       # <run>/exports/ctranslate2-<checkpoint name>/
STAMP = "source.json"   # which checkpoint file (path, size, modification time) the folder was exported from


def _stamp(path: Path) -> dict:
    stat = path.stat()
    return {"checkpoint": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def exported_folder(run: RunFolder, checkpoint: str = "best") -> Path:
    """The run's checkpoint as a CTranslate2 model folder in <run>/exports/, exported when it is missing or the
    checkpoint changed since (size or modification time), under a lock (several decoders may start at once)."""
    source = run.checkpoint(checkpoint)
    folder = run.path / CACHE / f"ctranslate2-{source.stem}"
    with cache_lock(folder.with_name(folder.name + ".lock"), f"exporting {source} to CTranslate2"):
        stamp_file = folder / STAMP
        if stamp_file.is_file():
            try:
                if json.loads(stamp_file.read_text(encoding="utf-8")) == _stamp(source):
                    return folder
            except ValueError:
                pass
        model, tokenizer, path = run.load(checkpoint)
        log.info("exporting %s to CTranslate2 in %s (once per checkpoint)", path, folder)
        remove_stale_temps(folder.parent, folder.name)
        tmp = temp_path(folder)
        try:
            export_ctranslate2(model, tokenizer, tmp)
            copy_tokenizer(tokenizer, tmp)
            describe(tmp, "ctranslate2", path, model, tokenizer)
            (tmp / STAMP).write_text(json.dumps(_stamp(path)) + "\n", encoding="utf-8")
            if folder.exists():
                shutil.rmtree(folder)
            tmp.rename(folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def check_options(opts: GenerationOptions, need_attention: bool, precision: str = "auto") -> None:
    """Refuse what the CTranslate2 backend cannot do as this project does it."""
    require("ctranslate2", "backend=ctranslate2")
    if need_attention:
        raise ValueError("backend=ctranslate2 reports no attention: drop attention=... and "
                         "generation.print_alignment=true, or decode with backend=torch")
    if opts.coverage_penalty:
        raise ValueError("backend=ctranslate2 has no coverage penalty as this project defines it: set "
                         "generation.coverage_penalty=0 or decode with backend=torch")
    if opts.repetition_penalty != 1.0:
        raise ValueError("CTranslate2's repetition penalty works on logits, not on log-probabilities as "
                         "generation.repetition_penalty does: set it to 1.0 or decode with backend=torch")
    if opts.strategy == "mbr":
        raise ValueError("backend=ctranslate2 does not do minimum Bayes risk decoding here: decode with "
                         "backend=torch, or choose another generation.strategy")
    if opts.epsilon:
        raise ValueError("backend=ctranslate2 has no epsilon sampling: set generation.epsilon=0 or decode with "
                         "backend=torch")
    if precision not in ("auto", "fp32"):
        raise ValueError(f"precision={precision} is for backend=torch; backend=ctranslate2 takes "
                         f"compute_type=int8|int8_float32|bfloat16|float32|...")


def _search(opts: GenerationOptions) -> dict:
    if opts.strategy == "beam":
        return dict(beam_size=opts.beam_size, num_hypotheses=opts.nbest, length_penalty=opts.len_penalty)
    if opts.strategy == "sampling":
        return dict(beam_size=1, num_hypotheses=opts.nbest, sampling_topk=opts.top_k, sampling_topp=opts.top_p,
                    sampling_temperature=opts.temperature)
    return dict(beam_size=1, num_hypotheses=1, sampling_topk=1)


@dataclasses.dataclass
class CTranslate2Backend:
    checkpoint: Path          # the exported folder
    tokenizer: Tokenizer
    translator: object        # ctranslate2.Translator
    max_positions: int
    batch_tokens: int
    name: str = "ctranslate2"
    model: None = None        # no model of this project's to report attention from

    def __post_init__(self):
        self._target_ids = {piece: i for i, piece in enumerate(vocabulary(self.tokenizer.tgt))}  # once, not per chunk

    @classmethod
    def from_folder(cls, folder: Path, *, device: torch.device, compute_type: str = "default", threads: int = 0,
                    batch_tokens: int = 6000) -> "CTranslate2Backend":
        import ctranslate2  # an optional extra (seq2seq[export]); check_options said so when it is missing

        max_positions = json.loads((folder / "export.json").read_text(encoding="utf-8"))["max_positions"]
        translator = ctranslate2.Translator(str(folder), device=device.type, device_index=device.index or 0,
                                            compute_type=compute_type, intra_threads=max(threads, 0))
        return cls(folder, Tokenizer.load(folder / TOKENIZER_FOLDER), translator, max_positions, batch_tokens)

    @classmethod
    def open(cls, members: list[Member], settings: BackendSettings, opts: GenerationOptions, *,
             need_attention: bool, sample_texts: list[str] | None, generation: dict,
             label: str) -> "CTranslate2Backend":
        check_options(opts, need_attention, settings.precision)
        if len(members) > 1:
            raise ValueError(f"backend=ctranslate2 decodes one model, not an ensemble of {len(members)} (CTranslate2 "
                             f"has no ensembles): decode with backend=torch, or name one run and one checkpoint")
        return cls.from_folder(exported_folder(members[0].run, members[0].checkpoint), device=settings.device,
                               compute_type=settings.compute_type, threads=torch.get_num_threads(),
                               batch_tokens=settings.batch_tokens)

    def decode(self, src_ids: list[list[int]], opts: GenerationOptions, *, need_attention: bool = False,
               progress=None, guides: list[Guide] | None = None) -> list[list[Hypothesis]]:
        """Length limits are this project's (per sentence, from its source length: sentences of one source
        length are decoded together); scores are CTranslate2's. Prefixes go through CTranslate2's
        target_prefix; constraints are refused."""
        if need_attention:
            raise ValueError("backend=ctranslate2 reports no attention")
        if guides is not None and any(g.constraints for g in guides):
            raise ValueError("backend=ctranslate2 has no lexically constrained decoding (CTranslate2 offers none): "
                             "decode with backend=torch")
        prefixes = [g.prefix for g in guides] if guides is not None and any(g.prefix for g in guides) else None
        target_ids = self._target_ids
        limit = self.max_positions - 1  # room for EOS
        results: list[list[Hypothesis] | None] = [None] * len(src_ids)
        by_length: dict[int, list[int]] = {}
        for i, ids in enumerate(src_ids):
            if not ids and not (prefixes and prefixes[i]):
                results[i] = [Hypothesis([], 0.0, 0.0)]
            else:
                by_length.setdefault(min(len(ids), limit), []).append(i)
        for length, rows in sorted(by_length.items()):
            least, most = source_length_bounds(length, opts, self.max_positions)
            target_prefix = None
            if prefixes:  # CTranslate2's own target_prefix; a prefix longer than the limit is kept whole, as ours
                target_prefix = [self.tokenizer.tgt_pieces(prefixes[i]) or None for i in rows]
                most = max([most] + [len(prefixes[i]) for i in rows])
            outputs = self.translator.translate_batch(
                [self.tokenizer.src_pieces(src_ids[i][:limit]) for i in rows], target_prefix,
                max_batch_size=max(self.batch_tokens, length + 1), batch_type="tokens", max_decoding_length=most,
                min_decoding_length=least, return_scores=True, no_repeat_ngram_size=opts.no_repeat_ngram_size,
                suppress_sequences=[["<pad>"], ["<s>"]], **_search(opts))
            for i, out in zip(rows, outputs):
                results[i] = [Hypothesis([target_ids[p] for p in pieces if p != "</s>"], score, score)
                              for pieces, score in zip(out.hypotheses, out.scores)]
            if progress is not None:
                progress.update(len(rows))
        return results
