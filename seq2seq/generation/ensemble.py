"""Several trained models decoded as one: an Ensemble offers the search's side of the decoder seam (encode,
init_state, step, state.reorder, max_positions), so beam search, greedy decoding, sampling and every control
run on it unchanged.

Each member encodes the source itself (a Transformer and an LSTM may be ensembled) and steps its own state;
the step's distribution combines the members' next-token log-probabilities log p_m with weights w_m
(normalised to sum to 1), and is renormalised so that the search's scores stay log-probabilities of one model:

    combine=logprob   log_softmax(sum_m w_m log p_m)        (a product of experts: Marian, OpenNMT-py)
    combine=prob      log(sum_m w_m p_m)                     (a mixture: fairseq)

A member of weight 0 takes no part. The members must share the vocabularies (one source encoding, one target
distribution): check_vocabularies says which differs. The attention an ensemble reports (alignments, the
coverage penalty) is the weighted mean of its members'.
"""
from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from seq2seq.models.model import AttentionChoice, EncoderOut

COMBINE = ("logprob", "prob")


@dataclasses.dataclass
class EnsembleState:
    """One decoder state per member, reordered together."""

    members: list

    def reorder(self, indices: torch.Tensor) -> "EnsembleState":
        return EnsembleState([state.reorder(indices) for state in self.members])


class Ensemble(nn.Module):
    def __init__(self, models: list[nn.Module], weights: list[float] | None = None, combine: str = "logprob"):
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        weights = [1.0] * len(models) if weights is None else [float(w) for w in weights]
        if len(weights) != len(models):
            raise ValueError(f"ensemble.weights has {len(weights)} weights for {len(models)} models")
        if any(w < 0 or not math.isfinite(w) for w in weights) or sum(weights) <= 0:
            raise ValueError(f"ensemble.weights={weights}: weights must be finite, not negative, and not all 0")
        if combine not in COMBINE:
            raise ValueError(f"ensemble.combine={combine}: choose one of {', '.join(COMBINE)}")
        used = [(m, w) for m, w in zip(models, weights) if w > 0]
        self.members = nn.ModuleList(m for m, _ in used)
        total = sum(w for _, w in used)
        self.weights = [w / total for _, w in used]
        self.combine = combine
        self.max_positions = min(m.max_positions for m in self.members)

    def check_report(self, report: AttentionChoice) -> None:
        for m in self.members:
            m.check_report(report)

    def encode(self, src: torch.Tensor) -> list[EncoderOut]:
        return [m.encode(src) for m in self.members]

    def init_state(self, enc: list[EncoderOut], report: AttentionChoice | None = None) -> EnsembleState:
        return EnsembleState([m.init_state(e, report) for m, e in zip(self.members, enc)])

    def step(self, prev_token: torch.Tensor, state: EnsembleState):
        """The combined log-probabilities [B, V], the new state, and the weighted mean of the members'
        reported attention [B, S] (None unless init_state was asked for it)."""
        logps, states, attention = [], [], None
        for m, w, s in zip(self.members, self.weights, state.members):
            logp, s, attn = m.step(prev_token, s)
            logps.append(logp)
            states.append(s)
            if attn is not None:
                attention = w * attn.float() if attention is None else attention + w * attn.float()
        if len(logps) == 1:
            return logps[0], EnsembleState(states), attention
        stacked = torch.stack(logps)                                     # [M, B, V]
        w = torch.tensor(self.weights, dtype=stacked.dtype, device=stacked.device).view(-1, 1, 1)
        if self.combine == "logprob":
            combined = torch.log_softmax((stacked * w).sum(dim=0), dim=-1)
        else:
            combined = torch.logsumexp(stacked + w.log(), dim=0)
        return combined, EnsembleState(states), attention


def check_vocabularies(tokenizers: list, names: list[str]) -> None:
    """Refuse members whose tokenizers differ: the source must encode alike and the distributions must be over
    the same target pieces."""
    first = tokenizers[0]
    for tok, name in zip(tokenizers[1:], names[1:]):
        if getattr(tok, "newline_piece", None) != getattr(first, "newline_piece", None):
            raise ValueError(f"cannot ensemble {names[0]} with {name}: their tokenizers write line breaks "
                             f"differently (tokenizer.newline_piece {first.newline_piece!r} and "
                             f"{tok.newline_piece!r})")
        for side in ("tgt", "src"):
            a, b = _pieces(getattr(first, side)), _pieces(getattr(tok, side))
            if a != b:
                what = "target" if side == "tgt" else "source"
                raise ValueError(f"cannot ensemble {names[0]} with {name}: their {what} vocabularies differ "
                                 f"({len(a)} and {len(b)} pieces{_first_difference(a, b)}); an ensemble averages "
                                 f"distributions over one vocabulary: train the runs on the same data and tokenizer "
                                 f"settings (one cache entry)")


def _pieces(processor) -> list[str]:
    return [processor.id_to_piece(i) for i in range(processor.get_piece_size())]


def _first_difference(a: list[str], b: list[str]) -> str:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return f"; id {i} is {x!r} in one and {y!r} in the other"
    return ""
