"""Recurrent encoder (LSTM or GRU) and the bridge that hands its final states to an RNN decoder.

The encoder never lets padding reach its states. On a CPU it runs each direction of each layer as a few calls
of the fused (oneDNN) kernel, one per distinct source length in the batch (run_by_length): several times
faster than packed sequences there, which step through time one small product at a time; on a GPU it runs over
packed sequences (cuDNN). Checkpoints written before this module existed name seq2seq.models.rnn.RNNEncoder;
seq2seq.models.model.build_model maps that name here.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq.models.kernels.dropout import Dropout
from seq2seq.models.kernels.gemm import Linear
from seq2seq.models.model import EncoderOut

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU}
BRIDGES = ("learned", "mean", "zero")


def run_by_length(x: torch.Tensor, lengths: list[int], weights: list, lstm: bool):
    """One direction of one RNN layer over x [B,S,D] whose rows hold lengths[b] real positions at
    the start, sorted longest first: (outputs [B,S,H], 0 at padding; last states h [B,H] and c [B,H]
    (None for a GRU) at each row's last real position). The time axis is cut at each distinct
    length; every piece is one fused call over the rows still running, so padding is never read."""
    batch, steps = x.shape[:2]
    hidden = weights[1].size(1)
    h = x.new_zeros(batch, hidden)
    c = x.new_zeros(batch, hidden) if lstm else None
    pieces, start = [], 0
    for end in sorted(set(lengths) - {0}):
        n = sum(1 for length in lengths if length >= end)  # a prefix: rows are sorted longest first
        if lstm:
            out, h_n, c_n = torch.lstm(x[:n, start:end], (h[None, :n], c[None, :n]), weights, True, 1, 0.0,
                                       False, False, True)
            c = torch.cat([c_n[0], c[n:]])
        else:
            out, h_n = torch.gru(x[:n, start:end], h[None, :n], weights, True, 1, 0.0, False, False, True)
        h = torch.cat([h_n[0], h[n:]])
        pieces.append(F.pad(out, (0, 0, 0, 0, 0, batch - n)))
        start = end
    out = torch.cat(pieces, dim=1)
    return F.pad(out, (0, 0, 0, steps - out.size(1))), h, c


class RNNEncoder(nn.Module):
    """A (bi)directional LSTM/GRU over the source embeddings.

    final: for each layer the last states of both directions, concatenated: h [L,B,D_enc]
    for a GRU, (h, c) for an LSTM, with D_enc = output_dim. max_positions is accepted for
    the common constructor signature; a recurrent encoder has no length limit of its own.
    """

    def __init__(self, embed: nn.Module, embed_dim: int, max_positions: int, cell: str = "lstm", layers: int = 1,
                 hidden_size: int = 256, bidirectional: bool = True, dropout: float = 0.3):
        super().__init__()
        self.embed, self.dropout = embed, Dropout(dropout)
        if cell not in CELLS:
            raise ValueError(f"model.encoder.cell must be lstm or gru, not '{cell}'")
        self.rnn = CELLS[cell](embed_dim, hidden_size, num_layers=layers, dropout=dropout if layers > 1 else 0.0,
                               bidirectional=bidirectional, batch_first=True)
        self.layers, self.directions = layers, 2 if bidirectional else 1
        self.output_dim = hidden_size * self.directions
        self.lstm, self.between_layers = cell == "lstm", dropout if layers > 1 else 0.0

    def _merge_directions(self, h: torch.Tensor) -> torch.Tensor:
        """[L*dirs, B, H] -> [L, B, dirs*H]."""
        _, batch, hidden = h.shape
        return h.view(self.layers, self.directions, batch, hidden).permute(0, 2, 1, 3).reshape(
            self.layers, batch, self.directions * hidden)

    def _by_length(self, x: torch.Tensor, lengths: torch.Tensor):
        """nn.LSTM/GRU's (outputs, final states) over the real positions, with run_by_length."""
        order = lengths.argsort(descending=True, stable=True)
        restore = order.argsort()
        x, lengths = x[order], lengths[order]
        steps = x.size(1)
        position = torch.arange(steps, device=x.device)[None, :]
        # the second direction reads each row's real positions backwards (padding stays at the end)
        backwards = torch.where(position < lengths[:, None], lengths[:, None] - 1 - position, position)
        length_list = lengths.tolist()
        finals_h, finals_c = [], []
        for layer in range(self.layers):
            outputs = []
            for direction in range(self.directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                weights = [getattr(self.rnn, f"{name}{suffix}") for name in
                           ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
                inputs = x.gather(1, backwards[..., None].expand_as(x)) if direction else x
                out, h, c = run_by_length(inputs, length_list, weights, self.lstm)
                outputs.append(out.gather(1, backwards[..., None].expand_as(out)) if direction else out)
                finals_h.append(h)
                finals_c.append(c)
            x = torch.cat(outputs, dim=-1)
            if layer < self.layers - 1:
                x = F.dropout(x, self.between_layers, self.training)  # as nn.LSTM's dropout between layers
        h = torch.stack(finals_h)[:, restore]
        final = (h, torch.stack(finals_c)[:, restore]) if self.lstm else h
        return x[restore], final

    def forward(self, src: torch.Tensor, padding_mask: torch.Tensor) -> EncoderOut:
        x = self.dropout(self.embed(src))
        lengths = (~padding_mask).sum(dim=1)
        if x.device.type == "cpu":
            states, final = self._by_length(x, lengths)
        else:
            packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, final = self.rnn(packed)
            states, _ = pad_packed_sequence(out, batch_first=True, total_length=src.size(1))
        if isinstance(final, tuple):
            final = tuple(self._merge_directions(f) for f in final)
        else:
            final = self._merge_directions(final)
        return EncoderOut(self.dropout(states), padding_mask, src, final)


class Bridge(nn.Module):
    """The decoder's initial hidden states [L_dec, B, H] from the encoder.

    learned: tanh(W h_final) of the encoder's final states (layer l from encoder layer l
             when the depths match, else every layer from the top encoder layer; an LSTM
             cell state is bridged from the encoder's cell state when it has one, else zero);
    mean:    tanh(W mean_s h_s) of the encoder states over the real positions (any encoder);
    zero:    zeros.
    """

    def __init__(self, kind: str, encoder_dim: int, hidden_size: int, layers: int, lstm: bool):
        super().__init__()
        if kind not in BRIDGES:
            raise ValueError(f"model.decoder.bridge must be one of {', '.join(BRIDGES)}, not '{kind}'")
        self.kind, self.hidden_size, self.layers, self.lstm = kind, hidden_size, layers, lstm
        if kind != "zero":
            self.h_proj = Linear(encoder_dim, hidden_size)
            if lstm:
                self.c_proj = Linear(encoder_dim, hidden_size)

    def _layers(self, x: torch.Tensor) -> torch.Tensor:
        return x if x.size(0) == self.layers else x[-1:].expand(self.layers, -1, -1)

    def forward(self, enc: EncoderOut):
        batch = enc.states.size(0)
        zeros = enc.states.new_zeros(self.layers, batch, self.hidden_size)
        if self.kind == "zero":
            return (zeros, zeros) if self.lstm else zeros
        if self.kind == "mean":
            real = (~enc.padding_mask).unsqueeze(-1).to(enc.states.dtype)
            mean = ((enc.states * real).sum(dim=1) / real.sum(dim=1)).unsqueeze(0).expand(self.layers, -1, -1)
            h, c = torch.tanh(self.h_proj(mean)), (torch.tanh(self.c_proj(mean)) if self.lstm else None)
            return (h, c) if self.lstm else h
        if enc.final is None:
            raise ValueError("model.decoder.bridge=learned needs an encoder that returns final states (an RNN "
                             "encoder); use bridge=mean or bridge=zero with this encoder")
        final_h, final_c = enc.final if isinstance(enc.final, tuple) else (enc.final, None)
        h = torch.tanh(self.h_proj(self._layers(final_h)))
        if not self.lstm:
            return h
        c = torch.tanh(self.c_proj(self._layers(final_c))) if final_c is not None else zeros
        return h, c
