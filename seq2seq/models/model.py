"""The encoder-decoder and the one seam that keeps model families interchangeable.

An encoder maps (src [B,S], padding_mask [B,S]) to an EncoderOut. A decoder offers
  forward(prev_tokens, enc, need_attention) -> (features [B,T,D], attention [B,T,S] | None)
  init_state(enc, need_attention)           -> state
  step(prev_token [B], state)               -> (features [B,D], state, attention [B,S] | None)
and its state offers reorder(indices) so that a search can select, repeat and drop hypotheses.
The search, the trainer and the loss only ever talk to EncoderDecoder.
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, replace

import torch
from torch import nn

from seq2seq.data.tokenizer import PAD


@dataclass
class EncoderOut:
    states: torch.Tensor        # [B, S, D]
    padding_mask: torch.Tensor  # [B, S], True at padding
    src_tokens: torch.Tensor    # [B, S] (a copy layer points into these)
    final: object = None        # family-specific summary (an RNN's last hidden state) for the decoder's start

    def index_select(self, indices: torch.Tensor) -> "EncoderOut":
        final = self.final
        if isinstance(final, torch.Tensor):
            final = final.index_select(-2 if final.dim() == 3 else 0, indices)
        elif isinstance(final, tuple):
            final = tuple(f.index_select(-2 if f.dim() == 3 else 0, indices) for f in final)
        return replace(self, states=self.states.index_select(0, indices),
                       padding_mask=self.padding_mask.index_select(0, indices),
                       src_tokens=self.src_tokens.index_select(0, indices), final=final)


class EncoderDecoder(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module, output_layer: nn.Module, max_positions: int):
        super().__init__()
        self.encoder, self.decoder, self.output_layer = encoder, decoder, output_layer
        self.max_positions = max_positions

    def encode(self, src: torch.Tensor) -> EncoderOut:
        return self.encoder(src, src.eq(PAD))

    def forward(self, src: torch.Tensor, prev_tokens: torch.Tensor, target: torch.Tensor | None = None,
                label_smoothing: float = 0.0):
        """Teacher forcing. Without target: output scores [B, T, V] (log_softmax of them is the
        model's distribution). With target [B, T]: (label-smoothed loss, NLL) summed over its
        non-pad tokens, computed by the output layer without materializing all the scores.
        """
        enc = self.encode(src)
        features, _ = self.decoder(prev_tokens, enc)
        if target is None:
            return self.output_layer(features)
        select = target.ne(PAD)
        return self.output_layer.loss(features[select], target[select], label_smoothing)

    def init_state(self, enc: EncoderOut, need_attention: bool = False):
        return self.decoder.init_state(enc, need_attention)

    def step(self, prev_token: torch.Tensor, state):
        """Log-probabilities [B, V] of the next token of each hypothesis, the new state and the attention."""
        features, state, attn = self.decoder.step(prev_token, state)
        return torch.log_softmax(self.output_layer(features).float(), dim=-1), state, attn


def _import(target: str):
    module, _, name = target.rpartition(".")
    return getattr(importlib.import_module(module), name)


def construct(group: str, node: dict, **given):
    """Build the class named by node['_target_'] from the node's keys plus given arguments.

    'name' is a label for run names and not passed on; any other key the class does not
    take is an error that names the key, so no config value is ever silently ignored.
    """
    options = {k: v for k, v in node.items() if k not in ("_target_", "name")}
    cls = _import(node["_target_"])
    try:
        return cls(**given, **options)
    except TypeError as err:
        if "unexpected keyword argument" in str(err) or "missing" in str(err):
            raise ValueError(f"{group}: {err} (check the keys under {group})") from None
        raise


def check_pairing(decoder: dict, attention: dict) -> None:
    """Refuse an attention the decoder cannot use before any of their keys is looked at.

    A decoder class may declare accepted_attention (a class); a recipe's leftover keys for
    another attention would otherwise fail first with a less helpful "unexpected keyword".
    """
    accepted = getattr(_import(decoder["_target_"]), "accepted_attention", None)
    if accepted is not None and not issubclass(_import(attention["_target_"]), accepted):
        raise ValueError(
            f"model/decoder={decoder.get('name', decoder['_target_'])} cannot use "
            f"model/attention={attention.get('name', attention['_target_'])}: it needs {accepted.__name__} "
            f"(model/attention=multihead); RNN decoders (model/decoder=rnn) take every attention type"
        )


def build_model(cfg: dict, src_vocab_size: int, tgt_vocab_size: int) -> EncoderDecoder:
    """Embeddings, encoder, decoder with its attention, and output layer, from the resolved model config."""
    from seq2seq.models.embeddings import TokenEmbedding
    from seq2seq.models.output import OutputLayer

    dim = cfg["embed_dim"]
    share = cfg["share_embeddings"]
    if share and src_vocab_size != tgt_vocab_size:
        raise ValueError("model.share_embeddings=true needs a joint vocabulary (tokenizer.joint=true)")
    src_embed = TokenEmbedding(src_vocab_size, dim)
    tgt_embed = src_embed if share else TokenEmbedding(tgt_vocab_size, dim)
    common = {"embed_dim": dim, "max_positions": cfg["max_positions"]}
    check_pairing(cfg["decoder"], cfg["attention"])
    encoder = construct("model.encoder", cfg["encoder"], embed=src_embed, **common)
    attention = functools.partial(construct, "model.attention", cfg["attention"])
    decoder = construct("model.decoder", cfg["decoder"], embed=tgt_embed, attention=attention,
                        encoder_dim=encoder.output_dim, **common)
    if cfg["tie_output"] and decoder.output_dim != dim:
        raise ValueError(f"model.tie_output=true needs decoder features of size embed_dim={dim}")
    output = OutputLayer(decoder.output_dim, tgt_vocab_size, tgt_embed.weight if cfg["tie_output"] else None)
    return EncoderDecoder(encoder, decoder, output, cfg["max_positions"])
