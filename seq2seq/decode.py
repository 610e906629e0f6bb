"""`seq2seq-decode run=<run folder> input=<file|-> output=<file|-> [generation.beam_size=5 ...]`.

Writes one detokenized hypothesis per input line, in input order (empty lines stay
empty lines); with generation.nbest=N, N lines per input: index, score, hypothesis.
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
    model = build_model(state["model_config"], tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
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


def decode(cfg: DictConfig) -> list[str]:
    from tqdm import tqdm

    from seq2seq.data.corpus import read_lines
    from seq2seq.generation.decoding import decode_ids
    from seq2seq.generation.search import GenerationOptions

    setup_logging()
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    opts = GenerationOptions(**to_dict(cfg.generation))
    lines = read_lines(cfg.input)
    model, tokenizer, path = load_run(cfg.run, cfg.checkpoint, device)
    log.info("decoding %d lines with %s (%s, beam %d)", len(lines), path, opts.strategy, opts.beam_size)
    start = time.time()
    src_ids = tokenizer.encode_src(lines)
    need_attention = bool(cfg.attention) or opts.print_alignment
    select_attention(model, opts.attention_layer, opts.attention_head)
    with tqdm(total=len(lines), unit="sent", file=sys.stderr, disable=not sys.stderr.isatty()) as bar:
        results = decode_ids(model, src_ids, opts, batch_tokens=cfg.batch_tokens, device=device,
                             need_attention=need_attention, progress=bar)
    if opts.nbest == 1:
        out = tokenizer.decode_tgt([hyps[0].tokens for hyps in results])
        if opts.print_alignment:
            out = [f"{text}\t{alignment_column(hyps[0])}" for text, hyps in zip(out, results)]
    else:
        out = []
        for i, hyps in enumerate(results):
            texts = tokenizer.decode_tgt([h.tokens for h in hyps])
            for h, t in zip(hyps, texts):
                out.append(f"{i}\t{h.score:.4f}\t{t}" + (f"\t{alignment_column(h)}" if opts.print_alignment else ""))
    seconds = time.time() - start
    write_output(cfg.output, out)
    if cfg.attention:
        write_attention_folder(cfg.attention, tokenizer, src_ids, results, cfg.attention_max_sentences,
                               model.max_positions)
    log.info("decoded %d lines in %.1fs (%.1f sentences/s)", len(lines), seconds, len(lines) / max(seconds, 1e-9))
    return out


def select_attention(model, layer: int, head: int) -> None:
    """Point the decoder at the attention layer/head to report; decoders that cannot choose refuse other values."""
    if hasattr(model.decoder, "select_attention"):
        model.decoder.select_attention(layer, head)
    elif (layer, head) != (-1, -1):
        raise ValueError(f"{type(model.decoder).__name__} cannot select an attention layer or head; "
                         f"leave generation.attention_layer and attention_head at -1")


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
