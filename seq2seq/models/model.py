"""The encoder-decoder and the one seam that keeps model families interchangeable.

An encoder maps (src [B,S], padding_mask [B,S]) to an EncoderOut. A decoder offers
  forward(prev_tokens, enc, attention=None, coverage=True)
                                            -> DecoderOut over the whole target ([B,T,...]);
                                            coverage=False: an attention whose score reads the
                                            coverage vector leaves it out (training before the
                                            coverage phase: See et al. add coverage last)
  init_state(enc, attention=None)           -> state
  step(prev_token [B], state)               -> (DecoderOut of one position ([B,...]), state)
  check_attention(choice)                   refuses a layer/head it does not have
and its state offers reorder(indices) so that a search can select, repeat and drop hypotheses.
`attention` is an AttentionChoice (which cross-attention layer and head to report) or None
(report none): it travels in the call and the state, never as an attribute of the module.

An output layer (config group model/output) turns a DecoderOut into the next token's
distribution: OutputLayer (softmax over the vocabulary) or PointerGenerator
(seq2seq.models.copy: mixes in the reported attention scattered onto the source tokens).
It says which attention it reads (attention_choice, None for none) and offers
  log_probs(out, src_tokens) -> [..., V] log-probabilities
  loss(rows, target, smoothing) -> (label-smoothed loss, NLL) summed over rows, chunked
The search, the trainer and the loss only ever talk to EncoderDecoder.
"""
from __future__ import annotations

import functools
import importlib
import inspect
from dataclasses import dataclass

import torch
from torch import nn

from seq2seq.config import check_keys
from seq2seq.data.tokenizer import PAD
from seq2seq.models.embeddings import TokenEmbedding


@dataclass
class EncoderOut:
    states: torch.Tensor        # [B, S, D]
    padding_mask: torch.Tensor  # [B, S], True at padding
    src_tokens: torch.Tensor    # [B, S] (a copy layer points into these)
    final: object = None        # family-specific summary (an RNN's last hidden state) for the decoder's start


@dataclass(frozen=True)
class AttentionChoice:
    """Which cross-attention a decoder reports: layer (-1 = last) and head (-1 = mean over heads)."""

    layer: int = -1
    head: int = -1


@dataclass
class DecoderOut:
    """What a decoder hands the output layer, for a whole target ([B,T,...]) or one step ([B,...]).

    attention, context and embedded are filled when an AttentionChoice was given.
    """

    features: torch.Tensor                 # [.., D] the decoder's output features
    attention: torch.Tensor | None = None  # [.., S] the chosen attention over source positions (0 on padding)
    context: torch.Tensor | None = None    # [.., C] that attention's context vector
    embedded: torch.Tensor | None = None   # [.., E] the decoder's input embedding at each position

    def rows(self, select: torch.Tensor) -> "DecoderOut":
        """The positions where select [B,T] is True, as rows [N,...]."""
        pick = lambda x: None if x is None else x[select]  # noqa: E731
        return DecoderOut(self.features[select], pick(self.attention), pick(self.context), pick(self.embedded))


@dataclass
class LossOut:
    """Summed over the target's non-pad tokens."""

    loss: torch.Tensor           # what training minimises: label-smoothed NLL (+ coverage_loss_weight * coverage_loss)
    nll: torch.Tensor            # plain negative log-likelihood (detached)
    coverage_loss: torch.Tensor  # sum over steps t and source positions i of min(a_i^t, c_i^t) (detached; 0 without attention)


@dataclass
class ModelState:
    """A decoder state plus what the output layer needs per hypothesis row (the source ids it copies from)."""

    decoder: object
    src_tokens: torch.Tensor | None  # [rows, S] for a copy model, else None
    report: bool                     # the caller asked for the attention

    def reorder(self, indices: torch.Tensor) -> "ModelState":
        src = None if self.src_tokens is None else self.src_tokens.index_select(0, indices)
        return ModelState(self.decoder.reorder(indices), src, self.report)


