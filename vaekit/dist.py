"""Distributions used by the models: diagonal Gaussian posterior/prior and the likelihoods.

Each `log_prob` sums over all but the first (batch) dimension and returns one value per example,
in nats. Likelihoods are parameterised by unconstrained network outputs (logits, log-scales) so
that their log-probabilities stay finite and stable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LOG_2PI = math.log(2 * math.pi)


def _sum_except_batch(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(1)


class DiagonalGaussian:
    """N(mean, diag(exp(logvar))) over the last dimension; used for q(z|x) and the prior."""

    def __init__(self, mean: torch.Tensor, logvar: torch.Tensor):
        self.mean, self.logvar = mean, logvar

    @classmethod
    def standard(cls, shape: tuple[int, ...], device=None, dtype=None) -> DiagonalGaussian:
        zeros = torch.zeros(shape, device=device, dtype=dtype)
        return cls(zeros, zeros)

    @property
    def stddev(self) -> torch.Tensor:
        return torch.exp(0.5 * self.logvar)

    def rsample(self, n: int | None = None, temperature: float = 1.0, generator=None) -> torch.Tensor:
        """A reparameterised draw; `n` adds a leading sample dimension; `temperature` scales the stddev."""
        shape = self.mean.shape if n is None else (n, *self.mean.shape)
        eps = torch.randn(shape, device=self.mean.device, dtype=self.mean.dtype, generator=generator)
        return self.mean + temperature * self.stddev * eps

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (_LOG_2PI + self.logvar + (z - self.mean) ** 2 * torch.exp(-self.logvar)).sum(-1)

    def kl_standard_normal_per_dim(self) -> torch.Tensor:
        """KL(self || N(0, I)) per latent dimension, in closed form."""
        return 0.5 * (self.mean**2 + torch.exp(self.logvar) - 1 - self.logvar)


class Bernoulli:
    """Independent Bernoulli pixels with the given logits."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return -_sum_except_batch(F.binary_cross_entropy_with_logits(self.logits, x, reduction="none"))

    def sample(self, generator=None) -> torch.Tensor:
        return torch.bernoulli(self.mean, generator=generator)


class Gaussian:
    """Independent Gaussian features with a mean and a log-variance per feature."""

    def __init__(self, loc: torch.Tensor, logvar: torch.Tensor):
        self.loc, self.logvar = loc, logvar

    @property
    def mean(self) -> torch.Tensor:
        return self.loc

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return -0.5 * _sum_except_batch(_LOG_2PI + self.logvar + (x - self.loc) ** 2 * torch.exp(-self.logvar))

    def sample(self, generator=None) -> torch.Tensor:
        eps = torch.randn(self.loc.shape, device=self.loc.device, dtype=self.loc.dtype, generator=generator)
        return self.loc + torch.exp(0.5 * self.logvar) * eps


class DiscretizedLogistic:
    """A logistic distribution discretised onto the integer levels 0..levels-1 (as in PixelCNN++).

    `loc` is in level units scaled to [0, 1]; the outermost bins take the tails, so the
    probabilities of all levels sum to one and -log p(x) is a code length for integer data.
    """

    def __init__(self, loc: torch.Tensor, log_scale: torch.Tensor, levels: int):
        self.loc, self.log_scale, self.levels = loc, log_scale.clamp_min(-7.0), levels

    def _log_prob_elementwise(self, x: torch.Tensor) -> torch.Tensor:
        half_bin = 0.5 / (self.levels - 1)
        centre = x / (self.levels - 1)
        inv_scale = torch.exp(-self.log_scale)
        upper = (centre + half_bin - self.loc) * inv_scale
        lower = (centre - half_bin - self.loc) * inv_scale
        # log(sigmoid(u) - sigmoid(l)) = logsigmoid(u) + logsigmoid(-l) + log(1 - exp(-(u - l))), exact and stable
        middle = F.logsigmoid(upper) + F.logsigmoid(-lower) + torch.log(-torch.expm1(-2 * half_bin * inv_scale))
        first = F.logsigmoid(upper)  # level 0 takes the whole lower tail
        last = F.logsigmoid(-lower)  # the top level takes the whole upper tail
        return torch.where(x <= 0, first, torch.where(x >= self.levels - 1, last, middle))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return _sum_except_batch(self._log_prob_elementwise(x))

    def probs(self) -> torch.Tensor:
        """Probabilities of every level, in a new last dimension."""
        levels = torch.arange(self.levels, device=self.loc.device, dtype=self.loc.dtype)
        expand = (*self.loc.shape, self.levels)
        log_p = DiscretizedLogistic(
            self.loc.unsqueeze(-1).expand(expand), self.log_scale.unsqueeze(-1).expand(expand), self.levels
        )._log_prob_elementwise(levels.expand(expand))
        return log_p.exp()

    @property
    def mean(self) -> torch.Tensor:
        """The expected level, exactly: E[k] = sum over k >= 1 of P(level >= k), one level at a time to save memory."""
        inv_scale = torch.exp(-self.log_scale)
        total = torch.zeros_like(self.loc)
        for k in range(1, self.levels):
            total += torch.sigmoid((self.loc - (k - 0.5) / (self.levels - 1)) * inv_scale)
        return total

    def sample(self, generator=None) -> torch.Tensor:
        u = torch.rand(self.loc.shape, device=self.loc.device, dtype=self.loc.dtype, generator=generator)
        u = u.clamp(1e-6, 1 - 1e-6)
        continuous = self.loc + torch.exp(self.log_scale) * (torch.log(u) - torch.log1p(-u))
        return torch.round(continuous * (self.levels - 1)).clamp(0, self.levels - 1)
