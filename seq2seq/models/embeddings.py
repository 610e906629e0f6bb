"""Token embeddings and sinusoidal positions."""
from __future__ import annotations

import math

import torch
from torch import nn

from seq2seq.data.tokenizer import PAD


class TokenEmbedding(nn.Embedding):
    """Embedding scaled by sqrt(dim), so that it is on the scale of the positions added to it."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__(vocab_size, dim, padding_idx=PAD)
        nn.init.normal_(self.weight, mean=0.0, std=dim**-0.5)
        with torch.no_grad():
            self.weight[PAD].zero_()
        self.scale = math.sqrt(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return super().forward(tokens) * self.scale


class SinusoidalPositions(nn.Module):
    """Fixed sin/cos position encodings (Vaswani et al., 2017), computed once up to max_positions."""

    def __init__(self, dim: int, max_positions: int):
        super().__init__()
        position = torch.arange(max_positions, dtype=torch.float).unsqueeze(1)
        freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float) * (-math.log(10000.0) / dim))
        table = torch.zeros(max_positions, dim)
        table[:, 0::2] = torch.sin(position * freq)
        table[:, 1::2] = torch.cos(position * freq[: dim // 2])
        self.register_buffer("table", table, persistent=False)
        self.max_positions = max_positions

    def forward(self, length: int, offset: int = 0) -> torch.Tensor:
        """[length, dim] encodings of positions offset .. offset+length-1."""
        if offset + length > self.max_positions:
            raise ValueError(f"sequence of {offset + length} positions exceeds model.max_positions={self.max_positions}")
        return self.table[offset : offset + length]
