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

backend=ctranslate2 decodes with CTranslate2 instead of PyTorch (pip install seq2seq[export]): the checkpoint
is exported once into <run>/exports/ctranslate2-<checkpoint name>/ (again when the checkpoint changes), and
compute_type=int8|int8_float32|float32|... picks CTranslate2's precision. Its greedy outputs in float32 are
this project's; it has no attention to show, no coverage penalty, and another repetition penalty (refused).
"""
from __future__ import annotations

import itertools
import logging
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from seq2seq.cli import Command
from seq2seq.config import config_dir, options_from, resolve_device, set_threads, setup_logging, to_dict

log = logging.getLogger("seq2seq.decode")


def load_run(run: str | Path, checkpoint: str = "best", device=None):
    """(model in eval mode, tokenizer, checkpoint path) of a run folder written by seq2seq-train."""
    import torch

    from seq2seq.data.tokenizer import Tokenizer
    from seq2seq.models.model import build_model
    from seq2seq.training.checkpoint import CheckpointError, check_positions_layout, load_checkpoint, load_model_state

    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder not found: {run}")
    path = run / "checkpoints" / f"{checkpoint}.pt" if checkpoint in ("best", "last", "averaged") else Path(checkpoint)
    state = load_checkpoint(path)
    if "model" not in state or "model_config" not in state:
        raise CheckpointError(f"{path} is not a seq2seq checkpoint (no model weights or model config)")
    tokenizer = Tokenizer.load(run / "tokenizer")
    model = build_model(state["model_config"], tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.joint)
    check_positions_layout(model, state["model"], path)
    load_model_state(model, state["model"], path)
    model.to(device or torch.device("cpu")).eval()
    return model, tokenizer, path


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


SEARCH_KEYS = ("strategy", "beam_size", "nbest", "temperature", "top_k", "top_p")  # what a generation=<group> sets


def generation_settings(composed: dict, run: str | Path, overrides: list[str]) -> dict:
    """The run's saved generation settings, overridden by what the command line set: each
    generation.<key>=<value>, and the SEARCH_KEYS of a generation=<group> choice. A run folder
    without saved settings (or without some key) falls back to the composed defaults."""
    from omegaconf import OmegaConf

    saved_file = Path(run) / "config.yaml"
    saved = {}
    if saved_file.is_file():
        saved = OmegaConf.to_container(OmegaConf.load(saved_file)).get("generation") or {}
    settings = {k: saved.get(k, v) for k, v in composed.items()}
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0].split("@", 1)[0]
        if key == "generation":
            settings.update({k: composed[k] for k in SEARCH_KEYS})
        elif key.startswith("generation."):
            name = key.split(".", 1)[1]
            settings[name] = composed[name]
    return settings


def _command_line_overrides(generation: dict) -> list[str]:
    """What the command line set; called without Hydra (from Python), every generation key counts as set."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return list(HydraConfig.get().overrides.task)
    return [f"generation.{key}" for key in generation]


