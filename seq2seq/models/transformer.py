"""Transformer encoder and decoder (Vaswani et al., 2017), pre-norm or post-norm.

The decoder caches each layer's self-attention keys and values and the projected
encoder memory, so that a generation step costs one position, not the whole prefix.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seq2seq.models.attention import MultiHeadAttention, merge_heads, split_heads
from seq2seq.models.kernels.attention import attend
from seq2seq.models.kernels.dropout import Dropout
from seq2seq.models.embeddings import SinusoidalPositions
from seq2seq.models.kernels.gemm import Linear
from seq2seq.models.model import AttentionChoice, DecoderOut, EncoderOut, hypotheses_per_sentence, regroup


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention heads ({heads}) must divide the model size ({dim})")
        self.heads, self.dropout = heads, dropout
        self.qkv_proj = Linear(dim, 3 * dim)
        self.out_proj = Linear(dim, dim)

    def attention_shape(self) -> tuple[int, int]:
        """(heads, head size), for kernels.attention=auto (seq2seq.models.kernels.attention)."""
        return self.heads, self.out_proj.in_features // self.heads

    def forward(self, x, mask=None, causal=False, cache=None):
        """x [B,T,D]. With cache (k, v) of earlier positions, x holds only the new ones; returns (out, (k, v))."""
        q, k, v = (split_heads(t, self.heads) for t in self.qkv_proj(x).chunk(3, dim=-1))
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        out, _ = attend(q, k, v, mask, self.dropout if self.training else 0.0, causal=causal)
        return self.out_proj(merge_heads(out)), (k, v)


class FeedForward(nn.Module):
    """down(dropout(relu(up(x)))). Checkpoints from before the names were ffn.0 (up) and ffn.3 (down):
    seq2seq.models.model.RENAMED_PARAMETERS maps them."""

    def __init__(self, dim: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.up = Linear(dim, ffn_dim)
        self.dropout = Dropout(dropout)
        self.down = Linear(ffn_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.dropout(torch.relu(self.up(x))))


class EncoderLayer(nn.Module):
    def __init__(self, dim, heads, ffn_dim, dropout, attention_dropout, activation_dropout, pre_norm):
        super().__init__()
        self.self_attn = SelfAttention(dim, heads, attention_dropout)
        self.ffn = FeedForward(dim, ffn_dim, activation_dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout, self.pre_norm = Dropout(dropout), pre_norm

    def forward(self, x, mask):
        if self.pre_norm:
            x = x + self.dropout(self.self_attn(self.norm1(x), mask)[0])
            return x + self.dropout(self.ffn(self.norm2(x)))
        x = self.norm1(x + self.dropout(self.self_attn(x, mask)[0]))
        return self.norm2(x + self.dropout(self.ffn(x)))


class DecoderLayer(nn.Module):
    def __init__(self, dim, heads, ffn_dim, dropout, attention_dropout, activation_dropout, pre_norm, cross_attn):
        super().__init__()
        self.self_attn = SelfAttention(dim, heads, attention_dropout)
        self.cross_attn = cross_attn
        self.ffn = FeedForward(dim, ffn_dim, activation_dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.dropout, self.pre_norm = Dropout(dropout), pre_norm

    def forward(self, x, memory_kv, padding_mask, cache=None, need_weights=False, group=1):
        """(output, self-attention (k, v), cross-attention weights [B,H,T,S] or None, cross-attention output)."""
        causal = cache is None  # a cached step attends to all earlier positions
        if self.pre_norm:
            h, kv = self.self_attn(self.norm1(x), causal=causal, cache=cache)
            x = x + self.dropout(h)
            h, weights = self.cross_attn(self.norm2(x), memory_kv, padding_mask, need_weights, group)
            x = x + self.dropout(h)
            return x + self.dropout(self.ffn(self.norm3(x))), kv, weights, h
        h, kv = self.self_attn(x, causal=causal, cache=cache)
        x = self.norm1(x + self.dropout(h))
        c, weights = self.cross_attn(x, memory_kv, padding_mask, need_weights, group)
        x = self.norm2(x + self.dropout(c))
        return self.norm3(x + self.dropout(self.ffn(x))), kv, weights, c


def _init_linears(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)


class TransformerEncoder(nn.Module):
    def __init__(self, embed: nn.Module, embed_dim: int, max_positions: int, layers: int = 6, heads: int = 8,
                 ffn_dim: int = 2048, dropout: float = 0.1, attention_dropout: float = 0.0,
                 activation_dropout: float = 0.0, pre_norm: bool = True):
        super().__init__()
        self.embed, self.positions = embed, SinusoidalPositions(embed_dim, max_positions)
        self.dropout = Dropout(dropout)
        self.layers = nn.ModuleList(
            EncoderLayer(embed_dim, heads, ffn_dim, dropout, attention_dropout, activation_dropout, pre_norm)
            for _ in range(layers)
        )
        self.final_norm = nn.LayerNorm(embed_dim) if pre_norm else nn.Identity()
        self.output_dim = embed_dim
        _init_linears(self.layers)

    def forward(self, src: torch.Tensor, padding_mask: torch.Tensor) -> EncoderOut:
        x = self.dropout(self.embed(src) + self.positions(src.size(1)))
        mask = (~padding_mask)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, mask)
        return EncoderOut(self.final_norm(x), padding_mask, src)


@dataclass
class TransformerState:
    """Per-layer self-attention caches of the hypotheses being decoded, and the projected encoder memory.

    The memory is kept once per source sentence, not once per hypothesis: `group` maps each
    hypothesis row to its memory row. Reordering hypotheses (beam search does it every step)
    then copies only the self-attention caches; the memory is compacted only when sentences
    leave the batch. When the rows are k hypotheses of each sentence in order (the beam
    search's layout), cross-attention treats the k hypotheses as k queries of one sentence.
    """

    self_kv: list
    memory_kv: list
    padding_mask: torch.Tensor
    position: int
    attention: AttentionChoice | None  # the cross-attention to report, None for none
    group: torch.Tensor | None = None  # [rows] memory row of each hypothesis; None = one row each

    def reorder(self, indices: torch.Tensor) -> "TransformerState":
        pick = lambda pair, idx: (pair[0].index_select(0, idx), pair[1].index_select(0, idx))  # noqa: E731
        memory_kv, padding_mask = self.memory_kv, self.padding_mask
        used, group = regroup(self.group, indices)
        if used.numel() < padding_mask.size(0):  # sentences left: drop their memory
            memory_kv = [pick(kv, used) for kv in memory_kv]
            padding_mask = padding_mask.index_select(0, used)
        return TransformerState([pick(kv, indices) if kv is not None else None for kv in self.self_kv],
                                memory_kv, padding_mask, self.position, self.attention, group)

    def memory_for_rows(self):
        """(memory_kv, padding_mask, k): per-sentence memory when the layout allows, else gathered per row."""
        k = hypotheses_per_sentence(self.group, self.padding_mask.size(0))
        if k:
            return self.memory_kv, self.padding_mask, k
        pick = lambda pair: (pair[0].index_select(0, self.group), pair[1].index_select(0, self.group))  # noqa: E731
        return [pick(kv) for kv in self.memory_kv], self.padding_mask.index_select(0, self.group), 1


class TransformerDecoder(nn.Module):
    accepted_attention = MultiHeadAttention  # build_model refuses any other (models/model.py: check_pairing)

    def __init__(self, embed: nn.Module, embed_dim: int, max_positions: int, attention, layers: int = 6,
                 heads: int = 8, ffn_dim: int = 2048, dropout: float = 0.1, attention_dropout: float = 0.0,
                 activation_dropout: float = 0.0, pre_norm: bool = True, encoder_dim: int | None = None):
        super().__init__()
        self.embed, self.positions = embed, SinusoidalPositions(embed_dim, max_positions)
        self.dropout = Dropout(dropout)
        encoder_dim = encoder_dim or embed_dim
        cross = [attention(query_dim=embed_dim, key_dim=encoder_dim) for _ in range(layers)]
        self.layers = nn.ModuleList(
            DecoderLayer(embed_dim, heads, ffn_dim, dropout, attention_dropout, activation_dropout, pre_norm, c)
            for c in cross
        )
        self.final_norm = nn.LayerNorm(embed_dim) if pre_norm else nn.Identity()
        self.output_dim = self.context_dim = embed_dim
        _init_linears(self.layers)

    def check_attention(self, choice: AttentionChoice) -> None:
        """Refuse a layer or head this decoder does not have (layer -1 = last, head -1 = mean of heads)."""
        n, heads = len(self.layers), self.layers[0].cross_attn.heads
        if not -n <= choice.layer < n:
            raise ValueError(f"attention layer {choice.layer} but the decoder has {n} layers (0..{n - 1}, or -1 for "
                             f"the last)")
        if not -1 <= choice.head < heads:
            raise ValueError(f"attention head {choice.head} but the attention has {heads} heads "
                             f"(0..{heads - 1}, or -1 = mean)")

    def _run(self, x, memory_kv, padding_mask, choice, caches=None, group=1):
        """x through the layers; the chosen layer's cross-attention weights [B,T,S] and output [B,T,D]."""
        chosen = choice.layer % len(self.layers) if choice is not None else -1
        new_caches, weights, context = [], None, None
        for i, layer in enumerate(self.layers):
            want = i == chosen
            x, kv, w, h = layer(x, memory_kv[i], padding_mask, cache=None if caches is None else caches[i],
                                need_weights=want, group=group)
            new_caches.append(kv)
            if want:
                weights = w.mean(dim=1) if choice.head < 0 else w[:, choice.head]
                context = h
        return self.final_norm(x), new_caches, weights, context

    def forward(self, prev_tokens: torch.Tensor, enc: EncoderOut, attention: AttentionChoice | None = None,
                coverage_vector: bool = True) -> DecoderOut:
        """Teacher-forced DecoderOut [B,T,...] for the whole target (the chosen attention when asked).
        coverage_vector: part of the decoder contract; no attention here reads a coverage vector."""
        embedded = self.embed(prev_tokens) + self.positions(prev_tokens.size(1))
        memory = [layer.cross_attn.project_memory(enc.states) for layer in self.layers]
        features, _, weights, context = self._run(self.dropout(embedded), memory, enc.padding_mask, attention)
        if attention is None:
            return DecoderOut(features)
        return DecoderOut(features, weights, context, embedded)

    def init_state(self, enc: EncoderOut, attention: AttentionChoice | None = None) -> TransformerState:
        memory = [layer.cross_attn.project_memory(enc.states) for layer in self.layers]
        return TransformerState([None] * len(self.layers), memory, enc.padding_mask, 0, attention)

    def step(self, prev_token: torch.Tensor, state: TransformerState):
        """One position for every hypothesis: prev_token [B] -> (DecoderOut [B,...], new state)."""
        embedded = self.embed(prev_token[:, None]) + self.positions(1, state.position)
        memory_kv, padding_mask, k = state.memory_for_rows()
        features, caches, weights, context = self._run(embedded, memory_kv, padding_mask, state.attention,
                                                       state.self_kv, k)
        new_state = TransformerState(caches, state.memory_kv, state.padding_mask, state.position + 1,
                                     state.attention, state.group)
        if state.attention is None:
            return DecoderOut(features[:, 0]), new_state
        return DecoderOut(features[:, 0], weights[:, 0], context[:, 0], embedded[:, 0]), new_state
