"""Bits-back coding with a VAE (Townsend et al. 2019, BB-ANS) on the rANS coder.

Each item costs about its -ELBO in bits: to encode x, pop a latent z from the discretised posterior
q(z|x) (reading bits already on the message: the bits back), push x under p(x|z), then push z under
the discretised prior. Decoding runs every step backwards: pop z under the prior, pop x under p(x|z),
then push z back under q(z|x), which returns the borrowed bits.

A hierarchical model codes its layers in the order they are drawn (BB-ANS on a hierarchy, as in
Kingma et al. 2019's "naive" scheme): encoding pops z_L, ..., z_1 from q(z_l | x, z_>l), top down,
pushes x, then pushes z_1, ..., z_L under p(z_l | z_>l), so that decoding pops the top layer first.

Latents are discretised into 2^latent_bits buckets of equal mass under N(0, 1), so the top prior is
uniform over buckets and its table exact; a conditional prior's table holds its Gaussian's mass per
bucket, as a posterior's does, and the layers below see the buckets' centres. Every table comes from
float64 arithmetic on network outputs snapped to a fixed grid, and the networks see one item at a time
on one thread, on the way in as on the way out, so the decoder rebuilds each table bit for bit on the
same machine.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from vaekit.codec import rans
from vaekit.codec.rans import CodecError
from vaekit.dist import Bernoulli, DiagonalGaussian, DiscretizedLogistic, PixelContext
from vaekit.models import LatentVariableModel

PRECISION = 24  # bits of every frequency table
SNAP = 2.0**-16  # network outputs are rounded to this grid before they make a table
MAX_LANES = 64
VALUES_PER_LANE = 4096  # each lane's final state costs up to 64 bits: few lanes for little data


def lanes_for(values: int) -> int:
    """How many rANS lanes suit a message of this many values: enough to vectorise, few enough that the
    lanes' final states (up to 64 bits each) stay a small part of the message."""
    return max(1, min(MAX_LANES, values // VALUES_PER_LANE))


def quantized_cdf(probs: np.ndarray, precision: int = PRECISION) -> np.ndarray:
    """Integer cumulative tables (rows, alphabet + 1) from probabilities (rows, alphabet): every symbol
    keeps a frequency of at least 1 (so any symbol can be coded) and each row sums to 2^precision."""
    total, alphabet = 1 << precision, probs.shape[1]
    if alphabet > total:
        raise CodecError(f"{alphabet} symbols do not fit a {precision}-bit table")
    probs = probs / probs.sum(1, keepdims=True)
    freqs = 1 + np.floor(probs * (total - alphabet)).astype(np.int64)
    rows = np.arange(len(freqs))
    freqs[rows, probs.argmax(1)] += total - freqs.sum(1)  # the rounding remainder, to the likeliest symbol
    return np.concatenate([np.zeros((len(freqs), 1), np.int64), np.cumsum(freqs, 1)], 1)


def _snap(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t.double() / SNAP) * SNAP


@contextlib.contextmanager
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class BitsBackCodec:
    """Codes items of a model's data (model space: levels or bits) as one rANS message."""

    def __init__(self, model: LatentVariableModel, lanes: int, latent_bits: int = 12):
        if model.config.prior != "normal" or model.conditional:
            raise CodecError("bits-back coding needs an unconditional model with the N(0, I) prior")
        if model.config.likelihood not in ("bernoulli", "discretized_logistic"):
            raise CodecError("only discrete data can be coded losslessly (a Bernoulli or discretised likelihood)")
        if not 1 <= latent_bits <= 16:
            raise CodecError(f"latent_bits must lie in 1..16, got {latent_bits}")
        self.model, self.latent_bits, self.lanes = model.eval(), latent_bits, lanes
        buckets = 1 << latent_bits
        self.edges = torch.special.ndtri(torch.arange(buckets + 1, dtype=torch.float64) / buckets)  # -inf .. inf
        self.centres = torch.special.ndtri((torch.arange(buckets, dtype=torch.float64) + 0.5) / buckets)
        self.alphabet = 2 if model.config.likelihood == "bernoulli" else model.spec.levels

    # --- tables -------------------------------------------------------------------------------------------
    def _latent_cdf(self, gaussian: DiagonalGaussian | None, size: int) -> np.ndarray:
        """Each bucket's mass under one item's Gaussian over a layer of `size` latents; None stands for
        N(0, I), under which every bucket has the same mass."""
        if gaussian is None:
            step = 1 << (PRECISION - self.latent_bits)
            row = np.arange((1 << self.latent_bits) + 1, dtype=np.int64) * step
            return np.broadcast_to(row, (size, len(row)))
        mean, std = _snap(gaussian.mean[0]), torch.exp(0.5 * _snap(gaussian.logvar[0]))
        mass = torch.special.ndtr((self.edges[None, :] - mean[:, None]) / std[:, None]).diff(dim=1)
        return quantized_cdf(mass.clamp_min(0).numpy())

    def _centres(self, buckets: np.ndarray) -> torch.Tensor:
        return self.centres[torch.as_tensor(buckets)].float()[None]

    def _likelihood_cdf(self, likelihood) -> np.ndarray:
        if isinstance(likelihood, Bernoulli):
            p_one = torch.sigmoid(_snap(likelihood.logits[0]).flatten())
            probs = torch.stack([1 - p_one, p_one], 1)
        elif isinstance(likelihood, DiscretizedLogistic):
            loc, log_scale = _snap(likelihood.loc[0]).flatten(), _snap(likelihood.log_scale[0]).flatten()
            levels = self.alphabet
            inner = (torch.arange(levels - 1, dtype=torch.float64) + 0.5) / (levels - 1)  # bin edges
            cdf = torch.sigmoid((inner[None, :] - loc[:, None]) * torch.exp(-log_scale)[:, None])
            ones, zeros = torch.ones(len(loc), 1, dtype=torch.float64), torch.zeros(len(loc), 1, dtype=torch.float64)
            probs = torch.cat([zeros, cdf, ones], 1).diff(dim=1)
        else:
            raise CodecError(f"no table for a {type(likelihood).__name__} likelihood")
        return quantized_cdf(probs.clamp_min(0).numpy())

    # --- pushing and popping whole vectors, `lanes` symbols at a time -----------------------------------
    # The posterior pops of encoding scramble the lanes first, so that they read bits that look uniform
    # (not the previous item's latent, which would tie each latent to the last); the posterior pushes
    # of decoding scramble after, which undoes it.
    def _push(self, message: rans.Message, cdf: np.ndarray, symbols: np.ndarray, scramble: bool = False) -> None:
        for start in range(0, len(symbols), self.lanes):
            part = slice(start, start + self.lanes)
            rows, s = np.arange(len(symbols))[part], symbols[part]
            lanes = slice(0, len(s))
            rans.push(message, cdf[rows, s], cdf[rows, s + 1] - cdf[rows, s], PRECISION, lanes)
            if scramble:
                rans.scramble(message, PRECISION, lanes)

    def _pop(self, message: rans.Message, cdf: np.ndarray, scramble: bool = False) -> np.ndarray:
        symbols = np.zeros(len(cdf), dtype=np.int64)
        for start in reversed(range(0, len(cdf), self.lanes)):
            part = slice(start, start + self.lanes)
            lanes = slice(0, len(cdf[part]))
            if scramble:
                rans.scramble(message, PRECISION, lanes)
            symbols[part] = rans.pop(message, rans.categorical_lookup(cdf[part]), PRECISION, lanes)
        return symbols

    # --- the codec -------------------------------------------------------------------------------------------
    # Layers are numbered bottom (0) to top; the model's `descend` visits them top down. Encoding pops
    # them top down from the posteriors and pushes them bottom up under the priors, so decoding pops
    # them top down from the priors and, once x is back, pushes them bottom up onto the posteriors.
    @torch.no_grad()
    def encode(self, x: torch.Tensor, message: rans.Message | None = None) -> rans.Message:
        """Push items x (n, *shape) in model space (bits or integer levels) onto a message."""
        message = message or rans.Message(self.lanes)
        if message.lanes != self.lanes:
            raise CodecError(f"a message of {message.lanes} lanes does not fit a codec of {self.lanes}")
        if x.shape[1:] != torch.Size(self.model.spec.shape):
            raise CodecError(f"items of shape {tuple(x.shape[1:])} do not fit this model's {self.model.spec.shape}")
        if len(x) and (x.min() < 0 or x.max() >= self.alphabet or (x != x.round()).any()):
            raise CodecError(f"values must be integers in 0..{self.alphabet - 1} for this model")
        with _one_thread():
            for item in x:
                self._encode_item(message, item)
        return message

    @torch.no_grad()
    def decode(self, message: rans.Message, n: int) -> torch.Tensor:
        """Pop n items off a message; the inverse of `encode`, items in their original order."""
        with _one_thread():
            items = [self._decode_item(message) for _ in range(n)]
        items.reverse()
        return torch.stack(items) if items else torch.zeros(0, *self.model.spec.shape)

    def _encode_item(self, message: rans.Message, item: torch.Tensor) -> None:
        sizes, buckets, prior_cdfs = self.model.layer_sizes, {}, {}

        def from_posterior(layer, prior, posterior):
            buckets[layer] = self._pop(message, self._latent_cdf(posterior, sizes[layer]), scramble=True)
            prior_cdfs[layer] = self._latent_cdf(prior, sizes[layer])
            return self._centres(buckets[layer])

        likelihood = self.model.descend(from_posterior, item[None].float())
        if isinstance(likelihood, PixelContext):
            _PixelTables(self.model, likelihood, item).push(message)
        else:
            self._push(message, self._likelihood_cdf(likelihood), item.flatten().long().numpy())
        for layer in range(len(sizes)):
            self._push(message, prior_cdfs[layer], buckets[layer])

    def _decode_item(self, message: rans.Message) -> torch.Tensor:
        sizes, buckets, posterior_cdfs = self.model.layer_sizes, {}, {}

        def from_prior(layer, prior, posterior):
            buckets[layer] = self._pop(message, self._latent_cdf(prior, sizes[layer]))
            return self._centres(buckets[layer])

        def record_posterior(layer, prior, posterior):
            posterior_cdfs[layer] = self._latent_cdf(posterior, sizes[layer])
            return self._centres(buckets[layer])

        likelihood = self.model.descend(from_prior)
        if isinstance(likelihood, PixelContext):
            item = _PixelTables(self.model, likelihood).pop(message)
        else:
            values = self._pop(message, self._likelihood_cdf(likelihood))
            item = torch.as_tensor(values, dtype=torch.float32).view(self.model.spec.shape)
        self.model.descend(record_posterior, item[None])
        for layer in range(len(sizes)):
            self._push(message, posterior_cdfs[layer], buckets[layer], scramble=True)
        return item


class _PixelTables:
    """One item's data, coded pixel by pixel under a likelihood with a pixel context.

    The encoder knows every pixel, the decoder only those before the current one, and both must build
    each pixel's table bit for bit alike. So the context's weighted sums are exact: weights snapped to
    the SNAP grid (and bounded) times integer values add up without rounding in float64, in any order;
    and each pixel's table comes from the same NumPy calls, on arrays of the same shapes, on both sides.
    Pixels go in raster order on the way out, so the encoder pushes them in reverse; each value takes a
    lane of its own in turn.
    """

    MAX_WEIGHT = 2.0**8  # |weight| / SNAP * value < 2^40, and up to 2^7 of those sum exactly in float64

    def __init__(self, model: LatentVariableModel, likelihood: PixelContext, item: torch.Tensor | None = None):
        causal, base = model.causal, likelihood.base
        self.channels, self.height, self.width = model.spec.shape
        weight = _snap(causal.masked_weight.detach()).numpy()
        if not np.abs(weight).max(initial=0.0) < self.MAX_WEIGHT:
            raise CodecError("the pixel context's weights are too large to code exactly")
        self.radius = r = causal.radius
        self.taps = np.argwhere(causal.mask.numpy() > 0)  # (taps, 2): kernel rows and columns before the centre
        self.weight = weight[:, :, self.taps[:, 0], self.taps[:, 1]].reshape(self.channels, -1)
        # the model's context sees x as the encoder does: scale * x - 1, and zero outside the image
        self.scale = 2.0 if isinstance(base, Bernoulli) else 2.0 / (model.spec.levels - 1)
        shape = (self.channels, self.height + 2 * r, self.width + 2 * r)
        self.canvas, self.inside = np.zeros(shape), np.zeros(shape)
        self.inside[:, r : r + self.height, r : r + self.width] = 1.0
        if item is not None:
            self.canvas[:, r : r + self.height, r : r + self.width] = item.double().numpy()
        if isinstance(base, Bernoulli):
            self.params, self.levels = (_snap(base.logits[0]).numpy(),), 0
        else:
            self.params = (_snap(base.loc[0]).numpy(), _snap(base.log_scale[0]).numpy())
            self.levels = base.levels

    @np.errstate(over="ignore")  # exp overflowing to inf gives the right probability, 0
    def _cdf(self, row: int, col: int) -> np.ndarray:
        window = (slice(None), self.taps[:, 0] + row, self.taps[:, 1] + col)
        weighted_values = self.weight @ self.canvas[window].reshape(-1)  # exact: see the class notes
        weighted_inside = self.weight @ self.inside[window].reshape(-1)
        shift = self.scale * weighted_values - weighted_inside
        if not self.levels:
            p_one = 1.0 / (1.0 + np.exp(-(self.params[0][:, row, col] + shift)))
            return quantized_cdf(np.stack([1.0 - p_one, p_one], 1))
        loc, log_scale = self.params[0][:, row, col] + shift, self.params[1][:, row, col]
        inner = (np.arange(self.levels - 1) + 0.5) / (self.levels - 1)
        cdf = 1.0 / (1.0 + np.exp(-(inner[None, :] - loc[:, None]) * np.exp(-log_scale)[:, None]))
        edges = np.concatenate([np.zeros((self.channels, 1)), cdf, np.ones((self.channels, 1))], 1)
        return quantized_cdf(np.diff(edges, axis=1).clip(0))

    def _lane(self, row: int, col: int, channel: int, lanes: int) -> slice:
        lane = ((row * self.width + col) * self.channels + channel) % lanes
        return slice(lane, lane + 1)

    def push(self, message: rans.Message) -> None:
        r = self.radius
        for row in reversed(range(self.height)):
            for col in reversed(range(self.width)):
                cdf = self._cdf(row, col)
                for channel in reversed(range(self.channels)):
                    value = int(self.canvas[channel, r + row, r + col])
                    start, end = cdf[channel, value], cdf[channel, value + 1]
                    rans.push(message, [start], [end - start], PRECISION, self._lane(row, col, channel, message.lanes))

    def pop(self, message: rans.Message) -> torch.Tensor:
        r = self.radius
        for row in range(self.height):
            for col in range(self.width):
                cdf = self._cdf(row, col)
                for channel in range(self.channels):
                    lookup = rans.categorical_lookup(cdf[channel : channel + 1])
                    lanes = self._lane(row, col, channel, message.lanes)
                    self.canvas[channel, r + row, r + col] = rans.pop(message, lookup, PRECISION, lanes)[0]
        return torch.as_tensor(self.canvas[:, r : r + self.height, r : r + self.width], dtype=torch.float32)
