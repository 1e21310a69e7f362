"""Bits-back coding with a VAE (Townsend et al. 2019, BB-ANS) on the rANS coder.

Each item costs about its -ELBO in bits: to encode x, pop a latent z from the discretised posterior
q(z|x) (reading bits already on the message: the bits back), push x under p(x|z), then push z under
the discretised prior. Decoding runs every step backwards: pop z under the prior, pop x under p(x|z),
then push z back under q(z|x), which returns the borrowed bits.

A hierarchical model codes its layers in the order they are drawn (BB-ANS on a hierarchy, as in
Kingma et al. 2019's "naive" scheme): encoding pops z_L, ..., z_1 from q(z_l | x, z_>l), top down,
pushes x, then pushes z_1, ..., z_L under p(z_l | z_>l), so that decoding pops the top layer first.

Items are coded in `lanes` interleaved chains, one per rANS lane: item i goes to chain i % lanes, and
each step codes one item of every chain at once, so that the networks see a batch and every push or
pop is one vectorised call over the chains. A decoder runs the steps in reverse on the same batches.
The first step is staggered: its items go one at a time, each on its own lane, so that every chain but
the first pops its first latents from words the earlier items put on the shared tail (bits it gets
back) rather than from the zeros an empty message lends (bits it does not).

Latents are discretised into 2^latent_bits buckets of equal mass under N(0, 1), so the top prior is
uniform over buckets and its table exact; a conditional prior's table holds its Gaussian's mass per
bucket, as a posterior's does, and the layers below see the buckets' centres. Every table comes from
float64 arithmetic on network outputs snapped to a fixed grid, and the networks see the same batches
on one thread, on the way in as on the way out, so the decoder rebuilds each table bit for bit on the
same machine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import torch

from vaekit.codec import rans
from vaekit.codec.rans import CodecError
from vaekit.dist import (
    MIN_LOG_SCALE,
    Bernoulli,
    DiagonalGaussian,
    DiscretizedLogistic,
    DiscretizedLogisticMixture,
    PixelContext,
    own_params,
)
from vaekit.models import LatentVariableModel
from vaekit.nn import CausalContext

PRECISION = 24  # bits of every frequency table
SNAP = 2.0**-16  # network outputs are rounded to this grid before they make a table
MAX_LANES = 64
VALUES_PER_LANE = 4096  # each lane's final state costs up to 64 bits: few lanes for little data


def lanes_for(values: int) -> int:
    """How many rANS lanes (chains) suit a message of this many values: enough to vectorise, few enough
    that the lanes' final states (up to 64 bits each) stay a small part of the message."""
    return max(1, min(MAX_LANES, values // VALUES_PER_LANE))


def quantized_cdf(probs: np.ndarray, precision: int = PRECISION) -> np.ndarray:
    """Integer cumulative tables (..., alphabet + 1) from probabilities (..., alphabet): every symbol
    keeps a frequency of at least 1 (so any symbol can be coded) and each table sums to 2^precision."""
    total, alphabet = 1 << precision, probs.shape[-1]
    if alphabet > total:
        raise CodecError(f"{alphabet} symbols do not fit a {precision}-bit table")
    probs = probs / probs.sum(-1, keepdims=True)
    freqs = 1 + np.floor(probs * (total - alphabet)).astype(np.int64)
    likeliest = probs.argmax(-1)[..., None]  # takes the rounding remainder
    remainder = total - freqs.sum(-1, keepdims=True)
    np.put_along_axis(freqs, likeliest, np.take_along_axis(freqs, likeliest, -1) + remainder, -1)
    return np.concatenate([np.zeros((*freqs.shape[:-1], 1), np.int64), np.cumsum(freqs, -1)], -1)


def _tables(probs_of, rows: int, alphabet: int) -> np.ndarray:
    """quantized_cdf of `rows` rows of probabilities, built a block of rows at a time (`probs_of(block)`
    gives the block's probabilities) so that the temporaries stay in cache: a step's tables for 64
    chains would otherwise take hundreds of megabytes per pass."""
    out = np.empty((rows, alphabet + 1), np.int64)
    per_block = max(1, (1 << 18) // alphabet)
    for start in range(0, rows, per_block):
        block = slice(start, start + per_block)
        out[block] = quantized_cdf(np.asarray(probs_of(block)))
    return out


# The likelihoods' tables, in NumPy float64 for both coders (the pixel-context coder's shifts live in NumPy).
# exp overflowing to inf gives the right probability, 0.
@np.errstate(over="ignore")
def _bernoulli_probs(logits: np.ndarray) -> np.ndarray:
    """(..., 2): the probabilities of 0 and 1."""
    p_one = 1.0 / (1.0 + np.exp(-logits))
    return np.stack([1.0 - p_one, p_one], -1)


@np.errstate(over="ignore")
def _logistic_probs(loc: np.ndarray, log_scale: np.ndarray, levels: int) -> np.ndarray:
    """(..., levels): each level's mass under a logistic on [0, 1] whose bins are 1 / (levels - 1) wide,
    the outer two open to infinity (the discretised logistic of `vaekit.dist`)."""
    inner = (np.arange(levels - 1) + 0.5) / (levels - 1)  # the bins' edges
    cdf = 1.0 / (1.0 + np.exp(-(inner - loc[..., None]) * np.exp(-log_scale)[..., None]))
    zeros, ones = np.zeros((*loc.shape, 1)), np.ones((*loc.shape, 1))
    return np.diff(np.concatenate([zeros, cdf, ones], -1), axis=-1).clip(0)


def _mixture_probs(logits: np.ndarray, loc: np.ndarray, log_scale: np.ndarray, levels: int) -> np.ndarray:
    """Each level's mass under a mixture of discretised logistics: parameters (..., components)."""
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    return (weights[..., None] * _logistic_probs(loc, log_scale, levels)).sum(-2)


def _snap(t: torch.Tensor) -> torch.Tensor:
    return torch.round(t.double() / SNAP) * SNAP


def _snap_array(a: np.ndarray) -> np.ndarray:
    return np.round(a / SNAP) * SNAP


def _bounded(weight: torch.Tensor, bound: float) -> np.ndarray:
    """Weights snapped to the grid, refused beyond `bound`, where sums of their products stop being exact."""
    snapped = _snap(weight.detach()).numpy()
    if not np.abs(snapped).max(initial=0.0) < bound:
        raise CodecError("the pixel context's weights are too large to code exactly")
    return snapped


@contextlib.contextmanager
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _ignore(items: int) -> None:
    pass


def _push(message: rans.Message, cdf: np.ndarray, symbols: np.ndarray, lane: int, scramble: bool = False) -> None:
    """Push symbols (chains, n) under tables (chains, n, alphabet + 1), one position of every chain per
    call. The posterior pops of encoding scramble the lanes first, so that they read bits that look
    uniform (not the last item's latent, which would tie each latent to it); the posterior pushes of
    decoding scramble after, which undoes it. The chains are the lanes from `lane` on."""
    lanes, chains = slice(lane, lane + len(symbols)), np.arange(len(symbols))
    for position in range(symbols.shape[1]):
        s = symbols[:, position]
        starts = cdf[chains, position, s]
        rans.push(message, starts, cdf[chains, position, s + 1] - starts, PRECISION, lanes)
        if scramble:
            rans.scramble(message, PRECISION, lanes)


def _pop(message: rans.Message, cdf: np.ndarray, lane: int, scramble: bool = False) -> np.ndarray:
    """The inverse of `_push`: symbols (chains, n) under tables (chains, n, alphabet + 1)."""
    lanes = slice(lane, lane + len(cdf))
    symbols = np.zeros(cdf.shape[:2], dtype=np.int64)
    for position in reversed(range(cdf.shape[1])):
        if scramble:
            rans.scramble(message, PRECISION, lanes)
        symbols[:, position] = rans.pop(message, rans.categorical_lookup(cdf[:, position]), PRECISION, lanes)
    return symbols


class BitsBackCodec:
    """Codes items of a model's data (model space: levels or bits) as one rANS message of `lanes` chains."""

    def __init__(self, model: LatentVariableModel, lanes: int, latent_bits: int = 12):
        config = model.config
        if config.prior != "normal" or model.conditional or config.top_mixture or config.learned_prior:
            raise CodecError(
                "bits-back coding needs an unconditional model with the N(0, I) prior (no --fit-prior, --learned-prior)"
            )
        if model.config.likelihood not in ("bernoulli", "discretized_logistic"):
            raise CodecError("only discrete data can be coded losslessly (a Bernoulli or discretised likelihood)")
        if not 1 <= latent_bits <= 16:
            raise CodecError(f"latent_bits must lie in 1..16, got {latent_bits}")
        self.model, self.latent_bits, self.lanes = model.eval(), latent_bits, lanes
        buckets = 1 << latent_bits
        self.edges = torch.special.ndtri(torch.arange(buckets + 1, dtype=torch.float64) / buckets)  # -inf .. inf
        self.centres = torch.special.ndtri((torch.arange(buckets, dtype=torch.float64) + 0.5) / buckets)
        self.alphabet = 2 if model.config.likelihood == "bernoulli" else model.spec.levels
        causal = getattr(model, "causal", None)
        self.context = None if causal is None else _ContextWeights(causal)

    # --- tables, one row per chain ---------------------------------------------------------------------------
    def _latent_cdf(self, gaussian: DiagonalGaussian | None, chains: int, size: int) -> np.ndarray:
        """Each bucket's mass under each chain's Gaussian over a layer of `size` latents; None stands for
        N(0, I), under which every bucket has the same mass."""
        if gaussian is None:
            step = 1 << (PRECISION - self.latent_bits)
            row = np.arange((1 << self.latent_bits) + 1, dtype=np.int64) * step
            return np.broadcast_to(row, (chains, size, len(row)))
        mean, std = _snap(gaussian.mean).flatten(), torch.exp(0.5 * _snap(gaussian.logvar)).flatten()

        def mass(block):
            return torch.special.ndtr((self.edges - mean[block, None]) / std[block, None]).diff(dim=-1).clamp_min(0)

        return _tables(mass, len(mean), len(self.centres)).reshape(chains, size, -1)

    def _centres(self, buckets: np.ndarray) -> torch.Tensor:
        return self.centres[torch.as_tensor(buckets)].float()

    def _likelihood_cdf(self, likelihood) -> np.ndarray:
        """Tables (chains, values per item, alphabet + 1)."""
        if isinstance(likelihood, Bernoulli):
            return quantized_cdf(_bernoulli_probs(_snap(likelihood.logits).flatten(1).numpy()))
        if isinstance(likelihood, DiscretizedLogisticMixture):
            chains, components = likelihood.logits.shape[:2]
            # (chains, components, *item) -> (values, components), the values in the items' order
            logits, loc, log_scale = (
                _snap(t).movedim(1, -1).reshape(-1, components).numpy()
                for t in (likelihood.logits, likelihood.loc, likelihood.log_scale)
            )

            def mixture(block):
                return _mixture_probs(logits[block], loc[block], log_scale[block], self.alphabet)

            return _tables(mixture, len(loc), self.alphabet).reshape(chains, -1, self.alphabet + 1)
        if not isinstance(likelihood, DiscretizedLogistic):
            raise CodecError(f"no table for a {type(likelihood).__name__} likelihood")
        loc, log_scale = _snap(likelihood.loc).flatten().numpy(), _snap(likelihood.log_scale).flatten().numpy()

        def probs(block):
            return _logistic_probs(loc[block], log_scale[block], self.alphabet)

        return _tables(probs, len(loc), self.alphabet).reshape(len(likelihood.loc), -1, self.alphabet + 1)

    # --- the codec -------------------------------------------------------------------------------------------
    # Layers are numbered bottom (0) to top; the model's `descend` visits them top down. Encoding pops
    # them top down from the posteriors and pushes them bottom up under the priors, so decoding pops
    # them top down from the priors and, once x is back, pushes them bottom up onto the posteriors.
    @torch.no_grad()
    def encode(
        self, x: torch.Tensor, message: rans.Message | None = None, progress: Callable[[int], None] | None = None
    ) -> rans.Message:
        """Push items x (n, *shape) in model space (bits or integer levels) onto a message; `progress(n)`
        hears of every n items coded."""
        message = message or rans.Message(self.lanes)
        if message.lanes != self.lanes:
            raise CodecError(f"a message of {message.lanes} lanes does not fit a codec of {self.lanes}")
        if x.shape[1:] != torch.Size(self.model.spec.shape):
            raise CodecError(f"items of shape {tuple(x.shape[1:])} do not fit this model's {self.model.spec.shape}")
        if len(x) and (x.min() < 0 or x.max() >= self.alphabet or (x != x.round()).any()):
            raise CodecError(f"values must be integers in 0..{self.alphabet - 1} for this model")
        progress = progress or _ignore
        with _one_thread():
            for lane, item in enumerate(x[: self.lanes].float()):  # the staggered first step
                self._encode_step(message, item[None], lane)
                progress(1)
            for start in range(self.lanes, len(x), self.lanes):
                chunk = x[start : start + self.lanes]
                self._encode_step(message, chunk.float())
                progress(len(chunk))
        return message

    @torch.no_grad()
    def decode(self, message: rans.Message, n: int, progress: Callable[[int], None] | None = None) -> torch.Tensor:
        """Pop n items off a message; the inverse of `encode`, items in their original order."""
        progress, steps = progress or _ignore, []
        with _one_thread():
            for start in reversed(range(self.lanes, n, self.lanes)):
                steps.append(self._decode_step(message, min(self.lanes, n - start)))
                progress(len(steps[-1]))
            for lane in reversed(range(min(self.lanes, n))):
                steps.append(self._decode_step(message, 1, lane))
                progress(1)
        return torch.cat(steps[::-1]) if steps else torch.zeros(0, *self.model.spec.shape)

    def _encode_step(self, message: rans.Message, items: torch.Tensor, lane: int = 0) -> None:
        chains, sizes, buckets, prior_cdfs = len(items), self.model.layer_sizes, {}, {}

        def from_posterior(layer, prior, posterior):
            cdf = self._latent_cdf(posterior, chains, sizes[layer])
            buckets[layer] = _pop(message, cdf, lane, scramble=True)
            prior_cdfs[layer] = self._latent_cdf(prior, chains, sizes[layer])
            return self._centres(buckets[layer])

        likelihood = self.model.descend(from_posterior, items)
        if isinstance(likelihood, PixelContext):
            _PixelTables(self.context, likelihood, items).push(message, lane)
        else:
            _push(message, self._likelihood_cdf(likelihood), items.flatten(1).long().numpy(), lane)
        for layer in range(len(sizes)):
            _push(message, prior_cdfs[layer], buckets[layer], lane)

    def _decode_step(self, message: rans.Message, chains: int, lane: int = 0) -> torch.Tensor:
        sizes, buckets, posterior_cdfs = self.model.layer_sizes, {}, {}

        def from_prior(layer, prior, posterior):
            buckets[layer] = _pop(message, self._latent_cdf(prior, chains, sizes[layer]), lane)
            return self._centres(buckets[layer])

        def record_posterior(layer, prior, posterior):
            posterior_cdfs[layer] = self._latent_cdf(posterior, chains, sizes[layer])
            return self._centres(buckets[layer])

        likelihood = self.model.descend(from_prior)
        if isinstance(likelihood, PixelContext):
            items = _PixelTables(self.context, likelihood).pop(message, lane)
        else:
            values = _pop(message, self._likelihood_cdf(likelihood), lane)
            items = torch.as_tensor(values, dtype=torch.float32).view(chains, *self.model.spec.shape)
        self.model.descend(record_posterior, items)
        for layer in range(len(sizes)):
            _push(message, posterior_cdfs[layer], buckets[layer], lane, scramble=True)
        return items


class _ContextWeights:
    """A pixel context's weights as the codec uses them: snapped to the SNAP grid, bounded, laid out for
    one pixel's sums. Built once per codec, as the weights do not change while it codes.

    The encoder knows every pixel, the decoder only those before the current one, and both must build
    each pixel's table bit for bit alike. So the context's weighted sums are exact: weights snapped to
    the grid (and bounded) times integer values, or times features and activations on the same grid
    (and bounded), add up without rounding in float64, in any order.
    """

    MAX_WEIGHT = 2.0**8  # |weight| / SNAP * value < 2^40, and up to 2^7 of those sum exactly in float64
    MAX_OUT_WEIGHT = 2.0**4  # |weight| / SNAP * activation / SNAP < 2^44, and up to 2^6 of those sum exactly

    def __init__(self, causal: CausalContext):
        self.radius = causal.radius
        self.taps = np.argwhere(causal.mask.numpy() > 0)  # (taps, 2): kernel rows and columns before the centre
        weight = _bounded(causal.masked_weight, self.MAX_WEIGHT)
        self.weight = weight[:, :, self.taps[:, 0], self.taps[:, 1]].reshape(len(weight), -1).T  # (C * taps, out)
        self.hidden = causal.hidden
        if self.hidden:
            self.from_params = _bounded(causal.from_params, self.MAX_WEIGHT).T  # (n_params * C, hidden)
            self.bias = _snap(causal.bias.detach()).numpy()
            self.out = _bounded(causal.out, self.MAX_OUT_WEIGHT).T  # (hidden, n_params * C)
            self.out_bias = _snap(causal.out_bias.detach()).numpy()


class _PixelTables:
    """A step's items, coded pixel by pixel under a likelihood with a pixel context (see `_ContextWeights`
    for why both sides build the same tables). Each pixel's tables come from the same NumPy calls, on
    arrays of the same shapes, on both sides. Pixels go in raster order on the way out, so the encoder
    pushes them in reverse.
    """

    def __init__(self, weights: _ContextWeights, likelihood: PixelContext, items: torch.Tensor | None = None):
        base, self.w = likelihood.base, weights
        self.params = _snap(own_params(base)).numpy()  # (chains, n_params, C, H, W)
        self.channels, self.height, self.width = self.params.shape[2:]
        # the model's context sees x as the encoder does: scale * x - 1, and zero outside the image
        self.levels = 0 if isinstance(base, Bernoulli) else base.levels
        self.mixture = isinstance(base, DiscretizedLogisticMixture)
        self.scale = 2.0 / (self.levels - 1) if self.levels else 2.0
        r = weights.radius
        padded = (self.channels, self.height + 2 * r, self.width + 2 * r)
        self.canvas, self.inside = np.zeros((len(self.params), *padded)), np.zeros(padded)
        self.inside[:, r : r + self.height, r : r + self.width] = 1.0
        if items is not None:
            self.canvas[:, :, r : r + self.height, r : r + self.width] = items.double().numpy()

    def _cdf(self, row: int, col: int) -> np.ndarray:
        """Tables (chains, channels, alphabet + 1) of the pixel at (row, col)."""
        w = self.w
        rows, cols = w.taps[:, 0] + row, w.taps[:, 1] + col
        values = self.canvas[:, :, rows, cols].reshape(len(self.canvas), -1)
        seen = self.scale * (values @ w.weight) - self.inside[:, rows, cols].reshape(-1) @ w.weight
        params = self.params[:, :, :, row, col].copy()  # (chains, n_params, C)
        if w.hidden:
            bound = CausalContext.FEATURE_BOUND
            features = params.reshape(len(params), -1).clip(-bound, bound)
            units = (seen + (features @ w.from_params + w.bias)).clip(0.0, CausalContext.MAX_ACTIVATION)
            params += (_snap_array(units) @ w.out + w.out_bias).reshape(params.shape)
        else:  # a linear context shifts the location: every component's, for a mixture
            params[:, : len(params[0]) // 3 if self.mixture else 1] += seen[:, None]
        if not self.levels:
            return quantized_cdf(_bernoulli_probs(params[:, 0]))
        if self.mixture:  # (chains, components, C) -> (chains, C, components)
            loc, log_scale, logits = (part.transpose(0, 2, 1) for part in np.split(params, 3, axis=1))
            return quantized_cdf(_mixture_probs(logits, loc, log_scale.clip(MIN_LOG_SCALE), self.levels))
        return quantized_cdf(_logistic_probs(params[:, 0], params[:, 1].clip(MIN_LOG_SCALE), self.levels))

    def push(self, message: rans.Message, lane: int) -> None:
        r = self.w.radius
        for row in reversed(range(self.height)):
            for col in reversed(range(self.width)):
                values = self.canvas[:, :, r + row, r + col].astype(np.int64)
                _push(message, self._cdf(row, col), values, lane)

    def pop(self, message: rans.Message, lane: int) -> torch.Tensor:
        r = self.w.radius
        for row in range(self.height):
            for col in range(self.width):
                self.canvas[:, :, r + row, r + col] = _pop(message, self._cdf(row, col), lane)
        return torch.as_tensor(self.canvas[:, :, r : r + self.height, r : r + self.width], dtype=torch.float32)
