"""Distributions used by the models: diagonal Gaussian posterior/prior and the likelihoods.

A likelihood's `log_prob(x)` sums over the data dimensions of x (all but its first, the batch) and
returns one value per example, in nats; its parameters may carry extra leading dimensions (samples of
z), which broadcast against x. Likelihoods are parameterised by unconstrained network outputs (logits, log-scales) so
that their log-probabilities stay finite and stable.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_LOG_2PI = math.log(2 * math.pi)
MIN_LOG_SCALE = -7.0  # a discretised logistic's narrowest scale: far below one level's width


def clamp_logvar(logvar: torch.Tensor) -> torch.Tensor:
    """A network's log-variance output kept where exp(logvar) and its inverse stay finite in float32."""
    return logvar.clamp(-30.0, 20.0)


def _sum_data_dims(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Sum of t over the trailing dimensions that x's items have (x: (batch, *item_shape))."""
    return t.sum(dim=tuple(range(-(x.dim() - 1), 0))) if x.dim() > 1 else t


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

    def kl_per_dim(self, other: DiagonalGaussian) -> torch.Tensor:
        """KL(self || other) per dimension, in closed form."""
        ratio = torch.exp(self.logvar - other.logvar)
        return 0.5 * ((self.mean - other.mean) ** 2 * torch.exp(-other.logvar) + ratio - 1 - torch.log(ratio))


class GaussianMixture:
    """An equal-weight mixture of K diagonal Gaussians over the last dimension (the VampPrior's form).

    means, logvars: (K, dim).
    """

    def __init__(self, means: torch.Tensor, logvars: torch.Tensor):
        self.means, self.logvars = means, logvars

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log (1/K) sum_k N(z; mean_k, var_k), for z of shape (..., dim), by logsumexp over the components.

        Each component's squared distance sum_d (z_d - mean_kd)^2 / var_kd is expanded into two matmuls
        (a (..., K, dim) tensor would cost K times the memory of z), in float64 against the expansion's
        cancellation, outside any autocast."""
        with torch.autocast(z.device.type, enabled=False):
            precision = torch.exp(-self.logvars.double())  # (K, dim)
            means, points = self.means.double(), z.double()
            constant = (means**2 * precision).sum(-1) + self.logvars.double().sum(-1) + z.shape[-1] * _LOG_2PI
            distance = points**2 @ precision.T - 2.0 * points @ (means * precision).T
            per_component = -0.5 * (distance + constant)  # (..., K)
            result = torch.logsumexp(per_component, -1) - math.log(len(self.means))
        return result.to(z.dtype)

    def rsample(self, n: int | None = None, temperature: float = 1.0, generator=None) -> torch.Tensor:
        """Draws: a uniformly chosen component each, its stddev scaled by `temperature`."""
        count = 1 if n is None else n
        pick = torch.randint(len(self.means), (count,), device=self.means.device, generator=generator)
        eps = torch.randn(count, self.means.shape[-1], device=self.means.device, generator=generator)
        z = self.means[pick] + temperature * torch.exp(0.5 * self.logvars[pick]) * eps
        return z[0] if n is None else z


class Bernoulli:
    """Independent Bernoulli pixels with the given logits."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(self.logits)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x) for binary x (0 or 1 only: soft targets are not a Bernoulli likelihood): -softplus(-l)
        where x = 1 and -softplus(l) where x = 0, exact in floating point (no cancellation) and two passes
        over the logits, not BCE's five."""
        return -_sum_data_dims(F.softplus(self.logits * (1.0 - 2.0 * x)), x)

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
        return -0.5 * _sum_data_dims(_LOG_2PI + self.logvar + (x - self.loc) ** 2 * torch.exp(-self.logvar), x)

    def sample(self, generator=None) -> torch.Tensor:
        eps = torch.randn(self.loc.shape, device=self.loc.device, dtype=self.loc.dtype, generator=generator)
        return self.loc + torch.exp(0.5 * self.logvar) * eps


class DiscretizedLogistic:
    """A logistic distribution discretised onto the integer levels 0..levels-1 (as in PixelCNN++).

    `loc` is in level units scaled to [0, 1]; the outermost bins take the tails, so the
    probabilities of all levels sum to one and -log p(x) is a code length for integer data.
    """

    def __init__(self, loc: torch.Tensor, log_scale: torch.Tensor, levels: int):
        self.loc, self.log_scale, self.levels = loc, log_scale.clamp_min(MIN_LOG_SCALE), levels

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
        return _sum_data_dims(self._log_prob_elementwise(x), x)

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


class DiscretizedLogisticMixture:
    """A mixture of discretised logistics over the same levels (PixelCNN++, Salimans et al. 2017): each
    value's weights come from `logits` over the components. A pixel at an object's edge, background or
    foreground, costs less under two modes than under one logistic spread over both.

    Parameters have shape (..., components, *item), `item_dims` being the number of item dimensions.
    """

    def __init__(self, logits: torch.Tensor, loc: torch.Tensor, log_scale: torch.Tensor, levels: int, item_dims: int):
        self.logits, self.levels, self.item_dims = logits, levels, item_dims
        self.components = DiscretizedLogistic(loc, log_scale, levels)
        self.axis = -1 - item_dims  # the components' dimension

    @property
    def loc(self) -> torch.Tensor:
        return self.components.loc

    @property
    def log_scale(self) -> torch.Tensor:
        return self.components.log_scale

    @property
    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, self.axis)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        per_component = self.components._log_prob_elementwise(x.unsqueeze(self.axis))
        log_weights = torch.log_softmax(self.logits, self.axis)
        return _sum_data_dims(torch.logsumexp(log_weights + per_component, self.axis), x)

    def probs(self) -> torch.Tensor:
        """Probabilities of every level, in a new last dimension."""
        return (self.weights.unsqueeze(-1) * self.components.probs()).sum(self.axis - 1)

    @property
    def mean(self) -> torch.Tensor:
        return (self.weights * self.components.mean).sum(self.axis)

    def sample(self, generator=None) -> torch.Tensor:
        """A component drawn by its weight, then a level from it."""
        cdf = self.weights.cumsum(self.axis)
        shape = list(cdf.shape)
        shape[self.axis] = 1
        u = torch.rand(shape, device=cdf.device, dtype=cdf.dtype, generator=generator)
        pick = (u > cdf).sum(self.axis, keepdim=True).clamp_max(cdf.shape[self.axis] - 1)
        loc, log_scale = (t.gather(self.axis, pick).squeeze(self.axis) for t in (self.loc, self.log_scale))
        return DiscretizedLogistic(loc, log_scale, self.levels).sample(generator)