def regroup(group: torch.Tensor | None, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A decoder state that keeps the encoder memory once per sentence, reordered by indices: (the
    memory rows still used, sorted; each new hypothesis row's position among them). group [rows] is
    the memory row of each hypothesis (None: one row each)."""
    group = indices if group is None else group.index_select(0, indices)
    return torch.unique(group, sorted=True, return_inverse=True)


def hypotheses_per_sentence(group: torch.Tensor | None, sentences: int) -> int:
    """k when hypothesis row r belongs to memory row r // k for every row (beam search's layout), else 0."""
    if group is None:
        return 1
    rows = group.numel()
    if rows % sentences:
        return 0
    k = rows // sentences
    expected = torch.arange(sentences, device=group.device).repeat_interleave(k)
    return k if torch.equal(group, expected) else 0


def coverage_loss(attention: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
    """sum over real target steps t and source positions i of min(a_i^t, c_i^t), where the
    coverage c^t = a^0 + ... + a^(t-1) counts earlier steps only (See et al., 2017, eq. 12-13).
    attention [B,T,S]; select [B,T] marks the real target steps."""
    coverage = attention.cumsum(dim=1) - attention
    return torch.minimum(attention, coverage)[select].sum()


@dataclass(frozen=True)
class OutputSizes:
    """What an output layer is built for."""

    features: int           # decoder output features
    context: int            # the reported attention's context vector
    embedded: int           # decoder input embedding
    vocab: int              # target vocabulary
    joint_vocabulary: bool  # source ids are target ids (one SentencePiece model)


def _source_rows(enc: EncoderOut, select: torch.Tensor) -> torch.Tensor:
    """The source ids [N, S] of each selected target position (select [B, T]), for a copy layer."""
    return enc.src_tokens[:, None, :].expand(-1, select.size(1), -1)[select]


class EncoderDecoder(nn.Module):
    def __init__(self, encoder: nn.Module, decoder: nn.Module, output_layer: nn.Module, max_positions: int):
        super().__init__()
        self.encoder, self.decoder, self.output_layer = encoder, decoder, output_layer
        self.max_positions = max_positions
        self.copy_choice = output_layer.attention_choice  # None unless the output layer reads attention
        # the attention's score reads the coverage vector: its coverage weight takes no part in
        # training before the coverage phase (forward's coverage=False), which DDP must know
        self.coverage_attention = bool(getattr(decoder, "coverage", False))
        if self.copy_choice is not None:
            decoder.check_attention(self.copy_choice)

    def encode(self, src: torch.Tensor) -> EncoderOut:
        return self.encoder(src, src.eq(PAD))

    def _training_choice(self, coverage_loss_weight: float) -> AttentionChoice | None:
        if self.copy_choice is not None:
            return self.copy_choice
        return AttentionChoice() if coverage_loss_weight else None

    def forward(self, src: torch.Tensor, prev_tokens: torch.Tensor, target: torch.Tensor, *,
                label_smoothing: float = 0.0, coverage_loss_weight: float = 0.0,
                coverage_vector: bool = True) -> LossOut:
        """Teacher forcing: the LossOut of target [B, T] summed over its non-pad tokens, computed by the
        output layer without materializing the scores of the whole batch (training calls this, through
        DDP where there are several processes). coverage_loss_weight adds that times the coverage loss of
        the reported attention (the copy attention for a copy model, else the last layer's mean over
        heads). coverage_vector=False: a coverage attention's score leaves the coverage vector out, as
        training does before its coverage phase (its weight w_c is then still at its initial 0, which
        changes nothing, and the decoder need not step through the positions)."""
        enc = self.encode(src)
        out = self.decoder(prev_tokens, enc, self._training_choice(coverage_loss_weight),
                           coverage_vector=coverage_vector)
        select = target.ne(PAD)
        rows = out.rows(select)
        src_rows = _source_rows(enc, select) if self.copy_choice is not None else None
        loss, nll = self.output_layer.loss(rows, src_rows, target[select], label_smoothing)
        covered = (coverage_loss(out.attention.float(), select) if out.attention is not None
                   else loss.new_zeros(()))
        if coverage_loss_weight:
            loss = loss + coverage_loss_weight * covered
        return LossOut(loss, nll, covered.detach())

    def scores(self, src: torch.Tensor, prev_tokens: torch.Tensor) -> torch.Tensor:
        """Teacher forcing without a target: scores [B, T, V] whose log_softmax is the model's distribution."""
        enc = self.encode(src)
        return self.output_layer.log_probs(self.decoder(prev_tokens, enc, self.copy_choice), enc.src_tokens)

    @torch.no_grad()
    def copy_share(self, src: torch.Tensor, prev_tokens: torch.Tensor, target: torch.Tensor) -> tuple[int, int]:
        """(target tokens that came mostly from copying, target tokens) under teacher forcing: a token
        counts as copied when (1 - p_gen) * copy(w) > p_gen * P_vocab(w). (0, n) for a model without copy."""
        select = target.ne(PAD)
        total = int(select.sum())
        if self.copy_choice is None:
            return 0, total
        enc = self.encode(src)
        out = self.decoder(prev_tokens, enc, self.copy_choice)
        copied = self.output_layer.copied(out.rows(select), _source_rows(enc, select), target[select])
        return int(copied.sum()), total

    def check_report(self, report: AttentionChoice) -> None:
        """Refuse an attention to report that the decoder does not have, or that a copy model does not use."""
        if self.copy_choice is not None and report not in (self.copy_choice, AttentionChoice()):
            raise ValueError(f"this model copies through the attention of layer {self.copy_choice.layer}, head "
                             f"{self.copy_choice.head} (model.output) and reports that one; leave "
                             f"generation.attention_layer/attention_head at -1 or set them to it")
        self.decoder.check_attention(report)

    def init_state(self, enc: EncoderOut, report: AttentionChoice | None = None) -> ModelState:
        """State for generation; report: the attention the caller wants back from step (None: none).
        A copy model always computes its copy attention and reports that one."""
        if report is not None:
            self.check_report(report)
        choice = self.copy_choice if self.copy_choice is not None else report
        src = enc.src_tokens if self.copy_choice is not None else None
        return ModelState(self.decoder.init_state(enc, choice), src, report is not None)

    def step(self, prev_token: torch.Tensor, state: ModelState):
        """Log-probabilities [B, V] of the next token of each hypothesis, the new state, and the
        reported attention [B, S] (None unless init_state was asked for it)."""
        out, decoder_state = self.decoder.step(prev_token, state.decoder)
        logp = self.output_layer.log_probs(out, state.src_tokens).float()
        return logp, ModelState(decoder_state, state.src_tokens, state.report), (out.attention if state.report else None)


# classes that moved: what checkpoints and run folders written before the move name them
MOVED = {"seq2seq.models.rnn.RNNEncoder": "seq2seq.models.rnn_encoder.RNNEncoder"}
# parameters that were renamed: (old, new) parts of their names in checkpoints written before
RENAMED_PARAMETERS = ((".ffn.0.", ".ffn.up."), (".ffn.3.", ".ffn.down."))


def renamed_parameters(state: dict) -> dict:
    """A checkpoint's weights under today's parameter names (RENAMED_PARAMETERS)."""
    out = {}
    for key, value in state.items():
        for old, new in RENAMED_PARAMETERS:
            key = key.replace(old, new)
        out[key] = value
    return out


def _import(target: str):
    module, _, name = MOVED.get(target, target).rpartition(".")
    return getattr(importlib.import_module(module), name)


def construct(group: str, node: dict, **given):
    """Build the class named by node['_target_'] from the node's keys plus given arguments.

    'name' is a label for run names and not passed on; any other key the class does not
    take is an error that names the key, so no config value is ever silently ignored.
    """
    options = {k: v for k, v in node.items() if k not in ("_target_", "name")}
    cls = _import(node["_target_"])
    try:
        inspect.signature(cls).bind(**given, **options)  # a key the class does not take, or one it lacks
    except TypeError as err:
        raise ValueError(f"{group}: {err} (check the keys under {group})") from None
    return cls(**given, **options)  # a TypeError from here on is a bug, with its traceback


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


SOFTMAX_OUTPUT = {"_target_": "seq2seq.models.output.OutputLayer", "name": "softmax"}  # = conf/model/output/softmax.yaml
MODEL_KEYS = ("embed_dim", "dropout", "max_positions", "share_embeddings", "tie_output",
              "encoder", "decoder", "attention", "output")  # dropout: read by the groups' ${model.dropout}


def build_model(cfg: dict, src_vocab_size: int, tgt_vocab_size: int, joint_vocabulary: bool = True) -> EncoderDecoder:
    """Embeddings, encoder, decoder with its attention, and output layer, from the resolved model config.

    joint_vocabulary: source and target ids mean the same pieces (one SentencePiece model), which
    copying from the source needs."""
    check_keys("model", cfg, MODEL_KEYS)
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
    sizes = OutputSizes(decoder.output_dim, decoder.context_dim, dim, tgt_vocab_size, joint_vocabulary)
    output_cfg = cfg.get("output") or SOFTMAX_OUTPUT  # model configs from before model/output existed
    output = construct("model.output", output_cfg, sizes=sizes,
                       tied_weight=tgt_embed.weight if cfg["tie_output"] else None)
    return EncoderDecoder(encoder, decoder, output, cfg["max_positions"])
