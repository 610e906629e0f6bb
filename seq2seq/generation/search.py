"""Batched generation through the decoder interface: beam search (seq2seq.generation.beam), greedy decoding
and sampling (seq2seq.generation.sampling), with the controls of seq2seq.generation.controls.

All of them run on EncoderDecoder.step and state.reorder only, so they serve every model family. Sentences
leave the batch as soon as they are finished, so a long sentence does not make the short ones pay for its steps.
"""
from __future__ import annotations

import torch

from seq2seq.generation.beam import beam_search
from seq2seq.generation.options import GenerationOptions, Guide, Hypothesis
from seq2seq.generation.sampling import sample

@torch.no_grad()
def generate(model, src: torch.Tensor, opts: GenerationOptions, need_attention: bool = False,
             generator: torch.Generator | None = None, guides: list[Guide] | None = None) -> list[list[Hypothesis]]:
    """Hypotheses for each source row of src [B, S] (right-padded, EOS-terminated), best first; guides: one per
    row (a target prefix) or None. strategy=mbr: the mbr_samples candidates of each row (see mbr.select)."""
    if guides is not None and len(guides) != src.size(0):
        raise ValueError(f"{len(guides)} guides for {src.size(0)} sources")
    if opts.strategy == "mbr":  # its candidates; seq2seq.generation.mbr.select picks among their texts
        opts = opts.candidates()
    if guides is not None and opts.strategy != "beam" and any(g.constraints for g in guides):
        raise ValueError(f"constraints need beam search (generation.strategy=beam, or generation=mbr with "
                         f"generation.mbr_candidates=beam), not {opts.strategy}")
    if opts.strategy == "beam":
        return beam_search(model, src, opts, need_attention, guides)
    return sample(model, src, opts, need_attention, generator, guides)
