"""Local attention of Luong et al. (2015): attend to a window [p_t - D, p_t + D] only.

local-m (mode=monotonic) centres the window at p_t = t, clamped to the last real source
position so that steps beyond the source end still see its last 2D+1 positions.
local-p (mode=predictive) predicts p_t = S * sigmoid(v_p^T tanh(W_p h_t)), S the real
source length, and weights the window with a Gaussian exp(-(s - p_t)^2 / (2 sigma^2)),
sigma = D / 2, which is what lets p_t learn (the window edges have no gradient).

By default local-p follows the paper exactly: a_t(s) = softmax_window(score)(s) * gaussian(s),
so its weights sum to less than 1 (the context is shrunk towards zero when p_t sits off the
best-scoring position). renormalize=true divides by that sum instead (softmax(score + log
gaussian)), keeping the weights a distribution like every other attention here.
"""
from __future__ import annotations

import torch
from torch import nn

from seq2seq.models.kernels.gemm import Linear
from seq2seq.models.luong import LuongScore
from seq2seq.models.rnn_attention import masked_softmax, source_lengths

MODES = ("monotonic", "predictive")


class LocalAttention(nn.Module):
    query_timing = "current"

    def __init__(self, query_dim: int, key_dim: int, mode: str = "predictive", window: int = 10,
                 score: str = "general", hidden_dim: int = 0, renormalize: bool = False):
        """window: D, the half-width of the window (>= 1); hidden_dim: size of W_p (0 = query_dim);
        renormalize: local-p only, make the Gaussian-weighted weights sum to 1 (not in the paper)."""
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"model.attention.mode must be monotonic (local-m) or predictive (local-p), not '{mode}'")
        if window < 1:
            raise ValueError(f"model.attention.window (D) must be at least 1, got {window}")
        if mode == "monotonic" and hidden_dim:
            raise ValueError("model.attention.hidden_dim sizes local-p's position predictor; local-m has none")
        if mode == "monotonic" and renormalize:
            raise ValueError("model.attention.renormalize applies to local-p's Gaussian weighting; local-m has none")
        self.mode, self.window, self.renormalize = mode, window, renormalize
        self.sigma = window / 2.0
        self.scorer = LuongScore(score, query_dim, key_dim)
        if mode == "predictive":
            self.position_proj = Linear(query_dim, hidden_dim or query_dim, bias=False)  # W_p
            self.position_v = Linear(hidden_dim or query_dim, 1, bias=False)              # v_p
        self.context_dim = key_dim

    def precompute(self, keys: torch.Tensor, padding_mask: torch.Tensor) -> tuple:
        return keys, self.scorer.project_keys(keys), padding_mask, source_lengths(padding_mask)

    def centre(self, query: torch.Tensor, lengths: torch.Tensor, position: int) -> torch.Tensor:
        """p_t [B] (real-valued for local-p)."""
        if self.mode == "monotonic":
            return torch.clamp(lengths - 1, max=float(position))
        gate = torch.sigmoid(self.position_v(torch.tanh(self.position_proj(query)))).squeeze(-1)
        return lengths * gate.float()

    def forward(self, query: torch.Tensor, memory: tuple, position: int, need_weights: bool = True):
        keys, projected, padding_mask, lengths = memory
        p = self.centre(query, lengths, position)
        offset = torch.arange(keys.size(1), device=keys.device, dtype=torch.float)[None] - p[:, None]  # s - p_t
        outside = offset.abs().gt(self.window) | padding_mask
        scores = self.scorer(query, projected).float()
        if self.mode == "monotonic":
            weights = masked_softmax(scores, outside)
        else:
            log_gaussian = -offset.square() / (2 * self.sigma**2)
            if self.renormalize:
                weights = masked_softmax(scores + log_gaussian, outside)
            else:
                weights = masked_softmax(scores, outside) * log_gaussian.exp()
        weights = weights.to(keys.dtype)
        return torch.bmm(weights[:, None], keys)[:, 0], weights
