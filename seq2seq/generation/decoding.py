"""Decoding many sentences: length-sorted batches, results returned in input order."""
from __future__ import annotations

import logging

import torch

from seq2seq.data.batching import pad_source
from seq2seq.generation.options import GenerationOptions, Guide, Hypothesis
from seq2seq.generation.search import generate

log = logging.getLogger(__name__)


def decode_ids(model, src_ids: list[list[int]], opts: GenerationOptions, *, batch_tokens: int,
               device: torch.device, need_attention: bool = False, progress=None,
               guides: list[Guide] | None = None) -> list[list[Hypothesis]]:
    """Hypotheses (best first) for every source sequence, in input order; guides: one per source (a target
    prefix) or None.

    Empty sources without a prefix give one empty hypothesis without running the model; sources longer
    than the model accepts are truncated with a warning naming the line; a prefix longer than the model's
    longest output is an error naming the line.
    """
    limit = model.max_positions - 1  # room for EOS
    if guides is not None and len(guides) != len(src_ids):
        raise ValueError(f"{len(guides)} guides for {len(src_ids)} sources")
    results: list[list[Hypothesis] | None] = [None] * len(src_ids)
    todo = []
    for i, ids in enumerate(src_ids):
        prefix = guides[i].prefix if guides is not None else []
        if len(prefix) > limit:
            raise ValueError(f"line {i + 1}: the prefix has {len(prefix)} subwords, more than the model's longest "
                             f"output ({limit})")
        if not ids and not prefix:
            results[i] = [Hypothesis([], 0.0, 0.0, torch.zeros(1, 1) if need_attention else None)]
            continue
        if len(ids) > limit:
            log.warning("line %d: %d subwords, truncated to the model's maximum of %d", i + 1, len(ids), limit)
        todo.append(i)
    todo.sort(key=lambda i: min(len(src_ids[i]), limit))
    was_training = model.training
    model.eval()
    start = 0
    while start < len(todo):
        end, longest = start, 0
        while end < len(todo):
            longest = max(longest, min(len(src_ids[todo[end]]), limit) + 1)
            if end > start and longest * (end - start + 1) > batch_tokens:
                break
            end += 1
        chunk = todo[start:end]
        src = pad_source([src_ids[i] for i in chunk], max_len=model.max_positions).to(device)
        chunk_guides = [guides[i] for i in chunk] if guides is not None else None
        for i, hyps in zip(chunk, generate(model, src, opts, need_attention, guides=chunk_guides)):
            results[i] = hyps
        if progress is not None:
            progress.update(len(chunk))
        start = end
    model.train(was_training)
    return results