class PixelContext:
    """p(x|z) = prod_i p(x_i | z, x_<i): a Bernoulli, discretised logistic or mixture of them whose parameters
    at each pixel are adjusted by `context(x, params)`, a function of the pixels before it in raster order and of
    the pixel's own parameters (`own_params`) only.

    The density of given x needs one pass (every pixel's earlier pixels are known); drawing x, or its
    mean, goes pixel by pixel. Items have shape (..., channels, height, width).
    """

    def __init__(self, base: Bernoulli | DiscretizedLogistic | DiscretizedLogisticMixture, context):
        self.base, self.context = base, context

    def given(self, x: torch.Tensor) -> Bernoulli | DiscretizedLogistic | DiscretizedLogisticMixture:
        """Every pixel's own distribution, given the earlier pixels of x."""
        return _adjusted(self.base, self.context(x, own_params(self.base)), item_dims=3)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.given(x).log_prob(x)

    def _raster(self, pick) -> torch.Tensor:
        params = own_params(self.base)
        canvas = torch.zeros_like(params[..., 0, :, :, :])
        for row in range(canvas.shape[-2]):
            for col in range(canvas.shape[-1]):
                adjustment = self.context(canvas, params)[..., row, col]
                canvas[..., row, col] = pick(_adjusted(_pixel(self.base, row, col), adjustment, item_dims=1))
        return canvas

    @property
    def mean(self) -> torch.Tensor:
        """Each pixel's mean given the means before it (what a figure shows; not E[x], which has no closed form)."""
        return self._raster(lambda pixel: pixel.mean)

    def sample(self, generator=None) -> torch.Tensor:
        return self._raster(lambda pixel: pixel.sample(generator))


def own_params(base: Bernoulli | DiscretizedLogistic | DiscretizedLogisticMixture) -> torch.Tensor:
    """The parameters, (..., n_params, *item): the logits; or the locations and log-scales; or, for a
    mixture, every component's location, then their log-scales, then their weights' logits."""
    if isinstance(base, Bernoulli):
        return base.logits.unsqueeze(-4)
    if isinstance(base, DiscretizedLogisticMixture):
        return torch.cat([base.loc, base.log_scale, base.logits], -4)
    return torch.stack([base.loc, base.log_scale], -4)


def _adjusted(base, adjustment: torch.Tensor, item_dims: int):
    """The distribution with `adjustment` (..., n_params or 1, *item) added to its parameters (to the first
    alone if it has one row: every component's location, for a mixture)."""
    axis = -1 - item_dims
    if isinstance(base, DiscretizedLogisticMixture):
        if adjustment.shape[axis] == 1:
            return DiscretizedLogisticMixture(
                base.logits, base.loc + adjustment, base.log_scale, base.levels, item_dims
            )
        d_loc, d_log_scale, d_logits = adjustment.chunk(3, axis)
        return DiscretizedLogisticMixture(
            base.logits + d_logits, base.loc + d_loc, base.log_scale + d_log_scale, base.levels, item_dims
        )
    rows = adjustment.unbind(axis)
    if isinstance(base, Bernoulli):
        return Bernoulli(base.logits + rows[0])
    log_scale = base.log_scale + rows[1] if len(rows) > 1 else base.log_scale
    return DiscretizedLogistic(base.loc + rows[0], log_scale, base.levels)


def _pixel(base, row: int, col: int):
    if isinstance(base, Bernoulli):
        return Bernoulli(base.logits[..., row, col])
    if isinstance(base, DiscretizedLogisticMixture):
        parts = (t[..., row, col] for t in (base.logits, base.loc, base.log_scale))
        return DiscretizedLogisticMixture(*parts, base.levels, item_dims=1)
    return DiscretizedLogistic(base.loc[..., row, col], base.log_scale[..., row, col], base.levels)


Likelihood = Bernoulli | Gaussian | DiscretizedLogistic | DiscretizedLogisticMixture | PixelContext
