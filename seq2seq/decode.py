"""`seq2seq-decode run=<run folder> input=<file|-> output=<file|-> [input_field=<field>] [generation.beam_size=5 ...]`.

Writes one detokenized hypothesis per input document, in input order (empty inputs give
empty lines; a line break inside an output becomes a space); with generation.nbest=N, N
lines per input: index, score, hypothesis. The input is one document per line, or with
input_field=<name> a JSON Lines file whose field <name> holds the document (line breaks
inside it are kept). Generation settings default to those the run was trained with
(config.yaml's generation, e.g. a summarization recipe's lengths and penalties); each
generation.<key>=<value> on the command line overrides one, and generation=<greedy|sampling|beam>
takes that group's search (strategy, beam_size, nbest, temperature, top_k, top_p).
generation.print_alignment=true adds a tab-separated column of hard alignments, and
attention=<folder> writes heatmaps and raw attention weights (seq2seq.visualize).

The input is read chunk_lines documents at a time (sorted and batched within the chunk, written
in input order before the next chunk is read), so memory does not grow with the file. A file
output is written through <output>.partial and renamed when complete; an interrupted decode
leaves the finished chunks there and logs how many lines they hold.

backend=torch|ctranslate2 picks the decoding backend (seq2seq.backends): this project's search, or the
checkpoint exported once to CTranslate2 (pip install seq2seq[export]; compute_type=int8|float32|... picks its
precision). A backend refuses the settings it cannot honour.
"""
from __future__ import annotations

import itertools
import logging
import sys
import time
from pathlib import Path

from omegaconf import DictConfig
from tqdm import tqdm

from seq2seq.backends import Backend, BackendSettings, open_backend
from seq2seq.cli import command_line_overrides
from seq2seq.host import resolve_device, set_threads
from seq2seq.config import options_from, setup_logging, to_dict, to_plain
from seq2seq.data.corpus import GuidedDocument, iter_guided_documents
from seq2seq.generation.options import GenerationOptions, guides_of
from seq2seq.runs import LoadedRun, load_run, members
from seq2seq.visualize import format_alignment, hard_alignment, write_attention

__all__ = ["decode", "load_run", "LoadedRun"]

log = logging.getLogger("seq2seq.decode")


class OutputWriter:
    """Writes output lines as they come: to stdout (flushed after each chunk), or to a file through
    <file>.partial, renamed to <file> when everything is written; an interrupted decode leaves the
    lines written so far in <file>.partial and says how many there are."""

    def __init__(self, path: str):
        self.path, self.lines = path, 0
        if path == "-":
            self.partial, self.stream = None, sys.stdout
        else:
            out = Path(path)
            out.parent.mkdir(parents=True, exist_ok=True)
            self.partial = out.with_name(out.name + ".partial")
            self.stream = self.partial.open("w", encoding="utf-8")

    def write(self, lines: list[str]) -> None:
        self.stream.write("".join(line + "\n" for line in lines))
        self.stream.flush()
        self.lines += len(lines)

    def close(self) -> None:
        if self.partial is not None:
            self.stream.close()
            self.partial.replace(self.path)

    def abort(self, inputs_done: int) -> None:
        where = "to stdout" if self.partial is None else f"in {self.partial} ({self.path} was not written)"
        if self.partial is not None:
            self.stream.close()
        log.warning("decoding stopped after %d input lines: their %d output lines are %s", inputs_done,
                    self.lines, where)


