"""The pixel context: p(x|z) = prod_i p(x_i | z, x_<i) is a normalised density, its draws follow it,
it trains, saves and loads like any model, and bits-back coding with it round-trips and costs its -ELBO."""

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vaekit
from vaekit import data
from vaekit.codec import rans
from vaekit.codec.bitsback import BitsBackCodec, lanes_for
from vaekit.data import DataSpec
from vaekit.errors import OptionError
from vaekit.models import ModelConfig, build
from vaekit.nn import CausalContext
from vaekit.trainer import evaluate_elbo


def random_model(shape, levels, bernoulli, radius, layers=(), seed=0, spread=0.5, hidden=0, mixture=1):
    """A model with random weights everywhere, the zero-initialised context and posterior layers too."""
    torch.manual_seed(seed)
    spec = DataSpec("levels", tuple(shape), levels=levels)
    likelihood = "bernoulli" if bernoulli else None
    config = ModelConfig.for_data(
        spec, likelihood, latent_dim=2, hidden=(8,), layers=tuple(layers), context=radius, context_hidden=hidden,
        mixture=mixture,
    )  # fmt: skip
    model = build(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, spread)
    return model


def all_items(shape, alphabet):
    return torch.tensor(list(itertools.product(range(alphabet), repeat=math.prod(shape))), dtype=torch.float32).view(
        -1, *shape
    )


@pytest.mark.parametrize("hidden", [0, 5])
@pytest.mark.parametrize(("shape", "levels", "bernoulli", "mixture"), [
    ((1, 2, 3), 2, True, 1), ((2, 2, 2), 2, True, 1), ((1, 2, 2), 3, False, 1), ((1, 2, 2), 3, False, 2)
])  # fmt: skip
def test_the_likelihood_sums_to_one_over_every_image(shape, levels, bernoulli, mixture, hidden):
    """Only a context that sees earlier pixels alone gives a normalised density: a mask that let a pixel
    see itself or a later one would not sum to one over all images."""
    model = random_model(shape, levels, bernoulli, radius=2, spread=1.0, hidden=hidden, mixture=mixture)
    x = all_items(shape, 2 if bernoulli else levels)
    with torch.no_grad():
        z = torch.randn(3, 1, 2)  # three latents, each against every image
        total = torch.logsumexp(model.decode(z).log_prob(x), dim=1).exp()
    assert torch.allclose(total, torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("hidden", [0, 5])
@pytest.mark.parametrize(("levels", "mixture"), [(2, 1), (3, 2)])
def test_draws_follow_the_density(hidden, levels, mixture):
    model = random_model((1, 2, 2), levels, levels == 2, radius=1, spread=1.0, hidden=hidden, mixture=mixture)
    x = all_items((1, 2, 2), levels)
    z = torch.randn(1, 2)
    with torch.no_grad():
        likelihood = model.decode(z.expand(20000, 2))
        draws = likelihood.sample(generator=torch.Generator().manual_seed(0))
        expected = model.decode(z).log_prob(x).exp()
    codes = (draws.view(len(draws), -1) * levels ** torch.arange(3.0, -1.0, -1.0)).sum(1).long()  # as all_items
    observed = torch.bincount(codes, minlength=levels**4).double() / len(draws)
    stderr = (expected * (1 - expected) / len(draws)).sqrt()
    assert ((observed - expected).abs() <= 5 * stderr + 1e-4).all()


@pytest.mark.parametrize("hidden", [0, 5])
def test_a_zero_context_is_the_independent_model(hidden):
    model = random_model((1, 3, 3), 5, False, radius=1, hidden=hidden)
    with torch.no_grad():
        (model.causal.out if hidden else model.causal.weight).zero_()
        if hidden:
            model.causal.out_bias.zero_()
        x = torch.randint(0, 5, (4, 1, 3, 3)).float()
        likelihood = model.decode(torch.randn(4, 2))
        assert torch.allclose(likelihood.log_prob(x), likelihood.base.log_prob(x))


def test_the_hidden_units_compute_what_the_docstring_says():
    """Pixel by pixel, with numbers: unit h = clip(sum over earlier pixels' values x weight + the pixel's own
    parameters (clipped to +-FEATURE_BOUND) x from_params + bias, 0, MAX_ACTIVATION); the output, a linear map
    of the units. Leading sample dimensions of the parameters broadcast against the images."""
    torch.manual_seed(0)
    channels, radius, hidden, n_params, height, width = 2, 2, 3, 2, 4, 5
    context = CausalContext(channels, radius, hidden, n_params)
    with torch.no_grad():
        for parameter in context.parameters():
            parameter.normal_(0, 2.0)  # large enough that some units clip at 0 and some parameters at the bound
        context.weight.mul_(40.0)
    x = torch.randint(0, 4, (2, channels, height, width)).float()
    params = torch.randn(3, 2, n_params, channels, height, width) * 100
    got = context(x, params).detach().numpy()

    w, mask = context.weight.detach().numpy(), context.mask.numpy()
    own = params.clamp(-CausalContext.FEATURE_BOUND, CausalContext.FEATURE_BOUND).numpy()
    from_params, bias = context.from_params.detach().numpy(), context.bias.detach().numpy()
    out, out_bias = context.out.detach().numpy(), context.out_bias.detach().numpy()
    assert (own == CausalContext.FEATURE_BOUND).any() and (own < CausalContext.FEATURE_BOUND).any()
    expected = np.zeros((3, 2, n_params, channels, height, width))
    clipped = set()
    for s, b, i, j in itertools.product(range(3), range(2), range(height), range(width)):
        units = bias + from_params @ own[s, b, :, :, i, j].reshape(-1)
        for c, dy, dx in itertools.product(range(channels), range(2 * radius + 1), range(2 * radius + 1)):
            row, col = i + dy - radius, j + dx - radius
            if mask[dy, dx] and 0 <= row < height and 0 <= col < width:
                units = units + w[:, c, dy, dx] * x[b, c, row, col].item()
        clipped |= {bool(u < 0) for u in units}
        expected[s, b, :, :, i, j] = (out @ units.clip(0, CausalContext.MAX_ACTIVATION) + out_bias).reshape(
            n_params, channels
        )
    assert clipped == {True, False}  # both sides of the clip were exercised
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-3)


