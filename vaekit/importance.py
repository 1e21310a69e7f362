"""Importance-sampling arithmetic: a running log-mean-exp of log-weights with its standard error.

Weights w_i = p(x, z_i) / q(z_i | x) span hundreds of nats, so they are never exponentiated as they
are: each pass is shifted by the largest log-weight seen so far, in float64, and earlier sums are
rescaled when that maximum grows. Memory is that of one pass, however many samples.
"""

from __future__ import annotations

import dataclasses
import math

import torch


@dataclasses.dataclass
class ISEstimate:
    """An importance-sampled log p(x) per example and the standard error of each, from the same k samples."""

    log_px: torch.Tensor
    stderr: torch.Tensor
    k: int

    def effective_sample_size(self) -> torch.Tensor:
        """(sum w)^2 / sum w^2 per example, from 1 (one weight dominates) to k (all equal)."""
        return effective_sample_size(self.stderr**2, self.k)


def effective_sample_size(variance: torch.Tensor, k: int) -> torch.Tensor:
    """The importance weights' effective sample size, recovered from the estimate's variance by the delta
    method: variance = (mean w^2 / (mean w)^2 - 1) / (k - 1), and the size is k (mean w)^2 / mean w^2."""
    return k / (1 + variance * (k - 1))


class RunningLogMeanExp:
    """log (1/k) sum_i exp(log_w_i) per example, fed a pass of log-weights (n, batch) at a time."""

    def __init__(self, batch: int, device: torch.device | str | None = None):
        self.top = torch.full((batch,), -math.inf, dtype=torch.float64, device=device)
        self.sum_w = torch.zeros(batch, dtype=torch.float64, device=device)
        self.sum_w2 = torch.zeros(batch, dtype=torch.float64, device=device)
        self.k = 0

    def add(self, log_w: torch.Tensor) -> None:
        log_w = log_w.double()
        new_top = torch.maximum(self.top, log_w.max(0).values)
        rescale = torch.exp(self.top - new_top)  # exp(-inf) = 0 on the first pass
        shifted = torch.exp(log_w - new_top)
        self.sum_w = self.sum_w * rescale + shifted.sum(0)
        self.sum_w2 = self.sum_w2 * rescale**2 + (shifted**2).sum(0)
        self.top, self.k = new_top, self.k + len(log_w)

    def estimate(self) -> ISEstimate:
        """The estimate and its standard error by the delta method: se(log mean w) = sd(w) / (sqrt(k) mean(w))."""
        k = self.k
        mean_w = self.sum_w / k
        log_px = self.top + torch.log(mean_w)
        if k == 1:
            return ISEstimate(log_px, torch.full_like(log_px, math.nan), k)
        variance = ((self.sum_w2 / k - mean_w**2) * (k / (k - 1))).clamp_min(0)
        return ISEstimate(log_px, torch.sqrt(variance / k) / mean_w, k)
