"""Global attention of Luong et al. (2015): dot, general or concat score from the current state h_t.

The decoder turns the context into the attentional hidden state h~_t = tanh(W_c [c_t; h_t])
and (with input feeding) passes h~_t to the next step's input. The score functions live
here as LuongScore so that local attention (seq2seq.models.luong_local) shares them.
"""
from __future__ import annotations

import torch
from torch import nn

from seq2seq.models.kernels.gemm import Linear
from seq2seq.models.rnn_attention import grouped_softmax, masked_softmax

SCORES = ("dot", "general", "concat")


class LuongScore(nn.Module):
    """score(h_t, h_s): dot h_t.h_s | general h_t.(W_a h_s) | concat v^T tanh(W_a [h_t; h_s]).

    The key-side half of each is precomputed once per source.
    """

    def __init__(self, score: str, query_dim: int, key_dim: int):
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"model.attention.score must be one of {', '.join(SCORES)}, not '{score}'")
        if score == "dot" and query_dim != key_dim:
            raise ValueError(
                f"Luong dot attention needs the decoder state size ({query_dim}) to equal the encoder output "
                f"size ({key_dim}); use score=general or concat, or match the sizes"
            )
        self.score = score
        if score == "general":
            self.key_proj = Linear(key_dim, query_dim, bias=False)
        elif score == "concat":
            self.key_proj = Linear(key_dim, query_dim, bias=False)
            self.query_proj = Linear(query_dim, query_dim)
            self.v = Linear(query_dim, 1, bias=False)

    def project_keys(self, keys: torch.Tensor) -> torch.Tensor:
        return keys if self.score == "dot" else self.key_proj(keys)

    def forward(self, query: torch.Tensor, projected: torch.Tensor, group: int = 1) -> torch.Tensor:
        """Scores [B*k,S] of query [B*k,Dq] against projected keys [B,S,Dq] (k = group consecutive
        queries per key row)."""
        batch, steps, size = projected.shape
        if self.score == "concat":
            hidden = projected[:, None] + self.query_proj(query).view(batch, group, 1, size)
            return self.v(torch.tanh(hidden)).reshape(batch * group, steps)
        if group == 1:
            return torch.bmm(projected, query[:, :, None])[:, :, 0]
        return torch.bmm(projected, query.view(batch, group, size).transpose(1, 2)).transpose(1, 2).reshape(
            batch * group, steps)


class LuongAttention(nn.Module):
    query_timing = "current"
    grouped_queries = True

    def __init__(self, query_dim: int, key_dim: int, score: str = "general"):
        super().__init__()
        self.scorer = LuongScore(score, query_dim, key_dim)
        self.context_dim = key_dim

    def precompute(self, keys: torch.Tensor, padding_mask: torch.Tensor) -> tuple:
        return keys, self.scorer.project_keys(keys), padding_mask

    def forward(self, query: torch.Tensor, memory: tuple, position: int, need_weights: bool = True, group: int = 1):
        keys, projected, padding_mask = memory
        batch, steps = projected.shape[:2]
        weights = grouped_softmax(self.scorer(query, projected, group), padding_mask, group)
        return torch.bmm(weights.view(batch, group, steps), keys).view(batch * group, -1), weights

    def attend_all(self, queries: torch.Tensor, memory: tuple, need_weights: bool = True):
        """Every target position at once: queries [B,T,Dq] -> (contexts [B,T,C], weights [B,T,S])."""
        keys, projected, padding_mask = memory
        if self.scorer.score == "concat":
            scores = torch.stack([self.scorer(q, projected) for q in queries.unbind(1)], dim=1)
        else:
            scores = torch.bmm(queries, projected.transpose(1, 2))
        weights = masked_softmax(scores, padding_mask[:, None, :].expand_as(scores))
        return torch.bmm(weights, keys), weights
