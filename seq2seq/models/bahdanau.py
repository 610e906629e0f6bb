"""Additive attention (Bahdanau et al., 2015): score_j = v^T tanh(W h_j + U s_{t-1}).

It reads the decoder state before the step (s_{t-1}), so the context can enter the RNN
input of step t, as in the paper. W h_j is computed once per source.
"""
from __future__ import annotations

import torch
from torch import nn

from seq2seq.models.rnn_attention import masked_softmax


class BahdanauAttention(nn.Module):
    query_timing = "previous"

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int = 0):
        """hidden_dim: size of the tanh layer; 0 = query_dim."""
        super().__init__()
        hidden_dim = hidden_dim or query_dim
        self.key_proj = nn.Linear(key_dim, hidden_dim, bias=False)
        self.query_proj = nn.Linear(query_dim, hidden_dim)
        self.v = nn.Linear(hidden_dim, 1, bias=False)
        self.context_dim = key_dim

    def precompute(self, keys: torch.Tensor, padding_mask: torch.Tensor) -> tuple:
        return keys, self.key_proj(keys), padding_mask

    def forward(self, query: torch.Tensor, memory: tuple, position: int, need_weights: bool = True):
        keys, projected, padding_mask = memory
        scores = self.v(torch.tanh(projected + self.query_proj(query)[:, None])).squeeze(-1)
        weights = masked_softmax(scores, padding_mask)
        return torch.bmm(weights[:, None], keys)[:, 0], weights
