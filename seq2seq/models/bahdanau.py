"""Additive attention (Bahdanau et al., 2015): score_j = v^T tanh(W h_j + U s [+ w_c c_j^t]).

timing=previous (the paper's): it reads the decoder state before the step, s = s_{t-1}, so
the context can enter the RNN input of step t. timing=current: it reads the state after the
step, s = s_t, as in See et al. (2017, eq. 1); with no input feeding the decoder then runs
the RNN and this attention over the whole target at once in training (attend_all), which is
several times faster than step by step. W h_j is computed once per source. With coverage=true
the score also reads the coverage c_j^t, the attention position j received at the
earlier steps (See et al., 2017, eq. 11), so the model can learn not to attend to what
it has already covered; w_c starts at zero, so switching coverage on changes nothing
until it is trained (the coverage loss, optim.coverage_loss, gives it a reason to).
"""
from __future__ import annotations

import torch
from torch import nn

from seq2seq.models.kernels.gemm import Linear
from seq2seq.models.rnn_attention import grouped_softmax, masked_softmax


TIMINGS = ("previous", "current")
CHUNK_ELEMENTS = 1 << 23  # attend_all: at most this many elements of the [B, t, S, hidden] tanh layer at once


class BahdanauAttention(nn.Module):
    grouped_queries = True

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int = 0, coverage: bool = False,
                 timing: str = "previous"):
        """hidden_dim: size of the tanh layer; 0 = query_dim. coverage: the score reads c^t.
        timing: previous (query s_{t-1}, context into the RNN input) or current (query s_t)."""
        super().__init__()
        if timing not in TIMINGS:
            raise ValueError(f"model.attention.timing must be previous or current, not '{timing}'")
        self.query_timing = timing
        hidden_dim = hidden_dim or query_dim
        self.key_proj = Linear(key_dim, hidden_dim, bias=False)
        self.query_proj = Linear(query_dim, hidden_dim)
        self.v = Linear(hidden_dim, 1, bias=False)
        self.coverage = coverage
        if coverage:
            self.coverage_proj = nn.Parameter(torch.zeros(hidden_dim))  # w_c
        self.context_dim = key_dim

    def precompute(self, keys: torch.Tensor, padding_mask: torch.Tensor) -> tuple:
        return keys, self.key_proj(keys), padding_mask

    def forward(self, query: torch.Tensor, memory: tuple, position: int, need_weights: bool = True,
                coverage: torch.Tensor | None = None, group: int = 1):
        """query [B*k,Dq] against memory rows [B,...] (k = group consecutive queries per memory row);
        coverage [B*k,S] -> (context [B*k,C], weights [B*k,S])."""
        keys, projected, padding_mask = memory
        batch, steps, size = projected.shape
        hidden = projected[:, None] + self.query_proj(query).view(batch, group, 1, size)  # [B,k,S,hidden]
        if self.coverage:
            if coverage is None:
                raise ValueError("BahdanauAttention(coverage=True) needs the coverage vector")
            hidden = hidden + coverage.view(batch, group, steps, 1).to(hidden.dtype) * self.coverage_proj
        scores = self.v(torch.tanh(hidden)).reshape(batch * group, steps)
        weights = grouped_softmax(scores, padding_mask, group)
        return torch.bmm(weights.view(batch, group, steps), keys).view(batch * group, -1), weights

    def attend_all(self, queries: torch.Tensor, memory: tuple, need_weights: bool = True):
        """Every target position at once, without coverage: queries [B,T,Dq] -> (contexts [B,T,C],
        weights [B,T,S]); the [B,T,S,hidden] tanh layer is computed a chunk of positions at a time."""
        keys, projected, padding_mask = memory
        batch, steps = queries.shape[:2]
        query = self.query_proj(queries)
        per_step = max(1, batch * projected.size(1) * projected.size(2))
        chunk = max(1, CHUNK_ELEMENTS // per_step)
        scores = torch.cat([self.v(torch.tanh(projected[:, None] + query[:, t:t + chunk, None])).squeeze(-1)
                            for t in range(0, steps, chunk)], dim=1)
        weights = masked_softmax(scores, padding_mask[:, None, :].expand_as(scores))
        return torch.bmm(weights, keys), weights