def test_the_linear_context_is_a_masked_convolution():
    """Without hidden units each pixel's adjustment is PixelCNN's mask-A convolution of the images, the same
    for every sample of the parameters."""
    torch.manual_seed(0)
    context = CausalContext(3, 2)
    with torch.no_grad():
        context.weight.normal_()
    x = torch.randn(2, 3, 5, 6)
    got = context(x, torch.zeros(4, 2, 1, 3, 5, 6))
    expected = torch.nn.functional.conv2d(x, context.weight * context.mask, padding=2)
    assert got.shape == (2, 1, 3, 5, 6)
    torch.testing.assert_close(got[:, 0], expected, rtol=1e-5, atol=1e-5)


def test_context_needs_images_and_a_discrete_likelihood():
    with pytest.raises(OptionError, match="needs images"):
        ModelConfig.for_data(DataSpec("levels", (6,), levels=3), context=1)
    with pytest.raises(OptionError, match="radius must lie in 0..3"):
        ModelConfig.for_data(DataSpec("levels", (1, 4, 4), levels=3), context=4)
    with pytest.raises(OptionError, match="need a context radius"):
        ModelConfig.for_data(DataSpec("levels", (1, 4, 4), levels=3), context_hidden=8)
    with pytest.raises(OptionError, match="must number 0..64, got 65"):
        ModelConfig.for_data(DataSpec("levels", (1, 4, 4), levels=3), context=1, context_hidden=65)
    with pytest.raises(OptionError, match="discretised likelihood, not bernoulli"):
        ModelConfig.for_data(DataSpec("levels", (1, 4, 4), levels=3), "bernoulli", mixture=2)
    with pytest.raises(OptionError, match="each sum 156 inputs"):  # 4 x (24 + 15): past what codes exactly
        ModelConfig.for_data(DataSpec("levels", (4, 4, 4), levels=3), context=3, context_hidden=8, mixture=5)


