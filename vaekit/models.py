"""The VAE: a diagonal-Gaussian encoder q(z|x), a prior p(z), a decoder p(x|z); and what all models share.

Every model answers the same calls (encode, decode, prior, sample, elbo, log_likelihood), so the
evaluation, latent tools and CLI never special-case a variant. `x` is in model space: integer
levels (as floats) for the discretised likelihood, {0, 1} for Bernoulli, standardised reals for Gaussian.
`y`, for a conditional model, holds integer class labels, one per example.

Variants of the basic VAE: the VampPrior (a mixture prior over K learned pseudo-inputs) and the
conditional VAE (labels as input to encoder and decoder); the IWAE bound is a training objective of
any model. The hierarchical VAE lives in `hierarchical.py`; `build` makes whichever a config names.
Any image model may add a pixel context (`context`): its likelihood also sees each pixel's earlier
neighbours (`dist.PixelContext`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vaekit import nn as blocks
from vaekit.data import DataSpec
from vaekit.data.dataset import is_integer
from vaekit.dist import (
    Bernoulli,
    DiagonalGaussian,
    DiscretizedLogistic,
    DiscretizedLogisticMixture,
    Gaussian,
    GaussianMixture,
    Likelihood,
    PixelContext,
    clamp_logvar,
)
from vaekit.errors import OptionError
from vaekit.importance import ISEstimate, RunningLogMeanExp

# choose(layer, prior, posterior) -> z: see LatentVariableModel.descend
LayerChoice = Callable[[int, DiagonalGaussian | None, DiagonalGaussian | None], torch.Tensor]
LIKELIHOODS = ("discretized_logistic", "bernoulli", "gaussian")
ARCHS = ("mlp", "conv", "spatial", "hybrid")  # spatial: a hierarchical model with latent maps; hybrid: one map layer
PRIORS = ("normal", "vamp")
_N_PARAMS = {"discretized_logistic": 2, "bernoulli": 1, "gaussian": 2}
MAX_CONTEXT = 3  # the causal neighbourhood's radius: 24 pixels at 3, and code tables stay exact (see codec)
MAX_CONTEXT_HIDDEN = 64  # the context's hidden units: up to 64 keep the codec's sums exact
MAX_CONTEXT_TERMS = 128  # inputs to one hidden unit of the context: up to 2^7 keep the codec's sums exact
MAX_MIXTURE = 5  # components of a discretised logistic mixture
MAX_TOP_MIXTURE = 256  # components of a learned or fitted top-layer prior (vaekit.top_prior)
BOTH_TOP_PRIORS = "the top layer's prior is either learned (--learned-prior) or fitted (--fit-prior)"
MAX_WIDTH = 1 << 16  # a layer's size, as read from a file: beyond it a config is corrupt, not ambitious
ROWS_PER_PASS = 4096  # importance sampling: decoded items per pass (measured faster than 50,000 or 1,000)
ITEMS_PER_PASS = 128  # ... of this many items, so that their encoding is a small part of a pass


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    spec: DataSpec
    likelihood: str
    arch: str = "mlp"
    latent_dim: int = 16  # the total over all stochastic layers of a hierarchical model
    hidden: tuple[int, ...] = (512, 256)
    prior: str = "normal"  # "normal" (N(0, I)) or "vamp" (mixture of the posteriors of learned pseudo-inputs)
    pseudo_inputs: int = 500  # K, for the VampPrior
    classes: int = 0  # > 0: a conditional VAE over this many class labels
    layers: tuple[int, ...] = ()  # a hierarchical VAE: latent sizes of its layers, bottom to top (maps: channels)
    context: int = 0  # > 0: each pixel's likelihood also sees the pixels before it within this radius
    context_hidden: int = 0  # > 0: the context goes through this many hidden units, which also see z's parameters
    mixture: int = 1  # > 1: a mixture of this many discretised logistics per value
    layer_norm: bool = False  # a hierarchical model: each residual cell starts with a LayerNorm
    top_mixture: int = 0  # > 0: the top layer's prior is a Gaussian mixture of this many components, fitted after
    # training (vaekit.top_prior); 0: N(0, I)
    learned_prior: int = 0  # > 0: the top layer's prior is an equal-weight mixture of this many diagonal
    # Gaussians, learned with the model (vaekit.top_prior)
    patches: bool = False  # arch conv or hybrid: the convolutional path meets the pixels by 4x4 patches (pixel
    # shuffles), not by strided convolutions (vaekit.nn.ConvHead)
    noise_maps: bool = False  # arch hybrid: the map layer has no posterior, its latents are drawn from their prior
    # in inference too (noise the output path uses), and there is no bottom-up map path (vaekit.hybrid)

    @property
    def n_params(self) -> int:
        """The likelihood's parameters per data value (what the decoder outputs per value)."""
        return 3 * self.mixture if self.mixture > 1 else _N_PARAMS[self.likelihood]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["spec"], d["hidden"], d["layers"] = self.spec.to_dict(), list(self.hidden), list(self.layers)
        omitted = (
            ("mixture", 1), ("layer_norm", False), ("top_mixture", 0), ("learned_prior", 0), ("patches", False),
            ("noise_maps", False),
        )  # fmt: skip
        for key, default in omitted:
            if d[key] == default:
                del d[key]  # so that models without it keep their files and fingerprints (see codec.container)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """The config a file records, checked as `for_data` checks a new one; ValueError names what is wrong."""
        if not isinstance(d, dict):
            raise ValueError("the model section must be a mapping")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown field {sorted(unknown)[0]!r}")
        names = {"likelihood": d.get("likelihood"), "arch": d.get("arch", "mlp"), "prior": d.get("prior", "normal")}
        for key, value in names.items():
            if not isinstance(value, str):
                raise ValueError(f"{key} must be a name, got {value!r}")
        defaults = (
            ("latent_dim", 16), ("pseudo_inputs", 500), ("classes", 0), ("context", 0), ("context_hidden", 0),
            ("mixture", 1), ("top_mixture", 0), ("learned_prior", 0),
        )  # fmt: skip
        counts = {key: d.get(key, default) for key, default in defaults}
        for key, value in counts.items():
            if not (is_integer(value) and 0 <= value <= MAX_WIDTH):
                raise ValueError(f"{key} must be an integer in 0..{MAX_WIDTH}, got {value!r}")
        sizes = {key: d.get(key, []) for key in ("hidden", "layers")}
        for key, values in sizes.items():
            if not (
                isinstance(values, list)
                and len(values) <= 16
                and all(is_integer(v) and 1 <= v <= MAX_WIDTH for v in values)
            ):
                raise ValueError(f"{key} must be at most 16 integers in 1..{MAX_WIDTH}, got {values!r}")
        switches = {key: d.get(key, False) for key in ("layer_norm", "patches", "noise_maps")}
        for key, value in switches.items():
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be true or false, got {value!r}")
        spec = DataSpec.from_dict(d.get("spec"))
        try:
            config = cls.for_data(
                spec, names["likelihood"], names["arch"], counts["latent_dim"], tuple(sizes["hidden"]),
                prior=names["prior"], pseudo_inputs=counts["pseudo_inputs"], classes=counts["classes"],
                layers=tuple(sizes["layers"]), context=counts["context"], context_hidden=counts["context_hidden"],
                mixture=counts["mixture"], layer_norm=switches["layer_norm"], top_mixture=counts["top_mixture"],
                learned_prior=counts["learned_prior"], patches=switches["patches"], noise_maps=switches["noise_maps"],
            )  # fmt: skip
        except OptionError as error:
            raise ValueError(str(error)) from None
        if config.latent_dim != counts["latent_dim"]:
            raise ValueError(
                f"latent_dim must be the sum of the layers {list(config.layers)}, got {counts['latent_dim']}"
            )
        return config

    @classmethod
    def for_data(
        cls,
        spec: DataSpec,
        likelihood: str | None = None,
        arch: str = "mlp",
        latent_dim: int | None = None,
        hidden: tuple[int, ...] | None = None,
        *,
        prior: str = "normal",
        pseudo_inputs: int = 500,
        classes: int = 0,
        layers: tuple[int, ...] = (),
        context: int = 0,
        context_hidden: int = 0,
        mixture: int = 1,
        layer_norm: bool = False,
        top_mixture: int = 0,
        learned_prior: int = 0,
        patches: bool = False,
        noise_maps: bool = False,
    ) -> ModelConfig:
        """The default model for data of this spec: the likelihood fits the data, sizes follow its dimension."""
        likelihood = likelihood or ("gaussian" if spec.kind == "real" else "discretized_logistic")
        if likelihood not in LIKELIHOODS:
            raise OptionError(f"unknown likelihood {likelihood!r}: choose from {', '.join(LIKELIHOODS)}")
        if (likelihood == "gaussian") != (spec.kind == "real"):
            raise OptionError(f"the {likelihood} likelihood does not fit {spec.kind} data")
        if arch not in ARCHS:
            raise OptionError(f"unknown architecture {arch!r}: choose from {', '.join(ARCHS)}")
        if arch in ("conv", "spatial", "hybrid") and not spec.is_image:
            raise OptionError(f"the {arch} architecture needs image data (channels, height, width)")
        if arch == "spatial" and not layers:
            raise OptionError("the spatial architecture is a hierarchical model: give its latent layers (--layers)")
        if arch == "hybrid" and len(layers) < 2:
            raise OptionError(
                "the hybrid architecture needs a map layer and at least one dense layer: --layers MAPS,SIZE,..."
            )
        if prior not in PRIORS:
            raise OptionError(f"unknown prior {prior!r}: choose from {', '.join(PRIORS)}")
        if pseudo_inputs < 1:
            raise OptionError(f"the VampPrior needs at least 1 pseudo-input, got {pseudo_inputs}")
        if classes < 0 or classes == 1:
            raise OptionError(f"a conditional model needs at least 2 classes, got {classes}")
        if prior == "vamp" and classes:
            raise OptionError("a conditional model with a VampPrior is not supported: choose one of the two")
        if not 0 <= context <= MAX_CONTEXT:
            raise OptionError(f"the context radius must lie in 0..{MAX_CONTEXT}, got {context}")
        if context and not (spec.is_image and likelihood in ("bernoulli", "discretized_logistic")):
            raise OptionError("a pixel context needs images and a Bernoulli or discretised likelihood")
        if not 0 <= context_hidden <= MAX_CONTEXT_HIDDEN:
            raise OptionError(f"the context's hidden units must number 0..{MAX_CONTEXT_HIDDEN}, got {context_hidden}")
        if context_hidden and not context:
            raise OptionError("hidden units for the pixel context need a context radius (--context)")
        if not 1 <= mixture <= MAX_MIXTURE:
            raise OptionError(f"a logistic mixture has 1..{MAX_MIXTURE} components, got {mixture}")
        if mixture > 1 and likelihood != "discretized_logistic":
            raise OptionError(f"a logistic mixture is a discretised likelihood, not {likelihood}")
        if context_hidden:
            n_params = 3 * mixture if mixture > 1 else _N_PARAMS[likelihood]
            terms = spec.shape[0] * (context * (2 * context + 1) + context + n_params)
            if terms > MAX_CONTEXT_TERMS:
                raise OptionError(
                    f"the pixel context's hidden units would each sum {terms} inputs (channels x (earlier pixels + "
                    f"parameters)); at most {MAX_CONTEXT_TERMS} keep compression exact: a smaller radius or mixture"
                )
        if layer_norm and not layers:
            raise OptionError("a LayerNorm in the residual cells needs a hierarchical model (--layers)")
        if patches and not (layers and arch in ("conv", "hybrid")):
            raise OptionError(
                "patches (--patches) are the convolutional path's: they need --arch conv or hybrid, and --layers"
            )
        if noise_maps and arch != "hybrid":
            raise OptionError("noise maps (--noise-maps) are the hybrid model's map layer: they need --arch hybrid")
        for components, kind in ((top_mixture, "fitted"), (learned_prior, "learned")):
            if components:
                check_top_mixture(layers, arch, kind)
            if not 0 <= components <= MAX_TOP_MIXTURE:
                raise OptionError(f"a {kind} top-layer prior has 1..{MAX_TOP_MIXTURE} components, got {components}")
        if top_mixture and learned_prior:
            raise OptionError(BOTH_TOP_PRIORS)
        d = spec.dim
        if layers:
            if min(layers) < 1:
                raise OptionError(f"latent layer sizes must be >= 1, got {list(layers)}")
            if prior != "normal" or classes:
                raise OptionError("the hierarchical model has its own priors and takes no labels")
            # layers of maps count channels, each a map on the grid: spatial's every layer, hybrid's bottom one
            maps = {"spatial": layers, "hybrid": layers[:1]}.get(arch, ())
            area = math.prod(blocks.latent_grid(spec.shape)) if maps else 1
            latent_dim = sum(maps) * area + sum(layers[len(maps) :])
        if latent_dim is None:
            latent_dim = 16 if d >= 256 else 8 if d >= 32 else max(1, d // 2)
        if latent_dim < 1:
            raise OptionError(f"latent size must be at least 1, got {latent_dim}")
        hidden = hidden if hidden is not None else ((512, 256) if d >= 256 else (256, 128))
        if not hidden or min(hidden) < 1:
            raise OptionError(f"hidden layer sizes must be one or more numbers >= 1, got {list(hidden)}")
        return cls(
            spec, likelihood, arch, latent_dim, tuple(hidden), prior, pseudo_inputs, classes, tuple(layers), context,
            context_hidden, mixture, layer_norm, top_mixture, learned_prior, patches, noise_maps,
        )  # fmt: skip


def check_top_mixture(layers: tuple[int, ...], arch: str, kind: str = "fitted") -> None:
    """A mixture prior on the top layer (vaekit.top_prior) needs a hierarchical model whose top layer is dense."""
    if not layers or arch == "spatial":
        raise OptionError(f"a {kind} top-layer prior needs a hierarchical model whose top layer is dense (--layers)")


def build(config: ModelConfig) -> LatentVariableModel:
    """The model a config describes."""
    if config.arch == "spatial":
        from vaekit.spatial import SpatialHierarchicalVAE  # it builds on this module

        return SpatialHierarchicalVAE(config)
    if config.arch == "hybrid":
        from vaekit.hybrid import HybridHierarchicalVAE  # it builds on this module

        return HybridHierarchicalVAE(config)
    if config.layers:
        from vaekit.hierarchical import HierarchicalVAE  # it builds on this module

        return HierarchicalVAE(config)
    return VAE(config)


@dataclasses.dataclass
class ELBOResult:
    """Per-example pieces of the ELBO, in nats: E_q[log p(x|z)] and KL(q(z|x) || p(z)).

    kl_per_dim: the KL per latent dimension where it has a closed form (None for the VampPrior, whose
    KL is a single-sample estimate). objective: the bound training maximises when it is not the ELBO
    itself (the IWAE bound); the reconstruction and KL are then the averages over its k samples.
    """

    reconstruction: torch.Tensor
    kl: torch.Tensor
    kl_per_dim: torch.Tensor | None = None
    objective: torch.Tensor | None = None

    @property
    def elbo(self) -> torch.Tensor:
        return self.reconstruction - self.kl

    def totals(self) -> torch.Tensor:
        """Sums over the batch of -ELBO, -reconstruction and KL, in float64 (for running means)."""
        return torch.stack([-self.elbo.sum(), -self.reconstruction.sum(), self.kl.sum()]).detach().double()


class LatentVariableModel(nn.Module):
    """What every model shares: data handling, likelihoods, and the importance-sampled estimators.

    A subclass provides encode, decode, prior, elbo, sample and `log_weights`.
    """

    config: ModelConfig

    @property
    def spec(self) -> DataSpec:
        return self.config.spec

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def conditional(self) -> bool:
        return self.config.classes > 0

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

    def _build_context(self) -> None:
        """The pixel context (a masked convolution, through hidden units if asked), for a config that asks for one;
        call from __init__."""
        if self.config.context:
            self.causal = blocks.CausalContext(
                self.spec.shape[0], self.config.context, self.config.context_hidden, self.config.n_params
            )

    def _likelihood(self, params: torch.Tensor) -> Likelihood:
        """The likelihood from decoder outputs of shape (..., n_params, *shape)."""
        # .float(): under bf16 autocast the networks' matmuls run in bf16, the distributions stay in fp32
        params, axis = params.float(), -1 - len(self.spec.shape)
        parts = params.unbind(axis)
        if self.config.mixture > 1:
            loc, log_scale, logits = params.split(self.config.mixture, axis)
            likelihood = DiscretizedLogisticMixture(
                logits, loc + 0.5, log_scale - 1.0, self.spec.levels, item_dims=len(self.spec.shape)
            )
        elif self.config.likelihood == "bernoulli":
            likelihood = Bernoulli(parts[0])
        elif self.config.likelihood == "gaussian":
            return Gaussian(parts[0], parts[1].clamp(-9.0, 9.0))
        else:
            likelihood = DiscretizedLogistic(parts[0] + 0.5, parts[1] - 1.0, self.spec.levels)
        if self.config.context:
            return PixelContext(likelihood, lambda x, own: self.causal(self._encoder_input(x), own))
        return likelihood

    def _one_hot(self, y: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
        """Labels as one-hot rows broadcast to `like`'s leading dimensions (None for an unconditional model)."""
        if not self.conditional:
            return None
        if y is None:
            raise OptionError("this is a conditional model: give the class labels")
        if y.dtype.is_floating_point:  # the range is checked where labels come in (no device sync per step)
            raise OptionError(f"labels must be integers in 0..{self.config.classes - 1}")
        one_hot = torch.nn.functional.one_hot(y.long(), self.config.classes).to(like.dtype)
        return one_hot.expand(*like.shape[:-1], self.config.classes)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None, y: torch.Tensor | None = None):
        """The ELBO for noise of shape (batch, latent_dim); the IWAE bound for noise of shape (k, batch, latent_dim)."""
        if noise is not None and noise.dim() == 3:
            return self.iwae(x, noise, y)
        return self.elbo(x, noise, y)

    def log_weights(
        self, x: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """log p(x|z_i) and log p(z_i) - log q(z_i|x), each (n, batch), for the z_i ~ q(z|x) that
        standard normal `noise` of shape (n, batch, latent_dim) gives."""
        raise NotImplementedError

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """Sizes of the stochastic layers, bottom to top (one layer for a one-layer model)."""
        return self.config.layers or (self.latent_dim,)

    def descend(self, choose: LayerChoice, x: torch.Tensor | None = None):
        """Walk the latent layers from the top down and return p(x|z) for the z chosen on the way.

        At each layer `choose(layer, prior, posterior)` returns that layer's z, shape (batch, size): `prior` is
        p(z_l | z_>l) (None where it is N(0, I)), `posterior` q(z_l | x, z_>l) if x is given, else None. This
        is how bits-back coding sees any model: one table per layer, each given the layers above.
        """
        raise NotImplementedError

    def iwae(self, x: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None = None) -> ELBOResult:
        """The IWAE bound log (1/k) sum_i p(x, z_i) / q(z_i|x) (Burda et al. 2016), k = len(noise)."""
        log_px_z, log_ratio = self.log_weights(x, noise, y)
        bound = torch.logsumexp(log_px_z + log_ratio, 0) - math.log(len(noise))
        return ELBOResult(log_px_z.mean(0), -log_ratio.mean(0), objective=bound)

    @torch.no_grad()
    def importance_sampled(
        self,
        x: torch.Tensor,
        k: int = 1000,
        y: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        chunk: int | None = None,
    ) -> ISEstimate:
        """log p(x) ~ log (1/k) sum_i p(x, z_i) / q(z_i|x), z_i ~ q(z|x), and its standard error, per example.

        Items are taken ITEMS_PER_PASS at a time and their k samples `chunk` at a time (by default so
        that a pass decodes about ROWS_PER_PASS items: large enough for efficient matmuls, small enough
        for the decoder's outputs to stay in cache); each pass is folded into a running log-mean-exp in
        float64, so k = 5000 needs no more memory than one pass.
        """
        if k < 1:
            raise OptionError(f"the number of importance samples must be >= 1, got {k}")
        chunk = chunk or max(1, min(k, ROWS_PER_PASS // max(1, min(len(x), ITEMS_PER_PASS))))
        log_px, stderr = [], []
        for first in range(0, len(x), ITEMS_PER_PASS):
            items = slice(first, first + ITEMS_PER_PASS)
            x_part, y_part = x[items], None if y is None else y[items]
            running = RunningLogMeanExp(len(x_part), x.device)
            for start in range(0, k, chunk):
                shape = (min(chunk, k - start), len(x_part), self.latent_dim)
                log_px_z, log_ratio = self.log_weights(
                    x_part, torch.randn(shape, generator=generator, device=x.device), y_part
                )
                running.add(log_px_z + log_ratio)
            estimate = running.estimate()
            log_px.append(estimate.log_px)
            stderr.append(estimate.stderr)
        empty = torch.zeros(0, dtype=torch.float64, device=x.device)
        return ISEstimate(torch.cat(log_px) if log_px else empty, torch.cat(stderr) if stderr else empty, k)

    @torch.no_grad()
    def log_likelihood(
        self, x: torch.Tensor, k: int = 1000, y: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The importance-sampled estimate of log p(x) per example, in nats (float64)."""
        return self.importance_sampled(x, k, y, generator).log_px


class VAE(LatentVariableModel):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        spec, n_params, extra = config.spec, config.n_params, config.classes
        if config.arch == "conv":
            self.encoder = blocks.ConvEncoder(spec.shape, config.latent_dim, config.hidden, extra=extra)
            self.decoder = blocks.ConvDecoder(spec.shape, config.latent_dim, config.hidden, n_params, extra=extra)
        else:
            self.encoder = blocks.MLPEncoder(spec.shape, config.latent_dim, config.hidden, extra=extra)
            self.decoder = blocks.MLPDecoder(spec.shape, config.latent_dim, config.hidden, n_params, extra=extra)
        self._build_context()
        if config.prior == "vamp":
            # in the encoder's input space, near its centre; Tomczak & Welling 2018 learn them by gradient too
            self.pseudo_inputs = nn.Parameter(0.01 * torch.randn(config.pseudo_inputs, *spec.shape))
            self.not_weights = ("pseudo_inputs",)  # no weight decay (trainer.decay_groups)

    def encode(self, x: torch.Tensor, y: torch.Tensor | None = None) -> DiagonalGaussian:
        h = self._encoder_input(x)
        out = self.encoder(h, self._one_hot(y, h.flatten(1)))
        mean, logvar = out.float().chunk(2, dim=-1)
        return DiagonalGaussian(mean, clamp_logvar(logvar))

    def decode(self, z: torch.Tensor, y: torch.Tensor | None = None) -> Likelihood:
        """p(x|z) for z of shape (..., latent_dim); y broadcasts against z's leading dimensions."""
        return self._likelihood(self.decoder(z, self._one_hot(y, z)))

    @property
    def prior(self) -> DiagonalGaussian | GaussianMixture:
        if self.config.prior == "vamp":
            mean, logvar = self.encoder(self.pseudo_inputs).float().chunk(2, dim=-1)
            return GaussianMixture(mean, clamp_logvar(logvar))
        p = next(self.parameters())
        return DiagonalGaussian.standard((self.latent_dim,), device=p.device, dtype=torch.float32)

    def elbo(self, x: torch.Tensor, noise: torch.Tensor | None = None, y: torch.Tensor | None = None) -> ELBOResult:
        """The single-sample ELBO estimate per example; the KL in closed form for the normal prior.

        noise: the standard normal draws of the reparameterisation, shape (batch, latent_dim); fresh if None.
        """
        posterior = self.encode(x, y)
        z = posterior.rsample() if noise is None else posterior.mean + posterior.stddev * noise
        reconstruction = self.decode(z, y).log_prob(x)
        if self.config.prior == "normal":
            kl_per_dim = posterior.kl_standard_normal_per_dim()
            return ELBOResult(reconstruction, kl_per_dim.sum(-1), kl_per_dim)
        return ELBOResult(reconstruction, posterior.log_prob(z) - self.prior.log_prob(z))

    def log_weights(
        self, x: torch.Tensor, noise: torch.Tensor, y: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.encode(x, y)
        z = posterior.mean + posterior.stddev * noise  # (n, batch, latent)
        return self.decode(z, y).log_prob(x), self.prior.log_prob(z) - posterior.log_prob(z)

    def descend(self, choose: LayerChoice, x: torch.Tensor | None = None):
        if self.config.prior != "normal" or self.conditional:
            raise OptionError("only an unconditional model with the N(0, I) prior walks its latents layer by layer")
        z = choose(0, None, None if x is None else self.encode(x))
        return self.decode(z)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float = 1.0,
        *,
        mean: bool = True,
        generator: torch.Generator | None = None,
        y: torch.Tensor | int | None = None,
    ) -> torch.Tensor:
        """`n` new items in model space; `temperature` scales the prior's stddev (lower: less diverse).

        mean=True returns the mean of p(x|z) (what figures show); False draws x from it. A conditional
        model draws items of class `y` (one label, or one per item), or cycles through the classes if None.
        """
        if temperature < 0:
            raise OptionError(f"temperature must be >= 0, got {temperature}")
        y = self._labels_for(n, y)
        z = self.prior.rsample(n, temperature, generator=generator)
        likelihood = self.decode(z, y)
        return likelihood.mean if mean else likelihood.sample(generator=generator)

    def _labels_for(self, n: int, y: torch.Tensor | int | None) -> torch.Tensor | None:
        if not self.conditional:
            if y is not None:
                raise OptionError("this model is not conditional: it takes no labels")
            return None
        if y is None:
            return torch.arange(n) % self.config.classes
        y = torch.as_tensor(y)
        return y.expand(n) if y.dim() == 0 else y

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of p(x|z) at the posterior mean of z."""
        return self.decode(self.encode(x, y).mean, y).mean
