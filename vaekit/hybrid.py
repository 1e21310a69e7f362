"""The hybrid hierarchical VAE (--arch hybrid): the dense hierarchical model with --arch conv's output
path, whose maps get one more latent layer, at the bottom of the hierarchy.

    bottom-up:  x -> f_1 .. f_L as in `hierarchical`;  x -> two stride-2 convolutions -> cell -> m  (maps)
                (with `patches`: x's 4x4 patches as channels -> 1x1 convolution -> cell -> m)
    top-down:   h <- the dense top-down path over z_L .. z_1 (`hierarchical`)
                g <- the conv output path's maps from h (a dense layer, C maps at a quarter of the side)
                p(z_0 | z_>0) from a 3x3 convolution of g
                q(z_0 | x, z_>0) = p + a 3x3 convolution of (g, m), zero at the start
                g <- cell(g + 1x1 convolution of z_0)
                p(x | z) from h (dense layer) + g (the conv path's two transposed convolutions; with
                `patches`, a 3x3 convolution to each position's 4x4 patch of pixels)

The dense layers carry the image's global structure, which latent maps alone learned slowly (--arch
spatial); the map layer, local detail, in weights shared across the image. `layers` are the map layer's
channels, then the dense layers' sizes, bottom to top: 4,32,32,16,16,8,8 is 4 maps of 7x7 under six
dense layers on 28x28 images. Latents stay flat at the model's interface: z_0 (channel-major), then
z_1 .. z_L.

With `noise_maps` the map layer has no posterior: q(z_0 | x, z_>0) is p(z_0 | z_>0), so z_0 is noise that
the output path learns to use (its KL is zero; importance sampling integrates it out), and there is no
bottom-up map path. Trained on binarised Fashion-MNIST, the map layer's posterior had collapsed to its
prior anyway (0.00 nats of KL on test images after 30 minutes), and the step without it takes 0.78-0.84
times as long (benchmarks/step_speed.py: 2 threads, bf16, batch 256).
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from vaekit.dist import DiagonalGaussian
from vaekit.hierarchical import HierarchicalVAE, _corrected, _gaussian, joined_linear
from vaekit.models import ModelConfig
from vaekit.nn import downsamplings, patch_embedding, strided_convolutions
from vaekit.spatial import MapCell, OnMaps, ToMaps, joined_maps


class HybridHierarchicalVAE(HierarchicalVAE):
    def __init__(self, config: ModelConfig):
        map_channels, dense_sizes = config.layers[0], config.layers[1:]
        # the dense model and its conv output path, then the map layer between that path's maps and convolutions
        super().__init__(dataclasses.replace(config, arch="conv", layers=dense_sizes, latent_dim=sum(dense_sizes)))
        self.config = config
        channels, height, width = config.spec.shape
        maps, side = self.out_conv.start[0], self.out_conv.start[1:]
        self.sizes = (map_channels * math.prod(side), *dense_sizes)
        # the map layer's posterior and the bottom-up path it sees; built in the order they always were, so that a
        # seed gives a hybrid without noise maps the weights it had before they existed
        inference = not config.noise_maps
        if inference:
            halvings = downsamplings(height, width, most=2)
            if config.patches:
                self.map_embed = OnMaps(patch_embedding(channels, maps, halvings))
            else:
                self.map_embed = OnMaps(strided_convolutions(channels, maps, maps, halvings, transposed=False))
            self.map_bottom_up = OnMaps(MapCell(maps, config.layer_norm))
        self.map_prior = OnMaps(nn.Conv2d(maps, 2 * map_channels, 3, padding=1), flatten=True)
        if inference:
            self.map_posterior = OnMaps(nn.Conv2d(2 * maps, 2 * map_channels, 3, padding=1), flatten=True)
            nn.init.zeros_(self.map_posterior.module.weight)  # the posterior starts as the prior
            nn.init.zeros_(self.map_posterior.module.bias)
        self.map_merge = ToMaps(map_channels, side, maps)
        self.map_top_down = OnMaps(MapCell(maps, config.layer_norm))

    # layer 0 is the map layer; layer l > 0 is the dense model's layer l - 1
    def _features(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        if self.config.noise_maps:
            return [None, *super()._features(x)]
        maps = self.map_bottom_up(self.map_embed(self._encoder_input(x)))
        return [maps, *super()._features(x)]

    def _prior(self, layer: int, h: torch.Tensor) -> DiagonalGaussian:
        if layer == 0:
            return _gaussian(self.map_prior(h))
        if layer == len(self.sizes) - 1:
            return super()._prior(layer, h)  # N(0, I)
        return _gaussian(self.priors[layer - 1](h))

    def _posterior(
        self, layer: int, h: torch.Tensor, f: torch.Tensor | None, prior: DiagonalGaussian
    ) -> DiagonalGaussian:
        if layer == 0:
            if self.config.noise_maps:
                return prior
            return _corrected(prior, joined_maps(self.map_posterior, h, f))
        return _corrected(prior, joined_linear(self.posteriors[layer - 1], h, f))

    def _descend(self, lead: tuple[int, ...], choose) -> tuple[torch.Tensor, torch.Tensor]:
        """The dense path, then the map layer; returns the final dense state and maps."""
        h = self.start.expand(*lead, *self.start.shape)
        for layer in reversed(range(1, len(self.sizes))):
            z = choose(layer, h, self._prior(layer, h))
            h = self.top_down[layer - 1](h + self.merges[layer - 1](z.to(h.dtype)))
        maps = self.out_conv.head(h).view(*self._lead(h), *self.out_conv.start)  # z's may outnumber `lead`
        z = choose(0, maps, self._prior(0, maps))
        return h, self.map_top_down(maps + self.map_merge(z.to(maps.dtype)))

    def _likelihood_of(self, state: tuple[torch.Tensor, torch.Tensor]):
        h, maps = state
        return self._likelihood(
            (self.out(h) + self.out_conv.from_maps(maps)).view(*self._lead(h), -1, *self.spec.shape)
        )