def decode(cfg: DictConfig) -> int:
    """Decode cfg.input into cfg.output chunk by chunk (cfg.chunk_lines documents at a time, sorted and
    batched within the chunk, written in input order before the next chunk is read); returns the
    number of input documents."""
    from tqdm import tqdm

    from seq2seq.data.corpus import iter_documents
    from seq2seq.generation.search import GenerationOptions
    from seq2seq.models.model import AttentionChoice

    setup_logging()
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    composed = to_dict(cfg.generation)
    settings = generation_settings(composed, cfg.run, _command_line_overrides(composed))
    opts = options_from(GenerationOptions, "generation", settings)
    chunk_lines = cfg.get("chunk_lines", 10_000)
    if not isinstance(chunk_lines, int) or chunk_lines < 1:
        raise ValueError(f"chunk_lines={chunk_lines} must be a whole number >= 1")
    documents = iter_documents(cfg.input, cfg.input_field)
    first = list(itertools.islice(documents, chunk_lines))  # input errors of the first chunk before the model loads
    need_attention = bool(cfg.attention) or opts.print_alignment
    backend, compute_type = cfg.get("backend", "torch"), cfg.get("compute_type", "default")
    model, amp = None, None
    from seq2seq.training import precision

    precision.check_decoding(cfg.precision)
    if backend == "ctranslate2":  # the checkpoint exported once into <run>/exports/ (seq2seq.export)
        from seq2seq.data.tokenizer import Tokenizer
        from seq2seq.export import TOKENIZER_FOLDER, check_ctranslate2_options, ctranslate2_cache

        check_ctranslate2_options(opts, need_attention)
        path = ctranslate2_cache(cfg.run, cfg.checkpoint)
        tokenizer = Tokenizer.load(path / TOKENIZER_FOLDER)
    elif backend == "torch":
        if compute_type != "default":
            raise ValueError(f"compute_type={compute_type} is for backend=ctranslate2; backend=torch decodes in the "
                             f"checkpoint's precision")
        model, tokenizer, path = load_run(cfg.run, cfg.checkpoint, device)
        if need_attention:
            model.check_report(AttentionChoice(opts.attention_layer, opts.attention_head))
        amp = precision.decoding_paths(
            model, tokenizer.encode_src([d for d in first if d.strip()][:32]), opts, device,
            requested=cfg.precision, kernels=to_dict(cfg.kernels), batch_tokens=cfg.batch_tokens, checkpoint=path,
            settings=settings, what="decode precision")
    else:
        raise ValueError(f"backend={backend}: choose torch or ctranslate2")
    log.info("decoding %s with %s (%s)", cfg.input, path,
             ", ".join(f"{k}={v}" for k, v in settings.items() if k not in ("print_alignment",)))
    start, done, attention_items = time.time(), 0, []
    writer = OutputWriter(cfg.output)
    try:
        with tqdm(unit="sent", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
            for chunk in chunks(itertools.chain(first, documents), chunk_lines):
                src_ids = tokenizer.encode_src(chunk)
                results = _decode_chunk(backend, model, path, src_ids, opts, cfg, device, compute_type,
                                        need_attention, bar, amp)
                writer.write(format_outputs(results, tokenizer, opts, offset=done))
                if cfg.attention:
                    attention_items += _attention_items(tokenizer, src_ids, results, done, model.max_positions,
                                                        cfg.attention_max_sentences - len(attention_items)
                                                        if cfg.attention_max_sentences else 0)
                done += len(chunk)
    except BaseException:
        writer.abort(done)
        raise
    writer.close()
    seconds = time.time() - start
    if cfg.attention:
        from seq2seq.visualize import write_attention

        written = write_attention(cfg.attention, attention_items, cfg.attention_max_sentences)
        log.info("wrote attention of %d sentences to %s", written, cfg.attention)
    log.info("decoded %d lines in %.1fs (%.1f sentences/s)", done, seconds, done / max(seconds, 1e-9))
    return done


def _decode_chunk(backend, model, path, src_ids, opts, cfg, device, compute_type: str, need_attention: bool, bar,
                  amp=None):
    """Hypotheses of one chunk's sources, in order, with the chosen backend (amp: the autocast dtype, torch)."""
    if backend == "ctranslate2":
        import torch

        from seq2seq.export import decode_ctranslate2

        return decode_ctranslate2(path, src_ids, opts, device=device, compute_type=compute_type,
                                  threads=torch.get_num_threads(), batch_tokens=cfg.batch_tokens, progress=bar)
    from seq2seq.generation.decoding import decode_ids

    import contextlib

    import torch

    with torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext():
        return decode_ids(model, src_ids, opts, batch_tokens=cfg.batch_tokens, device=device,
                          need_attention=need_attention, progress=bar)


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
    from seq2seq.visualize import format_alignment, hard_alignment

    return format_alignment(hard_alignment(hyp.attention)) if hyp.tokens else ""


def _attention_items(tokenizer, src_ids: list[list[int]], results, offset: int, max_positions: int,
                     limit: int) -> list:
    """(input index, source pieces, target pieces, weights) of the best hypothesis of each non-empty
    source of a chunk, at most limit of them (0 = all): what seq2seq.visualize.write_attention draws."""
    items = []
    for i, (ids, hyps) in enumerate(zip(src_ids, results)):
        if not ids:
            continue
        if limit and len(items) >= limit:
            break
        items.append((offset + i, tokenizer.src_pieces(ids[: max_positions - 1]), tokenizer.tgt_pieces(hyps[0].tokens),
                      hyps[0].attention))
    return items


COMMAND = Command("decode")  # one-line error reports and exit codes: seq2seq.cli


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="decode")
@COMMAND.task
def _hydra_main(cfg: DictConfig) -> None:
    decode(cfg)


def main() -> None:
    COMMAND.run(_hydra_main)


if __name__ == "__main__":
    main()
