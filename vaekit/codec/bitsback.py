"""Bits-back coding with a VAE (Townsend et al. 2019, BB-ANS) on the rANS coder.

Each item costs about its -ELBO in bits: to encode x, pop a latent z from the discretised posterior
q(z|x) (reading bits already on the message: the bits back), push x under p(x|z), then push z under
the discretised prior. Decoding runs every step backwards: pop z under the prior, pop x under p(x|z),
then push z back under q(z|x), which returns the borrowed bits.

Latents are discretised into 2^latent_bits buckets of equal mass under the N(0, I) prior, so the prior
is uniform over buckets and its table exact. Every table comes from float64 arithmetic on network
outputs snapped to a fixed grid, and the networks see one item at a time on one thread, on the way in
as on the way out, so the decoder rebuilds each table bit for bit on the same machine.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from vaekit.codec import rans
from vaekit.codec.rans import CodecError
from vaekit.dist import Bernoulli, DiscretizedLogistic
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
        if model.config.prior != "normal" or model.config.layers or model.conditional:
            raise CodecError("bits-back coding needs a one-layer, unconditional model with the N(0, I) prior")
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
    def _posterior_cdf(self, x: torch.Tensor) -> np.ndarray:
        q = self.model.encode(x[None].float())
        mean, std = _snap(q.mean[0]), torch.exp(0.5 * _snap(q.logvar[0]))
        mass = torch.special.ndtr((self.edges[None, :] - mean[:, None]) / std[:, None]).diff(dim=1)
        return quantized_cdf(mass.clamp_min(0).numpy())

    def _prior_cdf(self) -> np.ndarray:
        step = 1 << (PRECISION - self.latent_bits)
        row = np.arange((1 << self.latent_bits) + 1, dtype=np.int64) * step
        return np.broadcast_to(row, (self.model.latent_dim, len(row)))

    def _likelihood_cdf(self, buckets: np.ndarray) -> np.ndarray:
        z = self.centres[torch.as_tensor(buckets)].float()
        likelihood = self.model.decode(z[None])
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
                buckets = self._pop(message, self._posterior_cdf(item), scramble=True)
                self._push(message, self._likelihood_cdf(buckets), item.flatten().long().numpy())
                self._push(message, self._prior_cdf(), buckets)
        return message

    @torch.no_grad()
    def decode(self, message: rans.Message, n: int) -> torch.Tensor:
        """Pop n items off a message; the inverse of `encode`, items in their original order."""
        items = []
        with _one_thread():
            for _ in range(n):
                buckets = self._pop(message, self._prior_cdf())
                values = self._pop(message, self._likelihood_cdf(buckets))
                item = torch.as_tensor(values, dtype=torch.float32).view(self.model.spec.shape)
                self._push(message, self._posterior_cdf(item), buckets, scramble=True)
                items.append(item)
        items.reverse()
        return torch.stack(items) if items else torch.zeros(0, *self.model.spec.shape)
