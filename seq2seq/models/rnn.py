"""Attentional recurrent decoder (LSTM or GRU): Bahdanau, Luong and friends. The encoder and the bridge from
its final states are in seq2seq.models.rnn_encoder. The decoder takes any attention that
follows the contract in seq2seq.models.rnn_attention (the Transformer's MultiHeadAttention
is wrapped to follow it). In training it runs one step at a time where a step's RNN input
depends on the previous step's attention (input feeding, "previous"-timing attention);
otherwise the RNN runs over the whole target in one call, and so does the attention unless
its score reads the coverage vector (then only the attention steps through the positions).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seq2seq.models.kernels.gemm import Linear
from seq2seq.models.attention import MultiHeadAttention
from seq2seq.models.kernels.dropout import Dropout
from seq2seq.models.model import AttentionChoice, DecoderOut, EncoderOut, hypotheses_per_sentence, regroup
from seq2seq.models.rnn_attention import MultiHeadAdapter, RNNAttention
from seq2seq.models.rnn_encoder import CELLS, Bridge

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
        if not isinstance(self.attention, RNNAttention) or self.attention.query_timing not in ("previous", "current"):
            raise ValueError(f"{type(attn).__name__} is not an RNN attention (seq2seq.models.rnn_attention.RNNAttention: "
                             f"query_timing previous|current, context_dim, precompute, forward)")
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
                coverage_vector: bool = True) -> DecoderOut:
        """Teacher-forced DecoderOut [B,T,...]: features, and the attention, context and embeddings when asked.

        coverage_vector=False: a coverage attention's score does not read the coverage vector (training
        before the coverage phase, when the coverage weight w_c is still at its initial 0)."""
        state = self.init_state(enc, attention)
        embs = self.dropout(self.embed(prev_tokens))
        if not self.previous and not self.input_feeding:  # the RNN input never reads the attention
            return self._forward_all(embs, state, coverage_vector)
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

    def _forward_all(self, embs: torch.Tensor, state: RNNState, coverage_vector: bool) -> DecoderOut:
        """forward without a step loop over the RNN, nor over the attention unless it reads the coverage."""
        h = self._run_all(embs, state.hidden)
        if hasattr(self.attention, "attend_all") and not (self.coverage and coverage_vector):
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
