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
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig

from seq2seq.config import config_dir, resolve_device, set_threads, setup_logging, to_dict

log = logging.getLogger("seq2seq.decode")


def load_run(run: str | Path, checkpoint: str = "best", device=None):
    """(model in eval mode, tokenizer, checkpoint path) of a run folder written by seq2seq-train."""
    import torch

    from seq2seq.data.tokenizer import Tokenizer
    from seq2seq.models.model import build_model
    from seq2seq.training.checkpoint import CheckpointError, load_checkpoint, load_model_state

    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"run folder not found: {run}")
    path = run / "checkpoints" / f"{checkpoint}.pt" if checkpoint in ("best", "last") else Path(checkpoint)
    state = load_checkpoint(path)
    if "model" not in state or "model_config" not in state:
        raise CheckpointError(f"{path} is not a seq2seq checkpoint (no model weights or model config)")
    tokenizer = Tokenizer.load(run / "tokenizer")
    model = build_model(state["model_config"], tokenizer.src_vocab_size, tokenizer.tgt_vocab_size, tokenizer.joint)
    load_model_state(model, state["model"], path)
    model.to(device or torch.device("cpu")).eval()
    return model, tokenizer, path


def write_output(path: str, lines: list[str]) -> None:
    text = "".join(line + "\n" for line in lines)
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)


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


def decode(cfg: DictConfig) -> list[str]:
    from tqdm import tqdm

    from seq2seq.data.corpus import read_documents
    from seq2seq.generation.decoding import decode_ids
    from seq2seq.generation.search import GenerationOptions
    from seq2seq.models.model import AttentionChoice

    setup_logging()
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    composed = to_dict(cfg.generation)
    settings = generation_settings(composed, cfg.run, _command_line_overrides(composed))
    opts = GenerationOptions(**settings)
    lines = read_documents(cfg.input, cfg.input_field)
    model, tokenizer, path = load_run(cfg.run, cfg.checkpoint, device)
    need_attention = bool(cfg.attention) or opts.print_alignment
    if need_attention:
        model.check_report(AttentionChoice(opts.attention_layer, opts.attention_head))
    log.info("decoding %d documents with %s (%s)", len(lines), path,
             ", ".join(f"{k}={v}" for k, v in settings.items() if k not in ("print_alignment",)))
    start = time.time()
    src_ids = tokenizer.encode_src(lines)
    with tqdm(total=len(lines), unit="sent", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        results = decode_ids(model, src_ids, opts, batch_tokens=cfg.batch_tokens, device=device,
                             need_attention=need_attention, progress=bar)
    if opts.nbest == 1:
        out = [one_line(t) for t in tokenizer.decode_tgt([hyps[0].tokens for hyps in results])]
        if opts.print_alignment:
            out = [f"{text}\t{alignment_column(hyps[0])}" for text, hyps in zip(out, results)]
    else:
        out = []
        for i, hyps in enumerate(results):
            texts = [one_line(t) for t in tokenizer.decode_tgt([h.tokens for h in hyps])]
            for h, t in zip(hyps, texts):
                out.append(f"{i}\t{h.score:.4f}\t{t}" + (f"\t{alignment_column(h)}" if opts.print_alignment else ""))
    seconds = time.time() - start
    write_output(cfg.output, out)
    if cfg.attention:
        write_attention_folder(cfg.attention, tokenizer, src_ids, results, cfg.attention_max_sentences,
                               model.max_positions)
    log.info("decoded %d lines in %.1fs (%.1f sentences/s)", len(lines), seconds, len(lines) / max(seconds, 1e-9))
    return out


def one_line(text: str) -> str:
    """An output on one line: line breaks (a summary's separator pieces) become spaces."""
    return " ".join(text.splitlines()) if "\n" in text or "\r" in text else text


def alignment_column(hyp) -> str:
    from seq2seq.visualize import format_alignment, hard_alignment

    return format_alignment(hard_alignment(hyp.attention)) if hyp.tokens else ""


def write_attention_folder(folder: str, tokenizer, src_ids: list[list[int]], results, max_sentences: int,
                           max_positions: int) -> None:
    """Heatmaps and attention.jsonl for the best hypothesis of the first max_sentences non-empty lines."""
    from seq2seq.visualize import write_attention

    items = ((i, tokenizer.src_pieces(ids[: max_positions - 1]), tokenizer.tgt_pieces(hyps[0].tokens),
              hyps[0].attention) for i, (ids, hyps) in enumerate(zip(src_ids, results)) if ids)
    written = write_attention(folder, items, max_sentences)
    log.info("wrote attention of %d sentences to %s", written, folder)


@hydra.main(version_base="1.3", config_path=config_dir(), config_name="decode")
def _hydra_main(cfg: DictConfig) -> None:
    decode(cfg)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
