"""The softmax output layer: features -> vocabulary scores, and a fused, chunked training loss.

The training loss never materializes the [tokens, vocabulary] logits of the whole
batch: it walks over chunks of rows, computes each chunk's log-softmax and its
gradient at once, and keeps only the gradients for the features and the weight. On
a CPU, where the logits do not fit in cache, this removes most of the output layer's
memory traffic (a second softmax pass and the logits' backward).
"""
from __future__ import annotations

import torch
from torch import nn

from seq2seq.models.kernels.gemm import linear, mm_nn, mm_nt, mm_tn


def log_normaliser(p: torch.Tensor, x: torch.Tensor, t: torch.Tensor, x_t: torch.Tensor,
                    select_rows: bool) -> torch.Tensor:
    """log sum_j exp(x_j) [rows, 1] from the softmax p [rows, V] of the fp32 logits x, the targets t
    [rows, 1] and their logits x_t: p_t = exp(x_t - lse), so lse = x_t - log p_t, with no pass over
    the rows. Exact to fp32 rounding while p_t is a normal number; the rare rows whose target
    probability is below 1e-30 (a loss over 69 nats) take a logsumexp over their logits instead:
    only those rows where select_rows (a host sync, free on a CPU), else every row, kept where needed
    (no sync on an accelerator)."""
    p_t = p.gather(1, t)
    lse = x_t - torch.log(p_t)
    tiny = p_t < 1e-30
    if not select_rows:
        return torch.where(tiny, torch.logsumexp(x, dim=1, keepdim=True), lse)
    rows = tiny.squeeze(1).nonzero().squeeze(1)
    if rows.numel():
        lse[rows] = torch.logsumexp(x[rows], dim=1, keepdim=True)
    return lse


class _FusedLinearCrossEntropy(torch.autograd.Function):
    """Under autocast the matmuls run in the autocast dtype (the weight is cast to it), while the
    softmax, the loss and the accumulated weight gradient stay fp32, like a master copy."""

    @staticmethod
    def forward(ctx, features, weight, target, smoothing: float, chunk: int):
        n, vocab = features.size(0), weight.size(0)
        device_type = features.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else features.dtype
        w = weight.to(dtype)
        grad_features = torch.empty_like(features)
        grad_weight = None
        loss = features.new_zeros((), dtype=torch.float32)
        nll = features.new_zeros((), dtype=torch.float32)
        # Buffers shared by the chunks (the softmax; a low-precision chunk's logits in fp32): a fresh
        # [chunk, V] tensor per chunk costs more in page faults on a CPU than the pass that fills it.
        size = (min(chunk, n), vocab)
        probs = features.new_empty(size, dtype=torch.float32)
        wide = None if dtype == torch.float32 else features.new_empty(size, dtype=torch.float32)
        with torch.autocast(device_type, enabled=False):
            for start in range(0, n, chunk):
                h, t = features[start : start + chunk].to(dtype), target[start : start + chunk, None]
                logits = mm_nt(h, w)
                x = logits if wide is None else wide[: h.size(0)].copy_(logits)
                p = torch.softmax(x, 1, out=probs[: h.size(0)])  # one pass: torch's exp alone is slower
                x_t = x.gather(1, t)
                lse = log_normaliser(p, x, t, x_t, select_rows=device_type == "cpu")
                chunk_nll = (lse - x_t).sum()
                nll += chunk_nll
                loss += (1.0 - smoothing) * chunk_nll
                if smoothing:  # eps * mean_j -log p_j = eps * (lse - mean_j x_j)
                    loss += smoothing * (lse - x.mean(dim=1, keepdim=True)).sum()
                # d loss / d logits = softmax - (1 - eps) * onehot - eps / V
                p.scatter_add_(1, t, torch.full_like(x_t, -(1.0 - smoothing)))
                if smoothing:
                    p.sub_(smoothing / vocab)
                grad = p if wide is None else logits.copy_(p)  # the spent low-precision logits hold it
                grad_features[start : start + chunk] = mm_nn(grad, w)
                part = mm_tn(grad, h)  # the fp32 accumulator below is the master copy under autocast
                grad_weight = part.to(weight.dtype) if grad_weight is None else grad_weight.add_(part)
        if grad_weight is None:  # no rows
            grad_weight = torch.zeros_like(weight)
        ctx.save_for_backward(grad_features, grad_weight)
        return loss, nll

    @staticmethod
    def backward(ctx, grad_loss, grad_nll):
        grad_features, grad_weight = ctx.saved_tensors
        return grad_features * grad_loss, grad_weight * grad_loss, None, None, None


def smoothed_nll(logp: torch.Tensor, target: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(label-smoothed loss, NLL) summed over rows of log-probabilities logp [N, V] with targets [N]:
    (1 - eps) * NLL + eps * mean over the vocabulary of -log p, as torch's cross_entropy defines it."""
    nll = -logp.gather(1, target[:, None]).sum()
    if smoothing == 0.0:
        return nll, nll.detach()
    return (1.0 - smoothing) * nll + smoothing * -logp.mean(dim=-1).sum(), nll.detach()


class OutputLayer(nn.Module):
    """A bias-free projection to the vocabulary and a softmax, optionally sharing the target embedding matrix.

    It reads only the decoder features (attention_choice None); its training loss is the fused one above.
    """

    attention_choice = None

    def __init__(self, sizes, tied_weight: nn.Parameter | None = None, chunk: int = 512):
        """sizes: seq2seq.models.model.OutputSizes."""
        super().__init__()
        if tied_weight is not None:
            self.weight = tied_weight
        else:
            self.weight = nn.Parameter(torch.empty(sizes.vocab, sizes.features))
            nn.init.normal_(self.weight, std=sizes.features**-0.5)
        self.chunk = chunk

    def product_shapes(self) -> list[tuple[int, int]]:
        """(inner, columns) of its products, for kernels.linear=auto (seq2seq.models.kernels.gemm)."""
        return [(self.weight.size(1), self.weight.size(0))]

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Vocabulary scores (logits) [..., V]."""
        return linear(features, self.weight)

    def log_probs(self, out, src_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """log P(w) [..., V] from a DecoderOut."""
        return torch.log_softmax(self(out.features).float(), dim=-1)

    def loss(self, rows, src_rows, target: torch.Tensor, smoothing: float):
        """(label-smoothed loss, NLL), summed over rows (a DecoderOut of [N, ...]) with targets [N]."""
        features = rows.features
        if torch.is_grad_enabled() and (features.requires_grad or self.weight.requires_grad):
            return _FusedLinearCrossEntropy.apply(features, self.weight, target, smoothing, self.chunk)
        return smoothed_nll(self.log_probs(rows), target, smoothing)
