"""The hierarchical VAE with latent maps (--arch spatial): the same two paths as `hierarchical`, with
every state a stack of feature maps at a quarter of the image's side and every latent layer a stack of
maps on the same grid (after NVAE, Vahdat & Kautz 2020, at one scale and sized for a CPU).

    bottom-up:  x -> two stride-2 convolutions -> f_1 -> ... -> f_L      (C maps each, 7x7 for 28x28)
    top-down:   h <- learned maps; for l = L .. 1:
                    p(z_l | z_>l) from a 3x3 convolution of h         (the top layer's prior is N(0, I))
                    q(z_l | x, z_>l) = p + a 3x3 convolution of (h, f_l), zero at the start
                    h <- cell_l(h + 1x1 convolution of z_l)
                p(x | z) from h: two stride-2 transposed convolutions

`hidden[0]` is C, the channels of each state; `layers` are the channels of each latent layer, so a
layer holds channels x grid values and `latent_dim` is their sum over the layers. Weights shared across
the image are what paid in the dense model (its convolutional output, --arch conv); here every layer
has them. Latents stay flat vectors at the model's interface (channel-major, then rows, then columns).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vaekit.dist import DiagonalGaussian
from vaekit.hierarchical import HierarchicalVAE, _corrected
from vaekit.models import ModelConfig
from vaekit.nn import downsamplings, latent_grid, strided_convolutions


class OnMaps(nn.Module):
    """A module of (batch, channels, height, width) applied to maps with any leading dimensions."""

    def __init__(self, module: nn.Module, flatten: bool = False):
        super().__init__()
        self.module, self.flatten = module, flatten

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        lead = maps.shape[:-3]
        out = self.module(maps.reshape(-1, *maps.shape[-3:]))
        out = out.view(*lead, *out.shape[1:])
        return out.flatten(-3) if self.flatten else out  # flat: means' maps, then log-variances' maps


class ToMaps(nn.Module):
    """A flat latent layer (..., channels * height * width) to C maps by a 1x1 convolution."""

    def __init__(self, channels: int, side: tuple[int, int], width: int):
        super().__init__()
        self.shape = (channels, *side)
        self.conv = OnMaps(nn.Conv2d(channels, width, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.conv(z.view(*z.shape[:-1], *self.shape))


def joined_maps(layer: nn.Module, h: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """layer applied to the state's maps h beside the item's bottom-up maps f, joined along the channels
    (f, one per item, broadcast over h's samples)."""
    return layer(torch.cat([h, f.expand_as(h)], -3))


class MapCell(nn.Module):
    """h + conv3x3(silu(conv3x3(a(h)))), the outer convolution zero at the start; a is silu, or a
    GroupNorm over all of a state's maps with `layer_norm` (the maps' LayerNorm)."""

    def __init__(self, width: int, layer_norm: bool = False):
        super().__init__()
        self.norm = nn.GroupNorm(1, width) if layer_norm else None
        self.inner, self.outer = nn.Conv2d(width, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1)
        nn.init.zeros_(self.outer.weight)
        nn.init.zeros_(self.outer.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # on (batch, maps, rows, columns): wrapped in OnMaps
        seen = F.silu(h) if self.norm is None else self.norm(h)
        return h + self.outer(F.silu(self.inner(seen)))


class SpatialHierarchicalVAE(HierarchicalVAE):
    def __init__(self, config: ModelConfig):
        nn.Module.__init__(self)  # every part differs from the dense model's; its paths and objectives are inherited
        self.config = config
        self.top_prior = None  # its top layer is maps: no fitted prior (models.check_top_mixture)
        spec, width = config.spec, config.hidden[0]
        channels, height, wide = spec.shape
        side = latent_grid(spec.shape)
        halvings = downsamplings(height, wide, most=2)
        area = side[0] * side[1]
        self.sizes = tuple(c * area for c in config.layers)
        self.embed = OnMaps(strided_convolutions(channels, width, width, halvings, transposed=False))
        self.bottom_up = nn.ModuleList(OnMaps(MapCell(width, config.layer_norm)) for _ in config.layers)
        self.start = nn.Parameter(torch.zeros(width, *side))
        self.not_weights = ("start",)  # a learned first state, not a weight: no weight decay
        below_top = config.layers[:-1]  # the top layer's prior is N(0, I)
        self.priors = nn.ModuleList(OnMaps(nn.Conv2d(width, 2 * c, 3, padding=1), flatten=True) for c in below_top)
        self.posteriors = nn.ModuleList(
            OnMaps(nn.Conv2d(2 * width, 2 * c, 3, padding=1), flatten=True) for c in config.layers
        )
        self.merges = nn.ModuleList(ToMaps(c, side, width) for c in config.layers)
        self.top_down = nn.ModuleList(OnMaps(MapCell(width, config.layer_norm)) for _ in config.layers)
        self.out = OnMaps(strided_convolutions(width, width, channels * config.n_params, halvings, True), flatten=True)
        self.out_conv = None
        self._build_context()
        for posterior in self.posteriors:  # the posterior starts as the prior
            nn.init.zeros_(posterior.module.weight)
            nn.init.zeros_(posterior.module.bias)

    def _embedding(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(self._encoder_input(x))

    def _posterior(self, layer: int, h: torch.Tensor, f: torch.Tensor, prior: DiagonalGaussian) -> DiagonalGaussian:
        return _corrected(prior, joined_maps(self.posteriors[layer], h, f))
