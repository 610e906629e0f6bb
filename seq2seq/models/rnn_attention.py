"""What an RNN decoder asks of its attention, and the helpers every RNN attention shares.

An attention module for RNNDecoder is built as attention(query_dim=, key_dim=) and offers
  query_timing             "previous": it reads the decoder state before the step and its
                           context enters the RNN input (Bahdanau); "current": it reads
                           the state after the step and the decoder forms the attentional
                           hidden state tanh(W_c [c_t; h_t]) (Luong)
  context_dim              size of the context vectors it returns
  precompute(keys, mask)   -> memory: a tuple of batch-first tensors (keys [B,S,Dk],
                           their projections, the padding mask [B,S] True at padding ...),
                           computed once per source so a step costs one query
  forward(query [B,Dq], memory, position, need_weights)
                           -> (context [B,context_dim], weights [B,S] (multi-head: [B,H,S]) or None);
                           position is the target step t (local-m centres its window there)
  attend_all(queries [B,T,Dq], memory, need_weights)
                           optional: every target position at once, without coverage
                           -> (contexts [B,T,C], weights [B,T,S] (multi-head: [B,H,T,S])); with
                           "current" timing and no input feeding the decoder then trains without
                           a step loop
  grouped_queries          optional, True when forward also takes group=k: the memory then has
                           one row per k consecutive query rows (k beam hypotheses of a sentence),
                           so the decoder never copies the memory per hypothesis
  coverage                 optional, True when the score also reads the coverage vector c^t
                           (attention summed over earlier steps): forward then takes coverage=[B,S]
                           and the decoder carries c^t in its state
Weights are a distribution over the real source positions and exactly 0 on padding. RNNAttention below is
this contract's typing.Protocol.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn

from seq2seq.models.attention import MultiHeadAttention


@runtime_checkable
class RNNAttention(Protocol):
    """The members every RNN attention has (the optional ones, attend_all, grouped_queries and coverage, are
    described in the module docstring); RNNDecoder refuses a module without them."""

    query_timing: str  # "previous" | "current"
    context_dim: int

    def precompute(self, keys: torch.Tensor, padding_mask: torch.Tensor) -> tuple: ...

    def forward(self, query: torch.Tensor, memory: tuple, position: int, need_weights: bool = True): ...


def masked_softmax(scores: torch.Tensor, allowed_not: torch.Tensor) -> torch.Tensor:
    """Softmax of scores [B,S] over the positions where allowed_not [B,S] is False.

    Masked positions get -inf before the softmax, so their weight is exactly 0.
    """
    return scores.float().masked_fill(allowed_not, float("-inf")).softmax(dim=-1).to(scores.dtype)


def grouped_softmax(scores: torch.Tensor, padding_mask: torch.Tensor, group: int) -> torch.Tensor:
    """masked_softmax of scores [B*k,S] whose padding mask [B,S] holds one row per k query rows."""
    return masked_softmax(scores, padding_mask.repeat_interleave(group, 0) if group > 1 else padding_mask)


def source_lengths(padding_mask: torch.Tensor) -> torch.Tensor:
    """Real source length [B] (as float, for positions) from a padding mask [B,S]."""
    return (~padding_mask).sum(dim=1).to(torch.float)


class MultiHeadAdapter(nn.Module):
    """The Transformer's MultiHeadAttention behind the RNN attention contract (Luong timing).

    Its weights are per head [B,H,S]; the decoder reports the mean or the head the caller chose.
    """

    query_timing = "current"
    grouped_queries = True

    def __init__(self, attention: MultiHeadAttention):
        super().__init__()
        self.attention = attention
        self.context_dim = attention.output_dim

    def precompute(self, keys: torch.Tensor, padding_mask: torch.Tensor) -> tuple:
        k, v = self.attention.project_memory(keys)
        return k, v, padding_mask

    def forward(self, query, memory, position: int, need_weights: bool = False, group: int = 1):
        k, v, padding_mask = memory
        out, weights = self.attention(query[:, None], (k, v), padding_mask, need_weights, group)
        if weights is None:
            return out[:, 0], None
        return out[:, 0], weights[:, :, 0]  # [B, H, S]

    def attend_all(self, queries, memory, need_weights: bool = True):
        k, v, padding_mask = memory
        return self.attention(queries, (k, v), padding_mask, need_weights)
