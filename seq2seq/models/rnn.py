"""Recurrent encoder and attentional decoder (LSTM or GRU): Bahdanau, Luong and friends.

The encoder never lets padding reach its states and hands its final states to the decoder
through a bridge. On a CPU it runs each direction of each layer as a few calls of the fused
(oneDNN) kernel, one per distinct source length in the batch (run_by_length): several times
faster than packed sequences there, which step through time one small product at a time;
on a GPU it runs over packed sequences (cuDNN). The decoder takes any attention that
follows the contract in seq2seq.models.rnn_attention (the Transformer's MultiHeadAttention
is wrapped to follow it). In training it runs one step at a time where a step's RNN input
depends on the previous step's attention (input feeding, "previous"-timing attention);
otherwise the RNN runs over the whole target in one call, and so does the attention unless
its score reads the coverage vector (then only the attention steps through the positions).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq.models.gemm import Linear
from seq2seq.models.attention import MultiHeadAttention
from seq2seq.models.dropout import Dropout
from seq2seq.models.model import AttentionChoice, DecoderOut, EncoderOut, hypotheses_per_sentence, regroup
from seq2seq.models.rnn_attention import MultiHeadAdapter

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


def _select(x, indices: torch.Tensor):
    """index_select along the batch (first) dimension of a tensor or of every tensor in nested tuples."""
    if isinstance(x, tuple):
        return tuple(_select(item, indices) for item in x)
    return x.index_select(0, indices)


@dataclass
class RNNState:
    """What the decoder carries between steps; every tensor is batch-first.

    The attention's memory is kept once per source sentence: `group` maps each hypothesis row to
    its memory row, so reordering hypotheses (beam search, every step) copies only the per-row
    states, and the memory only when sentences leave the batch. An attention that offers
    grouped_queries reads k hypotheses of a sentence against one memory row (beam layout)."""

    hidden: tuple                  # per layer: h [B,H], or (h, c) for an LSTM
    feed: torch.Tensor | None      # previous attentional state h~_{t-1} [B,H] (Luong input feeding)
    memory: tuple                  # the attention's precomputed source memory, one row per sentence
    position: int
    attention: AttentionChoice | None  # report the attention (head choice for multihead), None for none
    coverage: torch.Tensor | None = None  # [B,S] attention summed over earlier steps (coverage attention only)
    group: torch.Tensor | None = None     # [B] memory row of each hypothesis; None = one row each

    def reorder(self, indices: torch.Tensor) -> "RNNState":
        feed = None if self.feed is None else self.feed.index_select(0, indices)
        coverage = None if self.coverage is None else self.coverage.index_select(0, indices)
        used, group = regroup(self.group, indices)
        memory = self.memory if used.numel() == self.memory[0].size(0) else _select(self.memory, used)
        return RNNState(_select(self.hidden, indices), feed, memory, self.position, self.attention, coverage, group)

    def memory_for_rows(self, grouped: bool) -> tuple[tuple, int]:
        """(memory, k): one memory row per k hypothesis rows when the layout and the attention allow,
        else the memory gathered per row (k = 1)."""
        k = hypotheses_per_sentence(self.group, self.memory[0].size(0))
        if k == 1 and self.group is None:
            return self.memory, 1
        if grouped and k:
            return self.memory, k
        return _select(self.memory, self.group), 1


class RNNDecoder(nn.Module):
    """An LSTM/GRU decoder with one attention over the encoder states.

    With a "previous"-timing attention (Bahdanau) step t attends from s_{t-1}, feeds
    [E y_{t-1}; c_t] to the RNN and outputs tanh(W_o [s_t; c_t; E y_{t-1}]) (the deep output
    of Nematus). With a "current"-timing one (Luong, local, multihead) it runs the RNN on
    [E y_{t-1}; h~_{t-1}] (input feeding) or E y_{t-1}, attends from h_t and outputs
    h~_t = tanh(W_c [c_t; h_t]). Either output is projected to embed_dim, so the output
    layer can share the target embedding. Like the encoder, it has no length limit of its
    own and takes max_positions only for the common constructor signature.
    """

    def __init__(self, embed: nn.Module, embed_dim: int, max_positions: int, encoder_dim: int, attention,
                 cell: str = "lstm", layers: int = 1, hidden_size: int = 512, dropout: float = 0.3,
                 input_feeding: bool = True, bridge: str = "learned"):
        super().__init__()
        attn = attention(query_dim=hidden_size, key_dim=encoder_dim)
        self.attention = MultiHeadAdapter(attn) if isinstance(attn, MultiHeadAttention) else attn
        self.previous = self.attention.query_timing == "previous"
        if self.previous and input_feeding:
            raise ValueError(
                f"{type(attn).__name__} already feeds its context into the RNN input; input feeding is for "
                f"Luong-style attention: set model.decoder.input_feeding=false"
            )
        self.embed, self.dropout = embed, Dropout(dropout)
        self.input_feeding, self.hidden_size = input_feeding, hidden_size
        context = self.attention.context_dim
        extra = context if self.previous else (hidden_size if input_feeding else 0)
        if cell not in CELLS:
            raise ValueError(f"model.decoder.cell must be lstm or gru, not '{cell}'")
        # Cells, not nn.LSTM: a step is one call per layer, and a cell call costs half of nn.LSTM's on a CPU.
        make = nn.LSTMCell if cell == "lstm" else nn.GRUCell
        self.cells = nn.ModuleList(make(embed_dim + extra if i == 0 else hidden_size, hidden_size)
                                   for i in range(layers))
        self.lstm = cell == "lstm"
        self.bridge = Bridge(bridge, encoder_dim, hidden_size, layers, cell == "lstm")
        combine_in = hidden_size + context + (embed_dim if self.previous else 0)
        self.combine = Linear(combine_in, hidden_size, bias=False)  # W_c (Luong) or W_o (Bahdanau)
        self.out_proj = Linear(hidden_size, embed_dim, bias=False) if hidden_size != embed_dim else nn.Identity()
        self.output_dim, self.context_dim = embed_dim, context
        self.coverage = getattr(self.attention, "coverage", False)  # the attention reads c^t: track it in the state
        self.grouped_queries = getattr(self.attention, "grouped_queries", False)

    def check_attention(self, choice: AttentionChoice) -> None:
        """There is one attention (layer -1 or 0); a head only for multihead attention."""
        if choice.layer not in (-1, 0):
            raise ValueError(f"an RNN decoder has one attention: attention layer must be -1 or 0, not {choice.layer}")
        if isinstance(self.attention, MultiHeadAdapter):
            heads = self.attention.attention.heads
            if not -1 <= choice.head < heads:
                raise ValueError(f"attention head {choice.head} but the attention has {heads} heads "
                                 f"(0..{heads - 1}, or -1 = mean)")
        elif choice.head != -1:
            raise ValueError(f"attention head {choice.head} needs multi-head attention; "
                             f"{type(self.attention).__name__} has one head (use -1)")

    def init_state(self, enc: EncoderOut, attention: AttentionChoice | None = None) -> RNNState:
        feed = enc.states.new_zeros(enc.states.size(0), self.hidden_size) if self.input_feeding else None
        memory = self.attention.precompute(enc.states, enc.padding_mask)
        start = self.bridge(enc)
        hidden = tuple(zip(start[0].unbind(0), start[1].unbind(0))) if self.lstm else tuple(start.unbind(0))
        coverage = enc.states.new_zeros(enc.padding_mask.shape) if self.coverage else None
        return RNNState(hidden, feed, memory, 0, attention, coverage)

    def _top(self, hidden: tuple) -> torch.Tensor:
        return hidden[-1][0] if self.lstm else hidden[-1]

    def _run_cells(self, x: torch.Tensor, hidden: tuple):
        """One step through the layers (dropout between them): (top output [B,H], new hidden)."""
        new = []
        for i, cell in enumerate(self.cells):
            state = cell(x, hidden[i])
            new.append(state)
            x = state[0] if self.lstm else state
            if i < len(self.cells) - 1:
                x = self.dropout(x)
        return x, tuple(new)

    def _attend(self, query: torch.Tensor, state: RNNState):
        """(context [B,C], weights [B,S] or per head [B,H,S], or None when nobody needs them)."""
        need = state.attention is not None or state.coverage is not None
        memory, group = state.memory_for_rows(self.grouped_queries)
        options = {"group": group} if group > 1 else {}
        if state.coverage is not None:
            options["coverage"] = state.coverage
        return self.attention(query, memory, state.position, need, **options)

    def _step(self, emb: torch.Tensor, state: RNNState):
        """emb [B,E] (dropout applied) -> (attentional state [B,H], context [B,C], new state, reported weights [B,S] or None)."""
        if self.previous:
            context, weights = self._attend(self._top(state.hidden), state)
            h, hidden = self._run_cells(torch.cat([emb, context], dim=-1), state.hidden)
            attentional = torch.tanh(self.combine(torch.cat([h, context, emb], dim=-1)))
            feed = None
        else:
            x = torch.cat([emb, state.feed], dim=-1) if self.input_feeding else emb
            h, hidden = self._run_cells(x, state.hidden)
            context, weights = self._attend(h, state)
            attentional = torch.tanh(self.combine(torch.cat([context, h], dim=-1)))
            feed = attentional if self.input_feeding else None
        weights = self._report(weights, state.attention, 2)
        coverage = None if state.coverage is None else state.coverage + weights
        new = RNNState(hidden, feed, state.memory, state.position + 1, state.attention, coverage, state.group)
        return attentional, context, new, (weights if state.attention is not None else None)

    @staticmethod
    def _report(weights: torch.Tensor | None, choice: AttentionChoice | None, plain_dims: int):
        """Multi-head weights ([B,H,...], one dimension more than plain_dims) -> the chosen head or
        their mean; single-head weights unchanged."""
        if weights is None or weights.dim() == plain_dims:
            return weights
        head = choice.head if choice is not None else -1
        return weights.mean(dim=1) if head < 0 else weights[:, head]

    def _run_all(self, x: torch.Tensor, hidden: tuple) -> torch.Tensor:
        """The RNN over every position of x [B,T,E] from hidden (dropout between layers, as in
        _run_cells, whose cells' weights it uses): the top layer's outputs [B,T,H]."""
        for i, cell in enumerate(self.cells):
            weights = [cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh]
            if self.lstm:
                h0, c0 = hidden[i]
                x = torch.lstm(x, (h0[None], c0[None]), weights, True, 1, 0.0, self.training, False, True)[0]
            else:
                x = torch.gru(x, hidden[i][None], weights, True, 1, 0.0, self.training, False, True)[0]
            if i < len(self.cells) - 1:
                x = self.dropout(x)
        return x

    def forward(self, prev_tokens: torch.Tensor, enc: EncoderOut, attention: AttentionChoice | None = None,
                coverage: bool = True) -> DecoderOut:
        """Teacher-forced DecoderOut [B,T,...]: features, and the attention, context and embeddings when asked.

        coverage=False: a coverage attention's score does not read the coverage vector (training
        before the coverage phase, when the coverage weight w_c is still at its initial 0)."""
        state = self.init_state(enc, attention)
        embs = self.dropout(self.embed(prev_tokens))
        if not self.previous and not self.input_feeding:  # the RNN input never reads the attention
            return self._forward_all(embs, state, coverage)
        outputs, contexts, weights = [], [], []
        for t in range(prev_tokens.size(1)):
            attentional, context, state, w = self._step(embs[:, t], state)
            outputs.append(attentional)
            contexts.append(context)
            weights.append(w)
        features = self.out_proj(self.dropout(torch.stack(outputs, dim=1)))
        if attention is None:
            return DecoderOut(features)
        return DecoderOut(features, torch.stack(weights, dim=1), torch.stack(contexts, dim=1), embs)

    def _forward_all(self, embs: torch.Tensor, state: RNNState, coverage: bool) -> DecoderOut:
        """forward without a step loop over the RNN, nor over the attention unless it reads the coverage."""
        h = self._run_all(embs, state.hidden)
        if hasattr(self.attention, "attend_all") and not (self.coverage and coverage):
            contexts, weights = self.attention.attend_all(h, state.memory, state.attention is not None)
            weights = self._report(weights, state.attention, 3)
        else:
            contexts, weights = [], []
            for t in range(h.size(1)):
                context, w = self._attend(h[:, t], state)
                w = self._report(w, state.attention, 2)
                coverage_next = None if state.coverage is None else state.coverage + w
                state = RNNState(state.hidden, None, state.memory, state.position + 1, state.attention, coverage_next,
                                 state.group)
                contexts.append(context)
                weights.append(w)
            contexts = torch.stack(contexts, dim=1)
            weights = None if weights[0] is None else torch.stack(weights, dim=1)
        attentional = torch.tanh(self.combine(torch.cat([contexts, h], dim=-1)))
        features = self.out_proj(self.dropout(attentional))
        if state.attention is None:
            return DecoderOut(features)
        return DecoderOut(features, weights, contexts, embs)

    def step(self, prev_token: torch.Tensor, state: RNNState):
        """One position for every hypothesis: prev_token [B] -> (DecoderOut [B,...], new state)."""
        emb = self.embed(prev_token)
        attentional, context, state, weights = self._step(emb, state)
        features = self.out_proj(attentional)
        if state.attention is None:
            return DecoderOut(features), state
        return DecoderOut(features, weights, context, emb), state
