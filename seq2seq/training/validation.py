"""Validation during training, shared by the ranks: the loss and, unless trainer.valid_metric=loss, the metric
(BLEU, chrF, ROUGE) of decoded outputs, over one subset of the validation split (all of it, or
trainer.valid_max_sentences pairs drawn once with the run's seed: the same for loss and metric and at every
validation); for a copy model also the share of output tokens taken mostly from the source.

Under torchrun each rank computes the loss of and decodes every world_size-th pair of the subset; the sums and
the outputs are gathered (over the long-timeout group: ranks decode at different speeds) and every rank scores
the whole set, so the figures do not depend on the number of processes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, ContextManager

import numpy as np
import torch

from seq2seq.data.batching import bucket_batches, collate
from seq2seq.data.prepare import PreparedData
from seq2seq.generation.decoding import decode_ids
from seq2seq.generation.options import GenerationOptions
from seq2seq.metrics import validation_score
from seq2seq.training import distributed
from seq2seq.training.distributed import DistInfo


def validation_subset(n: int, max_sentences: int, seed: int) -> np.ndarray:
    """The positions validated: all n, or max_sentences drawn without replacement (seeded), in split order."""
    if not max_sentences or max_sentences >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_sentences, replace=False))


@dataclass
class Validator:
    data: PreparedData              # its valid split (ids and reference texts) and tokenizer
    metric: str                     # trainer.valid_metric
    max_sentences: int              # the subset validated (0 = all)
    generation: GenerationOptions   # how validation decodes (trainer.valid_beam_size, the run's settings)
    batch_tokens: int
    device: torch.device
    dist: DistInfo = field(default_factory=DistInfo)
    seed: int = 1
    subset: np.ndarray = field(init=False)

    def __post_init__(self):
        self.subset = validation_subset(len(self.data.valid), self.max_sentences, self.seed)

    @torch.no_grad()
    def __call__(self, model, autocast: Callable[[], ContextManager], shared: bool = True) -> dict:
        """{valid_nll, valid_ppl, valid_<metric>[, valid_copied], valid_seconds}; the model is left in train mode.
        shared=False: this rank alone validates the whole subset (what rank 0 does for the averaged checkpoint)."""
        start = time.time()
        model.eval()
        together = shared and self.dist.enabled
        mine = self.subset[self.dist.rank :: self.dist.world_size] if together else self.subset
        valid = self.data.valid
        sources = [valid.src[i].tolist() for i in mine]
        part = {"positions": mine.tolist(), "nll": 0.0, "tokens": 0, "outputs": [], "copied": (0, 0)}
        limit = model.max_positions - 1
        targets = [valid.tgt[i].tolist() for i in mine]
        for idx in bucket_batches([len(s) + 1 for s in sources], [len(t) + 1 for t in targets], self.batch_tokens,
                                  shuffle=False) if sources else []:
            batch = collate([sources[i][:limit] for i in idx], [targets[i][:limit] for i in idx]).to(self.device)
            with autocast():
                part["nll"] += model(batch.src, batch.prev_tokens, batch.target).nll.item()
            part["tokens"] += batch.ntokens
        if self.metric != "loss" and sources:
            with autocast():
                hyps = decode_ids(model, sources, self.generation, batch_tokens=self.batch_tokens, device=self.device)
            part["outputs"] = [h[0].tokens for h in hyps]
            if model.copy_choice is not None:
                part["copied"] = self.copied_share(model, autocast, sources, part["outputs"])
        parts = distributed.gather_objects(part, self.dist) if together else [part]
        model.train()
        row = self._row(parts)
        row["valid_seconds"] = time.time() - start
        return row

    def _row(self, parts: list[dict]) -> dict:
        """The figures of the whole subset from every rank's part."""
        loss = sum(p["nll"] for p in parts) / max(sum(p["tokens"] for p in parts), 1)
        row = {"valid_nll": loss, "valid_ppl": float(np.exp(loss))}
        if self.metric == "loss":
            row["valid_loss"] = loss
            return row
        output_of = {pos: out for p in parts for pos, out in zip(p["positions"], p["outputs"])}
        outputs = [output_of[int(i)] for i in self.subset]
        references = [self.data.valid.tgt_text[int(i)] for i in self.subset]
        row[f"valid_{self.metric}"] = validation_score(self.metric, self.data.tokenizer.decode_tgt(outputs), references)
        copied, total = (sum(p["copied"][k] for p in parts) for k in (0, 1))
        if total:
            row["valid_copied"] = copied / total
        return row

    def copied_share(self, model, autocast, sources: list, outputs: list) -> tuple[int, int]:
        """(output tokens, EOS included, that the copy model took mostly from the source; all output tokens)."""
        limit = model.max_positions - 1
        copied = total = 0
        for idx in bucket_batches([len(s) + 1 for s in sources], [len(t) + 1 for t in outputs], self.batch_tokens,
                                  shuffle=False):
            batch = collate([sources[i][:limit] for i in idx], [outputs[i][:limit] for i in idx]).to(self.device)
            with autocast():
                c, t = model.copy_share(batch.src, batch.prev_tokens, batch.target)
            copied, total = copied + c, total + t
        return int(copied), int(total)
