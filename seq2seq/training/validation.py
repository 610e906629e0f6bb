"""Validation during training: the loss over the whole validation split and, unless trainer.valid_metric=loss,
the metric (BLEU, chrF, ROUGE) of decoded outputs of its first trainer.valid_max_sentences pairs; for a copy
model also the share of output tokens taken mostly from the source."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, ContextManager

import torch

from seq2seq.data.batching import bucket_batches, collate
from seq2seq.data.prepare import PreparedData
from seq2seq.generation.decoding import decode_ids
from seq2seq.generation.options import GenerationOptions
from seq2seq.metrics import validation_score


@dataclass
class Validator:
    data: PreparedData              # its valid split (ids and reference texts) and tokenizer
    metric: str                     # trainer.valid_metric
    max_sentences: int              # decoded for the metric (0 = all)
    generation: GenerationOptions   # how validation decodes (trainer.valid_beam_size, the run's settings)
    batch_tokens: int
    device: torch.device

    @torch.no_grad()
    def __call__(self, model, autocast: Callable[[], ContextManager]) -> dict:
        """{valid_nll, valid_ppl, valid_<metric>[, valid_copied], valid_seconds}; the model is left in train mode."""
        start = time.time()
        model.eval()
        valid = self.data.valid
        limit = model.max_positions - 1
        nll = tokens = 0.0
        for idx in bucket_batches([len(s) + 1 for s in valid.src], [len(t) + 1 for t in valid.tgt],
                                  self.batch_tokens, shuffle=False):
            batch = collate([valid.src[i][:limit] for i in idx], [valid.tgt[i][:limit] for i in idx]).to(self.device)
            with autocast():
                nll += model(batch.src, batch.prev_tokens, batch.target).nll.item()
            tokens += batch.ntokens
        loss = nll / max(tokens, 1)
        row = {"valid_nll": loss, "valid_ppl": float(torch.tensor(loss).exp())}
        if self.metric == "loss":
            row["valid_loss"] = loss
        else:
            n = self.max_sentences or len(valid)
            with autocast():
                hyps = decode_ids(model, valid.src[:n], self.generation, batch_tokens=self.batch_tokens,
                                  device=self.device)
            outputs = [h[0].tokens for h in hyps]
            row[f"valid_{self.metric}"] = validation_score(self.metric, self.data.tokenizer.decode_tgt(outputs),
                                                           valid.tgt_text[:n])
            if model.copy_choice is not None:
                row["valid_copied"] = self.copied_share(model, autocast, valid.src[:n], outputs)
        model.train()
        row["valid_seconds"] = time.time() - start
        return row

    def copied_share(self, model, autocast, sources: list, outputs: list) -> float:
        """Share of the output tokens (EOS included) that the copy model took mostly from the source."""
        limit = model.max_positions - 1
        copied = total = 0
        for idx in bucket_batches([len(s) + 1 for s in sources], [len(t) + 1 for t in outputs], self.batch_tokens,
                                  shuffle=False):
            batch = collate([sources[i][:limit] for i in idx], [outputs[i][:limit] for i in idx]).to(self.device)
            with autocast():
                c, t = model.copy_share(batch.src, batch.prev_tokens, batch.target)
            copied, total = copied + c, total + t
        return copied / max(total, 1)
