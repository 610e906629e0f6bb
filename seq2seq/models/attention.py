"""Multi-head scaled dot-product attention, the Transformer's and usable as any decoder's cross-attention.

Every attention in the package takes a key padding mask ([B, S], True at padding) and
can return its weights ([B, T, S], averaged over heads unless one head is asked for),
which are exactly zero on padding.
"""
from __future__ import annotations

import torch
from torch import nn

from seq2seq.models.kernels.attention import attend
from seq2seq.models.kernels.gemm import Linear


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, H*dh] -> [B, H, T, dh]."""
    b, t, d = x.shape
    return x.view(b, t, heads, d // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """[B, H, T, dh] -> [B, T, H*dh]."""
    b, h, t, dh = x.shape
    return x.transpose(1, 2).reshape(b, t, h * dh)


class MultiHeadAttention(nn.Module):
    """Cross-attention from queries of size query_dim to a memory of size key_dim.

    The keys and values of a memory are projected once (project_memory) and reused at
    every decoding step.
    """

    def __init__(self, query_dim: int, key_dim: int, heads: int = 8, dropout: float = 0.0, name: str = "multihead"):
        super().__init__()
        if query_dim % heads:
            raise ValueError(f"attention heads ({heads}) must divide the query size ({query_dim})")
        self.heads, self.dropout = heads, dropout
        self.q_proj = Linear(query_dim, query_dim)
        self.kv_proj = Linear(key_dim, 2 * query_dim)
        self.out_proj = Linear(query_dim, query_dim)
        self.output_dim = query_dim

    def attention_shape(self) -> tuple[int, int]:
        """(heads, head size), for kernels.attention=auto (seq2seq.models.kernels.attention)."""
        return self.heads, self.output_dim // self.heads

    def project_memory(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv_proj(memory).chunk(2, dim=-1)
        return split_heads(k, self.heads), split_heads(v, self.heads)

    def forward(self, query, memory_kv, padding_mask, need_weights: bool = False, group: int = 1):
        """query [B,T,Dq]; memory_kv from project_memory; padding_mask [B,S] True at padding.

        With group=k, the memory has B/k rows and query rows k*i .. k*i+k-1 all attend to
        memory row i (k beam hypotheses of one sentence), with no copy of the memory.
        Returns (output [B,T,Dq], per-head weights [B,H,T,S] or None).
        """
        k, v = memory_kv
        b, t, d = query.shape
        q = split_heads(self.q_proj(query).reshape(b // group, group * t, d), self.heads)
        mask = (~padding_mask)[:, None, None, :]
        out, weights = attend(q, k, v, mask, self.dropout if self.training else 0.0, need_weights)
        if weights is not None and group > 1:
            s = weights.size(-1)
            weights = weights.view(b // group, self.heads, group, t, s).transpose(1, 2).reshape(b, self.heads, t, s)
        return self.out_proj(merge_heads(out).reshape(b, t, d)), weights
