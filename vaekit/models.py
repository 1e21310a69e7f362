"""The VAE: a diagonal-Gaussian encoder q(z|x), a standard normal prior p(z), a decoder p(x|z).

Every model answers the same calls (encode, decode, prior, sample, elbo, log_likelihood), so the
evaluation, latent tools and CLI never special-case a variant. `x` is in model space: integer
levels (as floats) for the discretised likelihood, {0, 1} for Bernoulli, standardised reals for Gaussian.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from vaekit import nn as blocks
from vaekit.data import DataSpec
from vaekit.dist import Bernoulli, DiagonalGaussian, DiscretizedLogistic, Gaussian
from vaekit.errors import OptionError

LIKELIHOODS = ("discretized_logistic", "bernoulli", "gaussian")
ARCHS = ("mlp", "conv")
_N_PARAMS = {"discretized_logistic": 2, "bernoulli": 1, "gaussian": 2}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    spec: DataSpec
    likelihood: str
    arch: str = "mlp"
    latent_dim: int = 16
    hidden: tuple[int, ...] = (512, 256)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["spec"], d["hidden"] = self.spec.to_dict(), list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        return cls(**{**d, "spec": DataSpec.from_dict(d["spec"]), "hidden": tuple(d["hidden"])})

    @classmethod
    def for_data(
        cls,
        spec: DataSpec,
        likelihood: str | None = None,
        arch: str = "mlp",
        latent_dim: int | None = None,
        hidden: tuple[int, ...] | None = None,
    ) -> ModelConfig:
        """The default model for data of this spec: the likelihood fits the data, sizes follow its dimension."""
        likelihood = likelihood or ("gaussian" if spec.kind == "real" else "discretized_logistic")
        if likelihood not in LIKELIHOODS:
            raise OptionError(f"unknown likelihood {likelihood!r}: choose from {', '.join(LIKELIHOODS)}")
        if (likelihood == "gaussian") != (spec.kind == "real"):
            raise OptionError(f"the {likelihood} likelihood does not fit {spec.kind} data")
        if arch not in ARCHS:
            raise OptionError(f"unknown architecture {arch!r}: choose from {', '.join(ARCHS)}")
        if arch == "conv" and not spec.is_image:
            raise OptionError("the conv architecture needs image data (channels, height, width)")
        d = spec.dim
        if latent_dim is None:
            latent_dim = 16 if d >= 256 else 8 if d >= 32 else max(1, d // 2)
        if latent_dim < 1:
            raise OptionError(f"latent size must be at least 1, got {latent_dim}")
        hidden = hidden if hidden is not None else ((512, 256) if d >= 256 else (256, 128))
        if not hidden or min(hidden) < 1:
            raise OptionError(f"hidden layer sizes must be one or more numbers >= 1, got {list(hidden)}")
        return cls(spec, likelihood, arch, latent_dim, tuple(hidden))


@dataclasses.dataclass
class ELBOResult:
    """Per-example pieces of the ELBO, in nats: E_q[log p(x|z)] and KL(q(z|x) || p(z)) per latent dimension."""

    reconstruction: torch.Tensor
    kl_per_dim: torch.Tensor

    @property
    def kl(self) -> torch.Tensor:
        return self.kl_per_dim.sum(-1)

    @property
    def elbo(self) -> torch.Tensor:
        return self.reconstruction - self.kl

    def totals(self) -> torch.Tensor:
        """Sums over the batch of -ELBO, -reconstruction and KL, in float64 (for running means)."""
        return torch.stack([-self.elbo.sum(), -self.reconstruction.sum(), self.kl.sum()]).detach().double()


class VAE(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        spec, n_params = config.spec, _N_PARAMS[config.likelihood]
        if config.arch == "conv":
            self.encoder = blocks.ConvEncoder(spec.shape, config.latent_dim, config.hidden)
            self.decoder = blocks.ConvDecoder(spec.shape, config.latent_dim, config.hidden, n_params)
        else:
            self.encoder = blocks.MLPEncoder(spec.shape, config.latent_dim, config.hidden)
            self.decoder = blocks.MLPDecoder(spec.shape, config.latent_dim, config.hidden, n_params)

    @property
    def spec(self) -> DataSpec:
        return self.config.spec

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def prepare(self, raw: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Stored values (a Dataset's `x`) to model space; Bernoulli models binarise with a draw from `generator`."""
        if self.config.likelihood == "bernoulli":
            return self.binarize(raw, torch.rand(raw.shape, generator=generator, device=raw.device))
        return raw.to(torch.float32)

    def binarize(self, raw: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        """Level k becomes 1 with probability k / (levels - 1), decided by `uniform` draws in [0, 1)."""
        return (uniform * (self.spec.levels - 1) < raw).to(torch.float32)

    def _encoder_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.likelihood == "discretized_logistic":
            return x * (2.0 / (self.spec.levels - 1)) - 1.0
        if self.config.likelihood == "bernoulli":
            return 2.0 * x - 1.0
        return x

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        # .float(): under bf16 autocast the networks' matmuls run in bf16, the distributions stay in fp32
        mean, logvar = self.encoder(self._encoder_input(x)).float().chunk(2, dim=-1)
        return DiagonalGaussian(mean, logvar.clamp(-30.0, 20.0))

    def decode(self, z: torch.Tensor) -> Bernoulli | Gaussian | DiscretizedLogistic:
        params = self.decoder(z).float()
        if self.config.likelihood == "bernoulli":
            return Bernoulli(params[:, 0])
        if self.config.likelihood == "gaussian":
            return Gaussian(params[:, 0], params[:, 1].clamp(-9.0, 9.0))
        return DiscretizedLogistic(params[:, 0] + 0.5, params[:, 1] - 1.0, self.spec.levels)

    @property
    def prior(self) -> DiagonalGaussian:
        p = next(self.parameters())
        return DiagonalGaussian.standard((self.latent_dim,), device=p.device, dtype=p.dtype)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> ELBOResult:
        return self.elbo(x, noise)

    def elbo(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> ELBOResult:
        """The single-sample ELBO estimate per example, with the KL in closed form.

        noise: the standard normal draws of the reparameterisation, shape (batch, latent_dim); fresh if None.
        """
        posterior = self.encode(x)
        z = posterior.rsample() if noise is None else posterior.mean + posterior.stddev * noise
        reconstruction = self.decode(z).log_prob(x)
        return ELBOResult(reconstruction, posterior.kl_standard_normal_per_dim())

    @torch.no_grad()
    def sample(
        self, n: int, temperature: float = 1.0, *, mean: bool = True, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """`n` new items in model space; `temperature` scales the prior's stddev (lower: less diverse).

        mean=True returns the mean of p(x|z) (what figures show); False draws x from it.
        """
        if temperature < 0:
            raise OptionError(f"temperature must be >= 0, got {temperature}")
        z = self.prior.rsample(n, temperature, generator=generator)
        likelihood = self.decode(z)
        return likelihood.mean if mean else likelihood.sample(generator=generator)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The mean of p(x|z) at the posterior mean of z."""
        return self.decode(self.encode(x).mean).mean

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, k: int = 100, chunk: int = 100) -> torch.Tensor:
        """Importance-sampled estimate of log p(x) per example: log (1/k) sum_i p(x, z_i) / q(z_i | x)."""
        posterior, prior = self.encode(x), self.prior
        log_w = []
        for start in range(0, k, chunk):
            n = min(chunk, k - start)
            z = posterior.rsample(n)  # (n, batch, latent)
            log_px = self.decode(z.flatten(0, 1)).log_prob(x.repeat(n, *[1] * (x.dim() - 1))).view(n, -1)
            log_w.append(log_px + prior.log_prob(z) - posterior.log_prob(z))
        log_w = torch.cat(log_w).double()
        return torch.logsumexp(log_w, 0) - math.log(k)