@pytest.mark.parametrize("hidden", [0, 8])
def test_a_context_model_trains_saves_and_loads(tmp_path, private_cache, hidden):
    run = vaekit.train(
        "digits", tmp_path / "c", context=2, context_hidden=hidden, hidden=(32,), latent_dim=4, epochs=6, quiet=True
    )
    model = vaekit.load(run.run_dir)
    assert model.config.context == 2 and model.config.context_hidden == hidden
    last = model.causal.out if hidden else model.causal.weight
    assert last.abs().sum() > 0  # the context learned something
    test = data.load("digits", "test", spec=model.spec).x[:50].float()
    z = torch.zeros(1, 4)
    with torch.no_grad():
        assert torch.equal(model.decode(z).log_prob(test), run.model.eval().decode(z).log_prob(test))
        samples = model.sample(3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (3, 1, 8, 8) and samples.min() >= 0 and samples.max() <= 16


@settings(max_examples=20, deadline=None)
@given(
    channels=st.integers(1, 3),
    height=st.integers(1, 5),
    width=st.integers(1, 5),
    levels=st.integers(2, 30),
    bernoulli=st.booleans(),
    radius=st.integers(1, 3),
    hidden=st.sampled_from([0, 3]),
    mixture=st.sampled_from([1, 2]),
    hierarchical=st.booleans(),
    items=st.integers(0, 4),
    lanes=st.integers(1, 7),
    seed=st.integers(0, 2**31 - 1),
)
def test_any_context_model_round_trips(channels, height, width, levels, bernoulli, radius, hidden, mixture,
                                       hierarchical, items, lanes, seed):  # fmt: skip
    shape = (channels, height, width)
    layers = (2, 1) if hierarchical else ()
    mixture = 1 if bernoulli else mixture
    model = random_model(shape, levels, bernoulli, radius, layers=layers, seed=seed, hidden=hidden, mixture=mixture)
    top = 2 if bernoulli else levels
    x = torch.randint(0, top, (items, *shape), generator=torch.Generator().manual_seed(seed)).float()
    codec = BitsBackCodec(model, lanes=lanes)
    message = rans.Message.from_bytes(codec.encode(x).to_bytes(), lanes)
    assert torch.equal(codec.decode(message, items), x)
    assert (message.head == rans.LOWER).all() and not message.tail.any()


@pytest.mark.parametrize("hidden", [0, 8])
def test_context_code_length_is_the_negative_elbo(tmp_path, private_cache, hidden):
    run = vaekit.train(
        "digits", tmp_path / "c", context=1, context_hidden=hidden, hidden=(64,), latent_dim=4, epochs=10, quiet=True
    )
    model = vaekit.load(run.run_dir)
    x = data.load("digits", "test", spec=model.spec).x.float()
    codec = BitsBackCodec(model, lanes=lanes_for(x.numel()))
    bits = codec.encode(x).bits()
    neg_elbo = evaluate_elbo(model, x, generator=torch.Generator().manual_seed(0))["neg_elbo"]
    neg_elbo_bits = neg_elbo * len(x) / math.log(2)
    assert 0.95 * neg_elbo_bits < bits < 1.05 * neg_elbo_bits + 64 * codec.lanes


@pytest.mark.parametrize("hidden", [0, 3])
def test_context_weights_too_large_to_code_exactly_are_refused(hidden):
    model = random_model((1, 3, 3), 4, False, radius=1, hidden=hidden)
    with torch.no_grad():
        (model.causal.out if hidden else model.causal.weight).fill_(1000.0)
    with pytest.raises(rans.CodecError, match="too large to code exactly"):
        BitsBackCodec(model, lanes=1).encode(torch.zeros(1, 1, 3, 3))
    assert np.isfinite(model.causal.masked_weight.sum().item())