def chunks(items, size: int):
    """Lists of up to size consecutive items of an iterable (the last one may be shorter)."""
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def decode(cfg: DictConfig) -> int:
    """Decode cfg.input into cfg.output chunk by chunk (cfg.chunk_lines documents at a time, sorted and
    batched within the chunk, written in input order before the next chunk is read); returns the
    number of input documents."""
    setup_logging()
    set_threads(cfg.threads)
    models = members(to_plain(cfg.run), to_plain(cfg.checkpoint))
    run = models[0].run  # an ensemble decodes with its first run's generation settings
    composed = to_dict(cfg.generation)
    settings = run.generation_settings(composed, command_line_overrides(composed))
    opts = options_from(GenerationOptions, "generation", settings)
    if not isinstance(cfg.chunk_lines, int) or cfg.chunk_lines < 1:
        raise ValueError(f"chunk_lines={cfg.chunk_lines} must be a whole number >= 1")
    documents = iter_guided_documents(cfg.input, cfg.input_field, prefix=cfg.prefix, prefix_field=cfg.prefix_field,
                                      constraints=cfg.constraints, constraints_field=cfg.constraints_field)
    first = list(itertools.islice(documents, cfg.chunk_lines))  # input errors of the first chunk before the model
    need_attention = bool(cfg.attention) or opts.print_alignment
    weights = to_plain(cfg.ensemble.weights)
    backend = open_backend(
        models, BackendSettings(name=cfg.backend, device=resolve_device(cfg.device), batch_tokens=cfg.batch_tokens,
                                precision=cfg.precision, kernels=to_dict(cfg.kernels),
                                compute_type=cfg.compute_type, weights=None if weights is None else tuple(weights),
                                combine=cfg.ensemble.combine),
        opts, need_attention=need_attention, sample_texts=[d.text for d in first], generation=settings,
        label="decode precision")
    log.info("decoding %s with %s (%s)", cfg.input, " + ".join(map(str, backend_checkpoints(backend))),
             ", ".join(f"{k}={v}" for k, v in settings.items() if k not in ("print_alignment",)))
    start, done, attention_items = time.time(), 0, []
    writer = OutputWriter(cfg.output)
    try:
        with tqdm(unit="sent", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
            for chunk in chunks(itertools.chain(first, documents), cfg.chunk_lines):
                src_ids = backend.tokenizer.encode_src([d.text for d in chunk])
                results = backend.decode(src_ids, opts, need_attention=need_attention, progress=bar,
                                         guides=guides_of(backend.tokenizer, chunk))
                report_unmet(chunk, results, offset=done)
                writer.write(format_outputs(results, backend.tokenizer, opts, offset=done))
                if cfg.attention:
                    attention_items += _attention_items(backend, src_ids, results, done,
                                                        cfg.attention_max_sentences - len(attention_items)
                                                        if cfg.attention_max_sentences else 0)
                done += len(chunk)
    except BaseException:
        writer.abort(done)
        raise
    writer.close()
    seconds = time.time() - start
    if cfg.attention:
        written = write_attention(cfg.attention, attention_items, cfg.attention_max_sentences)
        log.info("wrote attention of %d sentences to %s", written, cfg.attention)
    log.info("decoded %d lines in %.1fs (%.1f sentences/s)", done, seconds, done / max(seconds, 1e-9))
    return done


def report_unmet(documents: list[GuidedDocument], results, offset: int) -> None:
    """A warning for each input whose best output lacks some of its phrases (beam search could not fit them
    within the length limit): the output is kept, never dropped."""
    for i, (doc, hyps) in enumerate(zip(documents, results)):
        if hyps and hyps[0].unmet:
            missing = ", ".join(repr(doc.constraints[j]) for j in hyps[0].unmet)
            log.warning("line %d: constraint(s) %s not met within the length limit (the output is kept)",
                        offset + i + 1, missing)


def backend_checkpoints(backend: Backend) -> tuple:
    """The files the outputs come from: an ensemble's members, or the one checkpoint."""
    return getattr(backend, "checkpoints", ()) or (backend.checkpoint,)


def format_outputs(results, tokenizer, opts, offset: int = 0) -> list[str]:
    """Output lines of a chunk's hypotheses: the best one per input, or with nbest > 1 one line per
    hypothesis: input index (offset + position in the chunk), score, text; alignments when asked."""
    if opts.nbest == 1:
        out = [one_line(t) for t in tokenizer.decode_tgt([hyps[0].tokens for hyps in results])]
        if opts.print_alignment:
            out = [f"{text}\t{alignment_column(hyps[0])}" for text, hyps in zip(out, results)]
        return out
    out = []
    for i, hyps in enumerate(results):
        texts = [one_line(t) for t in tokenizer.decode_tgt([h.tokens for h in hyps])]
        for h, t in zip(hyps, texts):
            out.append(f"{offset + i}\t{h.score:.4f}\t{t}" + (f"\t{alignment_column(h)}" if opts.print_alignment else ""))
    return out


def one_line(text: str) -> str:
    """An output on one line: line breaks (a summary's separator pieces) become spaces."""
    return " ".join(text.splitlines()) if "\n" in text or "\r" in text else text


def alignment_column(hyp) -> str:
    return format_alignment(hard_alignment(hyp.attention)) if hyp.tokens else ""


def _attention_items(backend: Backend, src_ids: list[list[int]], results, offset: int, limit: int) -> list:
    """(input index, source pieces, target pieces, weights) of the best hypothesis of each non-empty
    source of a chunk, at most limit of them (0 = all): what seq2seq.visualize.write_attention draws."""
    items = []
    for i, (ids, hyps) in enumerate(zip(src_ids, results)):
        if not ids:
            continue
        if limit and len(items) >= limit:
            break
        tokenizer = backend.tokenizer
        items.append((offset + i, tokenizer.src_pieces(ids[: backend.max_positions - 1]),
                      tokenizer.tgt_pieces(hyps[0].tokens), hyps[0].attention))
    return items


if __name__ == "__main__":  # python -m seq2seq.decode: the seq2seq-decode command
    from seq2seq.cli.decode import main

    main()
