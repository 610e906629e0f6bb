"""Label-smoothed cross-entropy over explicit scores (the output layer has a fused version for training)."""
from __future__ import annotations

import torch


def label_smoothed_nll(scores: torch.Tensor, target: torch.Tensor, smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(smoothed loss, plain NLL), both summed over rows. scores [N, V] (log_softmax gives the model's
    distribution), target [N] with no padding in it. The smoothed loss is
    (1 - eps) * NLL + eps * mean over the vocabulary of -log p, as torch's cross_entropy defines it.
    """
    logp = torch.log_softmax(scores.float(), dim=-1)
    nll = -logp.gather(1, target[:, None]).sum()
    if smoothing == 0.0:
        return nll, nll.detach()
    smooth = -logp.mean(dim=-1).sum()
    return (1.0 - smoothing) * nll + smoothing * smooth, nll.detach()
