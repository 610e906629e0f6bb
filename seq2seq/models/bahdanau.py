"""Additive attention (Bahdanau et al., 2015): score_j = v^T tanh(W h_j + U s_{t-1} [+ w_c c_j^t]).

It reads the decoder state before the step (s_{t-1}), so the context can enter the RNN
input of step t, as in the paper. W h_j is computed once per source. With coverage=true
the score also reads the coverage c_j^t, the attention position j received at the
earlier steps (See et al., 2017, eq. 11), so the model can learn not to attend to what
it has already covered; w_c starts at zero, so switching coverage on changes nothing
until it is trained (the coverage loss, optim.coverage_loss, gives it a reason to).
"""
from __future__ import annotations

import torch
from torch import nn

from seq2seq.models.rnn_attention import masked_softmax


class BahdanauAttention(nn.Module):
    query_timing = "previous"

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int = 0, coverage: bool = False):
        """hidden_dim: size of the tanh layer; 0 = query_dim. coverage: the score reads c^t."""
        super().__init__()
        hidden_dim = hidden_dim or query_dim
        self.key_proj = nn.Linear(key_dim, hidden_dim, bias=False)
        self.query_proj = nn.Linear(query_dim, hidden_dim)
        self.v = nn.Linear(hidden_dim, 1, bias=False)
        self.coverage = coverage
        if coverage:
            self.coverage_proj = nn.Parameter(torch.zeros(hidden_dim))  # w_c
        self.context_dim = key_dim

    def precompute(self, keys: torch.Tensor, padding_mask: torch.Tensor) -> tuple:
        return keys, self.key_proj(keys), padding_mask

    def forward(self, query: torch.Tensor, memory: tuple, position: int, need_weights: bool = True,
                coverage: torch.Tensor | None = None):
        keys, projected, padding_mask = memory
        hidden = projected + self.query_proj(query)[:, None]
        if self.coverage:
            if coverage is None:
                raise ValueError("BahdanauAttention(coverage=True) needs the coverage vector")
            hidden = hidden + coverage[:, :, None].to(hidden.dtype) * self.coverage_proj
        scores = self.v(torch.tanh(hidden)).squeeze(-1)
        weights = masked_softmax(scores, padding_mask)
        return torch.bmm(weights[:, None], keys)[:, 0], weights
