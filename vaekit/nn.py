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


def latent_grid(shape: tuple[int, ...]) -> tuple[int, int]:
    """The sides of the latent maps of images of `shape` (channels, height, width): up to two halvings."""
    _, height, width = shape
    n = downsamplings(height, width, most=2)
    return height >> n, width >> n


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


class SubPixelConvTranspose2d(nn.ConvTranspose2d):
    """A stride-2 4x4 transposed convolution with padding 1, the same function of the same parameters,
    computed as a 3x3 convolution to four times the channels (one per output phase) and a pixel shuffle
    (Shi et al. 2016). oneDNN runs that form faster when the outputs are few: 16 -> 1 channels, 14x14 ->
    28x28, a forward pass in about half the time, a training step's in 0.8 (2 threads, channels-last);
    with as many outputs as inputs the transposed form was faster."""

    def __init__(self, inputs: int, outputs: int):
        super().__init__(inputs, outputs, 4, stride=2, padding=1)
        # output row 2i + a takes input row i + d through kernel row a + 1 - 2d (d = -1, 0, 1), a zero
        # where that row is outside 0..3: indices into the kernel padded by one zero row on each side
        taps = torch.tensor([[a + 4 - 2 * j for j in range(3)] for a in range(2)])
        self.register_buffer("taps", taps, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(self.weight, (1, 1, 1, 1))  # (in, out, 6, 6)
        phases = padded[:, :, self.taps][..., self.taps]  # (in, out, a, row tap, b, column tap)
        weight = phases.permute(1, 2, 4, 0, 3, 5).reshape(4 * self.out_channels, self.in_channels, 3, 3)
        bias = None if self.bias is None else self.bias.repeat_interleave(4)
        return F.pixel_shuffle(F.conv2d(x, weight, bias, padding=1), 2)


def strided_convolutions(inputs: int, width: int, outputs: int, halvings: int, transposed: bool) -> nn.Sequential:
    """`halvings` stride-2 4x4 convolutions (transposed: doublings) from `inputs` channels through
    `width` to `outputs`, with a SiLU between them."""
    if halvings == 0:  # sides too small or odd to halve: one convolution at full size
        return nn.Sequential(nn.Conv2d(inputs, outputs, 3, padding=1))
    layers: list[nn.Module] = []
    for i in range(halvings):
        into, out = inputs if i == 0 else width, outputs if i == halvings - 1 else width
        if not transposed:
            layers.append(nn.Conv2d(into, out, 4, stride=2, padding=1))
        elif 4 * out <= into:
            layers.append(SubPixelConvTranspose2d(into, out))
        else:
            layers.append(nn.ConvTranspose2d(into, out, 4, stride=2, padding=1))
        layers.append(nn.SiLU())
    return nn.Sequential(*layers[:-1])


def patch_embedding(inputs: int, outputs: int, halvings: int) -> nn.Sequential:
    """What `halvings` strided convolutions do, by patches: each 2^halvings-pixel square becomes one position's
    channels (a pixel unshuffle), mapped to `outputs` channels by a 1x1 convolution."""
    side = 1 << halvings
    return nn.Sequential(nn.PixelUnshuffle(side), nn.Conv2d(inputs * side * side, outputs, 1))


class ConvHead(nn.Module):
    """Convolutions (weights shared across the image) from a vector to `n_params` numbers per data element,
    flat like a dense layer's output. A hierarchical model adds them to its dense output layer; their last
    layer starts at zero, so the model starts as without them.

    Transposed convolutions double the maps' sides to the image's; with `patches`, one 3x3 convolution on
    the small maps gives each position its patch of pixels' numbers, which a pixel shuffle lays out: the
    hybrid model's training step took 0.8 times as long so (with `patch_embedding` for its map layer; 2 threads,
    benchmarks/step_speed.py)."""

    def __init__(self, width: int, shape: tuple[int, ...], n_params: int, maps: int = 16, patches: bool = False):
        super().__init__()
        c, h, w = shape
        n = downsamplings(h, w, most=2)  # two halvings: 28x28 starts at 7x7
        self.start = (maps, h >> n, w >> n)
        self.head = nn.Linear(width, math.prod(self.start))
        if patches:  # each map position gives the numbers of its side x side square of pixels
            side = 1 << n
            last = nn.Conv2d(maps, c * n_params * side * side, 3, padding=1)
            self.conv = nn.Sequential(nn.SiLU(), last, nn.PixelShuffle(side))
        else:
            self.conv = nn.Sequential(nn.SiLU(), *strided_convolutions(maps, maps, c * n_params, n, transposed=True))
            last = self.conv[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """(..., width) -> (..., n_params * channels * height * width), flat like a dense layer's output."""
        return self.from_maps(self.head(h).reshape(*h.shape[:-1], *self.start))

    def from_maps(self, maps: torch.Tensor) -> torch.Tensor:
        """The convolutions alone, from (..., *start) maps to flat outputs."""
        # channels-last: oneDNN ran the transposed convolutions 1.4-1.9 times as fast so (16 maps, 2 threads)
        out = self.conv(maps.reshape(-1, *self.start).contiguous(memory_format=torch.channels_last))
        return out.reshape(*maps.shape[:-3], -1)


class CausalContext(nn.Module):
    """A function of the pixels before each one in raster order (PixelCNN's mask A, Van den Oord et al.
    2016: all channels of the earlier pixels within `radius`, none of the pixel's own) that adjusts each
    pixel's likelihood parameters. It ends in zeros, so a model starts with independent pixels.

    Linear (`hidden` = 0): a masked convolution shifts each pixel's logit or location. With `hidden` units:
    a masked convolution to the units plus a 1x1 map of the pixel's own parameters (what z says of it),
    clipped to [0, MAX_ACTIVATION], then a 1x1 map to adjustments of every parameter (location and scale).
    Clipping and bounded features keep the codec's arithmetic exact (see `codec.bitsback`).
    """

    MAX_ACTIVATION = 255.0
    FEATURE_BOUND = 128.0  # the pixel's own parameters, as the hidden units see them

    def __init__(self, channels: int, radius: int, hidden: int = 0, n_params: int = 1):
        super().__init__()
        size = 2 * radius + 1
        self.radius, self.hidden, self.n_params = radius, hidden, n_params
        mask = torch.ones(size, size)
        mask[radius, radius:] = 0  # the pixel itself and those after it on its row
        mask[radius + 1 :] = 0  # the rows below
        self.register_buffer("mask", mask, persistent=False)
        # the earlier pixels' places in the kernel, as the mask has them (plain numbers: models load on "meta")
        taps = [(row, col) for row in range(radius + 1) for col in range(size) if row < radius or col < radius]
        self.tap_rows, self.tap_cols = [row for row, _ in taps], [col for _, col in taps]
        if not hidden:
            self.weight = nn.Parameter(torch.zeros(channels, channels, size, size))
            return
        taps = (size * radius + radius) * channels  # the earlier pixels' values the units see
        self.weight = nn.Parameter(torch.randn(hidden, channels, size, size) / math.sqrt(taps))
        self.bias = nn.Parameter(torch.zeros(hidden))
        self.from_params = nn.Parameter(torch.randn(hidden, n_params * channels) / math.sqrt(n_params * channels))
        self.out = nn.Parameter(torch.zeros(n_params * channels, hidden))
        self.out_bias = nn.Parameter(torch.zeros(n_params * channels))

    @property
    def masked_weight(self) -> torch.Tensor:
        return self.weight * self.mask

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """x: (..., channels, height, width) in the encoder's input scale; params: the likelihood's own
        (..., n_params, channels, height, width). The adjustments, (..., n_params or 1 if linear, C, H, W),
        broadcast over both inputs' leading dimensions."""
        item, lead = x.shape[-3:], x.shape[:-3]
        (c, h, w), r = item, self.radius
        padded = F.pad(x.reshape(-1, *item), (r, r, r, 0))  # no row below is ever seen
        if not self.hidden:
            # one logit out: a convolution takes a third of the time of the stacked taps' product below, forward
            # and backward (batch 256, 2 threads, 2026-12-08); the kernel stops at the pixel's own row
            return F.conv2d(padded, self.masked_weight[:, :, : r + 1]).reshape(*lead, 1, *item)
        # hidden units: the masked convolution and the 1x1 maps as matrix products on channels-last rows; as
        # convolutions (1 channel to 32 units, 2 threads, torch 2.13 CPU) the context's forward and backward took
        # 2.5 times as long, as long as the rest of the hybrid model's training step
        taps = zip(self.tap_rows, self.tap_cols, strict=True)
        shifted = [padded[:, :, row : row + h, col : col + w] for row, col in taps]
        earlier = torch.stack(shifted, dim=-1).movedim(1, -2).reshape(-1, h * w, c * len(shifted))
        seen = earlier @ self.weight[:, :, self.tap_rows, self.tap_cols].flatten(1).T  # (N, H * W, hidden)
        own = params.clamp(-self.FEATURE_BOUND, self.FEATURE_BOUND).flatten(-4, -3).flatten(-2).transpose(-2, -1)
        own = torch.addmm(self.bias, own.reshape(-1, own.shape[-1]), self.from_params.T)
        own = own.view(*params.shape[:-4], item[1] * item[2], self.hidden)  # (..., height * width, hidden)
        units = F.hardtanh(seen.view(*lead, *seen.shape[1:]) + own, 0.0, self.MAX_ACTIVATION)
        out = torch.addmm(self.out_bias, units.reshape(-1, self.hidden), self.out.T)
        return out.view(*units.shape[:-1], -1).transpose(-1, -2).reshape(*units.shape[:-2], self.n_params, *item)
