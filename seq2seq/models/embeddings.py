"""Token embeddings and sinusoidal positions."""
from __future__ import annotations

import math

import numpy as np
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


POSITIONS_LAYOUT = 2  # 1: sin/cos interleaved (before the exports); 2: sin | cos halves (Marian's and Pegasus's)


class SinusoidalPositions(nn.Module):
    """Fixed sin/cos position encodings (Vaswani et al., 2017), computed once up to max_positions.

    Position p (from 0) has sin(p / 10000^(2i/dim)) in column i of the first half and the cos of the same angle
    in column i of the second half: the layout of Hugging Face's Marian and Pegasus, computed the same way (in
    float64, then rounded), so that exported models see the very same numbers. Checkpoints carry the layout's
    number in the buffer `layout`; seq2seq.decode.load_run refuses those trained with the older interleaved
    layout (which had no such buffer): see seq2seq.training.checkpoint.check_positions_layout.
    """

    def __init__(self, dim: int, max_positions: int):
        super().__init__()
        self.register_buffer("table", sinusoid_table(max_positions, dim), persistent=False)
        # a float, so that whatever handles every floating tensor alike (averaging, .half()) keeps it exact
        self.register_buffer("layout", torch.tensor(float(POSITIONS_LAYOUT)))
        self.max_positions = max_positions

    def forward(self, length: int, offset: int = 0) -> torch.Tensor:
        """[length, dim] encodings of positions offset .. offset+length-1."""
        if offset + length > self.max_positions:
            raise ValueError(f"sequence of {offset + length} positions exceeds model.max_positions={self.max_positions}")
        return self.table[offset : offset + length]


def sinusoid_table(positions: int, dim: int) -> torch.Tensor:
    """[positions, dim] float32: sines in the first ceil(dim/2) columns, cosines in the rest (Marian's formula)."""
    angles = np.arange(positions, dtype=np.float64)[:, None] / np.power(10000, 2 * (np.arange(dim) // 2) / dim)
    half = (dim + 1) // 2
    table = torch.empty(positions, dim)
    table[:, :half] = torch.from_numpy(np.sin(angles[:, 0::2])).float()
    table[:, half:] = torch.from_numpy(np.cos(angles[:, 1::2])).float()
    return table
