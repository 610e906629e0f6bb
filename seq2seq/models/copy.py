"""The pointer-generator output layer (See, Liu and Manning, 2017): generate from the vocabulary or copy a source piece.

  p_gen = sigmoid(w_c . c_t + w_s . s_t + w_x . x_t + b)
  P(w)  = p_gen P_vocab(w) + (1 - p_gen) * sum of a_i^t over source positions i holding w

with c_t the context vector of the copy attention a^t, s_t the decoder features and x_t the
decoder input embedding. The copy attention is the decoder's reported attention: the one
attention of an RNN decoder, or one chosen cross-attention layer (and head, or the mean of
the heads) of a Transformer decoder. Copy works over the joint subword vocabulary, so a
source piece is a target id; together with SentencePiece's byte fallback every source
string can be copied exactly.

Everything is computed in log space: log P(w) = logaddexp(log p_gen + log P_vocab(w),
log(1 - p_gen) + log copy(w)), with log p_gen = logsigmoid(z) and log(1 - p_gen) =
logsigmoid(-z), so a saturated p_gen gives no NaN, and log copy(w) is -inf (with a zero
gradient) where nothing is copied. The training loss walks over chunks of rows and never
holds more than one chunk of [tokens x vocabulary] (see _ChunkedRowLoss).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seq2seq.models.model import AttentionChoice, DecoderOut
from seq2seq.models.output import OutputLayer, smoothed_nll


def _safe_log(p: torch.Tensor) -> torch.Tensor:
    """log p, -inf where p == 0, and a finite gradient everywhere."""
    return torch.where(p > 0, p.clamp_min(1e-30).log(), torch.full_like(p, float("-inf")))


class _ChunkedRowLoss(torch.autograd.Function):
    """(loss, nll) = sum over chunks of fn(rows of the chunk, *shared), computing each chunk's
    gradients right away so that only one chunk's intermediate tensors ([chunk x vocabulary])
    ever exist. rows: tensors whose first dimension is the row; shared: parameters used by
    every chunk. fn returns (loss, nll) of its chunk."""

    @staticmethod
    def forward(ctx, fn, chunk: int, n_rows: int, *tensors):
        rows, shared = tensors[:n_rows], tensors[n_rows:]
        wants = [t.requires_grad for t in tensors]
        grads = [torch.zeros_like(t) if w else None for t, w in zip(tensors, wants)]
        loss = rows[0].new_zeros((), dtype=torch.float32)
        nll = rows[0].new_zeros((), dtype=torch.float32)
        n = rows[0].size(0)
        for start in range(0, n, chunk):
            inputs = [t[start : start + chunk].detach().requires_grad_(w) for t, w in zip(rows, wants)]
            inputs += [t.detach().requires_grad_(w) for t, w in zip(shared, wants[n_rows:])]
            with torch.enable_grad():
                chunk_loss, chunk_nll = fn(*inputs)
                needed = [x for x, w in zip(inputs, wants) if w]
                got = iter(torch.autograd.grad(chunk_loss, needed, allow_unused=True)) if needed else iter(())
            for i, w in enumerate(wants):
                if not w:
                    continue
                g = next(got)
                if g is None:
                    continue
                if i < n_rows:
                    grads[i][start : start + chunk] = g
                else:
                    grads[i] += g
            loss += chunk_loss.detach().float()
            nll += chunk_nll.detach().float()
        ctx.save_for_backward(*[g if g is not None else torch.empty(0) for g in grads])
        ctx.wants = wants
        return loss, nll

    @staticmethod
    def backward(ctx, grad_loss, grad_nll):
        grads = [g * grad_loss if w else None for g, w in zip(ctx.saved_tensors, ctx.wants)]
        return (None, None, None, *grads)


def _parts(features, context, embedded, attention, src_tokens, gate_weight, gate_bias, vocab_weight):
    """(log p_gen [...], log(1 - p_gen) [...], log P_vocab [..., V], copy distribution [..., V]), all fp32.
    src_tokens has the shape of attention ([..., S]) or is [B, S] for [B, T, S] attention."""
    z = F.linear(torch.cat([features, context, embedded], dim=-1), gate_weight, gate_bias).squeeze(-1).float()
    log_vocab = torch.log_softmax((features @ vocab_weight.t()).float(), dim=-1)
    attention = attention.float()
    if src_tokens.dim() < attention.dim():
        src_tokens = src_tokens[:, None, :].expand_as(attention)
    copy = torch.zeros_like(log_vocab).scatter_add_(-1, src_tokens, attention)
    return F.logsigmoid(z), F.logsigmoid(-z), log_vocab, copy


def _log_probs(*args) -> torch.Tensor:
    """log P(w) [..., V]; the arguments of _parts."""
    log_gen, log_copy_gate, log_vocab, copy = _parts(*args)
    return torch.logaddexp(log_gen[..., None] + log_vocab, log_copy_gate[..., None] + _safe_log(copy))


class PointerGenerator(nn.Module):
    """A softmax over the vocabulary mixed with a copy distribution over the source pieces."""

    def __init__(self, sizes, tied_weight: nn.Parameter | None = None, attention_layer: int = -1,
                 attention_head: int = -1, chunk: int = 256):
        """sizes: seq2seq.models.model.OutputSizes; attention_layer/attention_head: which cross-attention
        copies (a Transformer decoder: -1 = the last layer; head -1 = the mean over heads)."""
        super().__init__()
        if not sizes.joint_vocabulary:
            raise ValueError("model/output=pointer_generator copies source pieces into the output, so source and "
                             "target need one vocabulary: set tokenizer.joint=true (a joint SentencePiece model)")
        self.vocab = OutputLayer(sizes, tied_weight)
        self.gate = nn.Linear(sizes.features + sizes.context + sizes.embedded, 1)  # w_s, w_c, w_x and b
        self.attention_choice = AttentionChoice(attention_layer, attention_head)
        self.chunk = chunk

    def _args(self, out: DecoderOut, src_tokens: torch.Tensor) -> tuple:
        return (out.features, out.context, out.embedded, out.attention, src_tokens, self.gate.weight,
                self.gate.bias, self.vocab.weight)

    def parts(self, out: DecoderOut, src_tokens: torch.Tensor):
        """(log p_gen, log(1 - p_gen), log P_vocab, copy distribution) of a DecoderOut."""
        return _parts(*self._args(out, src_tokens))

    def log_probs(self, out: DecoderOut, src_tokens: torch.Tensor) -> torch.Tensor:
        """log P(w) [..., V]."""
        return _log_probs(*self._args(out, src_tokens))

    def loss(self, rows: DecoderOut, src_rows: torch.Tensor, target: torch.Tensor, smoothing: float):
        """(label-smoothed loss, NLL) summed over rows [N, ...] with source ids src_rows [N, S] and targets [N]."""
        args = self._args(rows, src_rows)
        if not torch.is_grad_enabled():
            return smoothed_nll(_log_probs(*args), target, smoothing)

        def chunk_loss(features, context, embedded, attention, src, tgt, *params):
            return smoothed_nll(_log_probs(features, context, embedded, attention, src, *params), tgt, smoothing)

        return _ChunkedRowLoss.apply(chunk_loss, self.chunk, 6, *args[:5], target, *args[5:])

    @torch.no_grad()
    def copied(self, rows: DecoderOut, src_rows: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """[N] bool: the target token got more probability from copying than from generating."""
        flags = []
        for start in range(0, target.size(0), self.chunk):
            part = slice(start, start + self.chunk)
            chunk = DecoderOut(rows.features[part], rows.attention[part], rows.context[part], rows.embedded[part])
            log_gen, log_copy_gate, log_vocab, copy = self.parts(chunk, src_rows[part])
            t = target[part, None]
            flags.append(log_copy_gate + _safe_log(copy.gather(1, t))[:, 0] > log_gen + log_vocab.gather(1, t)[:, 0])
        return torch.cat(flags) if flags else target.new_zeros(0, dtype=torch.bool)
