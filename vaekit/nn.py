"""Building blocks: MLP and convolutional encoders/decoders, sized from the data shape.

An encoder maps x (batch, *shape) to 2 * latent_dim numbers (mean and log-variance).
A decoder maps z (..., latent_dim) to `n_params` numbers per data element, shaped (..., n_params, *shape).
Both take an optional `extra` input (a conditional model's one-hot labels), joined to the first dense layer.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _join(h: torch.Tensor, extra: torch.Tensor | None) -> torch.Tensor:
    return h if extra is None else torch.cat([h, extra], -1)


class MLPEncoder(nn.Module):
    def __init__(self, shape: tuple[int, ...], latent_dim: int, hidden: tuple[int, ...], extra: int = 0):
        super().__init__()
        self.net = _mlp([math.prod(shape) + extra, *hidden, 2 * latent_dim])

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(_join(x.flatten(1), extra))


class MLPDecoder(nn.Module):
    def __init__(self, shape: tuple[int, ...], latent_dim: int, hidden: tuple[int, ...], n_params: int, extra: int = 0):
        super().__init__()
        self.shape, self.n_params = shape, n_params
        self.net = _mlp([latent_dim + extra, *reversed(hidden), n_params * math.prod(shape)])

    def forward(self, z: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        return self.net(_join(z, extra)).view(*z.shape[:-1], self.n_params, *self.shape)


def downsamplings(height: int, width: int, most: int = 3) -> int:
    """How many stride-2 halvings keep both sides whole and at least 4 pixels."""
    n = 0
    while n < most and height % 2 == 0 and width % 2 == 0 and height >= 8 and width >= 8:
        height, width, n = height // 2, width // 2, n + 1
    return n


class ConvEncoder(nn.Module):
    def __init__(
        self, shape: tuple[int, ...], latent_dim: int, hidden: tuple[int, ...], extra: int = 0, channels: int = 32
    ):
        super().__init__()
        c, h, w = shape
        n = downsamplings(h, w)
        layers: list[nn.Module] = [nn.Conv2d(c, channels, 3, padding=1), nn.ReLU()]
        for i in range(n):
            layers += [nn.Conv2d(channels << i, channels << (i + 1), 4, stride=2, padding=1), nn.ReLU()]
        self.conv = nn.Sequential(*layers, nn.Flatten())
        flat = (channels << n) * (h >> n) * (w >> n)
        self.head = _mlp([flat + extra, *hidden, 2 * latent_dim])

    def forward(self, x: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(_join(self.conv(x), extra))


class ConvDecoder(nn.Module):
    def __init__(
        self,
        shape: tuple[int, ...],
        latent_dim: int,
        hidden: tuple[int, ...],
        n_params: int,
        extra: int = 0,
        channels: int = 32,
    ):
        super().__init__()
        c, h, w = shape
        n = downsamplings(h, w)
        self.shape, self.n_params = shape, n_params
        self.start = (channels << n, h >> n, w >> n)
        self.head = _mlp([latent_dim + extra, *reversed(hidden), math.prod(self.start)])
        layers: list[nn.Module] = []
        for i in reversed(range(n)):
            layers += [nn.ReLU(), nn.ConvTranspose2d(channels << (i + 1), channels << i, 4, stride=2, padding=1)]
        layers += [nn.ReLU(), nn.Conv2d(channels, c * n_params, 3, padding=1)]
        self.conv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        out = self.conv(self.head(_join(z, extra)).view(-1, *self.start))
        return out.view(*z.shape[:-1], self.n_params, *self.shape)


class CausalContext(nn.Module):
    """A convolution over the pixels before each one in raster order (PixelCNN's mask A, Van den Oord et
    al. 2016): all channels of the earlier pixels within `radius`, none of the pixel's own. Its output
    shifts each pixel's logit or location; it starts at zero, so a model starts with independent pixels.
    """

    def __init__(self, channels: int, radius: int):
        super().__init__()
        size = 2 * radius + 1
        self.radius = radius
        self.weight = nn.Parameter(torch.zeros(channels, channels, size, size))
        mask = torch.ones(size, size)
        mask[radius, radius:] = 0  # the pixel itself and those after it on its row
        mask[radius + 1 :] = 0  # the rows below
        self.register_buffer("mask", mask, persistent=False)

    @property
    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., channels, height, width) in the encoder's input scale; the shift, of the same shape."""
        flat = x.reshape(-1, *x.shape[-3:])
        return F.conv2d(flat, self.masked_weight, padding=self.radius).view(x.shape)
