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
gradient) where nothing is copied. The training loss walks over chunks of rows, computes
each chunk's gradients by hand (see _FusedCopyLoss) and never holds more than one chunk of
[tokens x vocabulary].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seq2seq.models.kernels.gemm import mm_nn, mm_nt, mm_tn
from seq2seq.models.model import AttentionChoice, DecoderOut
from seq2seq.models.output import OutputLayer, log_normaliser, smoothed_nll


def _safe_log(p: torch.Tensor) -> torch.Tensor:
    """log p, -inf where p == 0, and a finite gradient everywhere."""
    return torch.where(p > 0, p.clamp_min(1e-30).log(), torch.full_like(p, float("-inf")))


def first_occurrences(src: torch.Tensor) -> torch.Tensor:
    """[N, S] bool: position j of row i holds a piece that does not occur earlier in the row."""
    ordered, order = src.sort(dim=1, stable=True)
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    return torch.zeros_like(first).scatter_(1, order, first)


class _FusedCopyLoss(torch.autograd.Function):
    """The pointer-generator's label-smoothed loss and its gradients, one chunk of rows at a time.

    Per row, with g = p_gen, q = softmax(h W^T), c the copy distribution and P = g q + (1 - g) c:
        loss = -(1 - eps) log P(t) - eps / V * sum_w log P(w).
    Only the pieces of the row's source can have c(w) > 0, so for every other piece
    log P(w) = log g + log q(w) exactly; the source pieces (counted once each) are corrected in
    log space. With alpha(w) = g q(w) / P(w) and beta(w) = 1 - alpha(w) (the copied share of P(w)),
    and coef(w) = (1 - eps) [w = t] + eps / V, the gradients are
        d loss / d logits(j) = q(j) ((1 - eps) alpha(t) + eps / V sum_w alpha(w)) - coef(j) alpha(j)
        d loss / d z         = sum_w coef(w) beta(w) - (1 - g)        (z: the gate's logit)
        d loss / d a_i       = -coef(src_i) (1 - g) / P(src_i)         (a: the copy attention)
    all bounded except the last, which is the true gradient of log P for a poorly attended piece.
    So one chunk holds two [chunk x vocabulary] buffers: q (then the logits' gradient) and the
    logits (then the dense copy distribution). The matmuls run in the autocast dtype, everything else in fp32.
    """

    @staticmethod
    def forward(ctx, features, weight, z, attention, src, target, smoothing: float, chunk: int):
        # long: one chunked pass computes the loss and every gradient in two [chunk, V] buffers
        n, vocab = features.size(0), weight.size(0)
        device_type = features.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else features.dtype
        w = weight.to(dtype)
        acc = torch.promote_types(features.dtype, torch.float32)  # fp32, or fp64 for gradient checks
        grad_features = torch.empty_like(features)
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        grad_z = torch.empty(n, dtype=acc, device=z.device)
        grad_attention = torch.empty(attention.shape, dtype=acc, device=attention.device)
        loss = features.new_zeros((), dtype=acc)
        nll = features.new_zeros((), dtype=acc)
        eps = smoothing
        with torch.autocast(device_type, enabled=False):
            for start in range(0, n, chunk):
                rows = slice(start, start + chunk)
                h, t, s = features[rows].to(dtype), target[rows, None], src[rows]
                zc, a = z[rows].to(acc), attention[rows].to(acc)
                log_g, log_not_g = F.logsigmoid(zc)[:, None], F.logsigmoid(-zc)[:, None]
                logits = mm_nt(h, w).to(acc)  # the three products on the host's kernel (seq2seq.models.kernels.gemm)
                logits_sum = logits.sum(1)
                picked = {"t": logits.gather(1, t), "s": logits.gather(1, s)}
                q = torch.softmax(logits, dim=1)  # one pass (torch's exp alone is slower than its softmax)
                lse = log_normaliser(q, logits, t, picked["t"], select_rows=device_type == "cpu")
                copy = logits.zero_().scatter_add_(1, s, a)  # the logits' buffer holds the copy distribution

                def log_p(ids, logit):  # log P at the given pieces, the copied share beta, log g q
                    log_gen = log_g + logit - lse
                    log_copy = log_not_g + _safe_log(copy.gather(1, ids))
                    both = torch.logaddexp(log_gen, log_copy)
                    return both, (log_copy - both).exp(), log_gen

                log_pt, beta_t, _ = log_p(t, picked["t"])
                log_ps, beta_s, log_gen_s = log_p(s, picked["s"])
                once = first_occurrences(s)
                beta_once = beta_s * once
                chunk_nll = -log_pt.sum()
                # sum_w log P(w) = V log g + sum_w log q(w) + the corrections of the source pieces
                sum_log_p = (vocab * log_g[:, 0] + logits_sum - vocab * lse[:, 0]
                             + ((log_ps - log_gen_s) * once).sum(1))
                nll += chunk_nll
                loss += (1.0 - eps) * chunk_nll - eps / vocab * sum_log_p.sum()

                alpha_t = 1.0 - beta_t
                k = (1.0 - eps) * alpha_t + eps / vocab * (vocab - beta_once.sum(1, keepdim=True))
                grad = q.mul_(k)
                grad.sub_(eps / vocab)
                grad.scatter_add_(1, s, eps / vocab * beta_once)
                grad.scatter_add_(1, t, -(1.0 - eps) * alpha_t)
                grad_z[rows] = (1.0 - eps) * beta_t[:, 0] + eps / vocab * beta_once.sum(1) - log_not_g[:, 0].exp()
                # (1 - g) / P(w), only where something is copied (elsewhere a_i = 0 and its softmax
                # passes no gradient), capped at 1e30 like the log of the copy distribution in _log_probs
                not_g_over_p = torch.where(copy.gather(1, s) > 0, (log_not_g - log_ps).clamp(max=69.0).exp(), 0.0)
                coef = eps / vocab + (1.0 - eps) * (s == t).to(acc)
                grad_attention[rows] = -coef * not_g_over_p
                grad = grad.to(dtype)
                grad_features[rows] = mm_nn(grad, w).to(features.dtype)
                grad_weight.add_(mm_tn(grad.to(acc), h.to(acc)))
        ctx.save_for_backward(grad_features, grad_weight.to(weight.dtype), grad_z.to(z.dtype),
                              grad_attention.to(attention.dtype))
        return loss, nll

    @staticmethod
    def backward(ctx, grad_loss, grad_nll):
        grad_features, grad_weight, grad_z, grad_attention = ctx.saved_tensors
        return (grad_features * grad_loss, grad_weight * grad_loss, grad_z * grad_loss, grad_attention * grad_loss,
                None, None, None, None)


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
        z = self.gate(torch.cat([rows.features, rows.context, rows.embedded], dim=-1)).squeeze(-1)
        return _FusedCopyLoss.apply(rows.features, self.vocab.weight, z, rows.attention, src_rows, target,
                                    smoothing, self.chunk)

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
