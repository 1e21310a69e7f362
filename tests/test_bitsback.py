"""Bits-back coding: exact round trips, a code length at the model's -ELBO, clear errors."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import vaekit
from vaekit import data
from vaekit.codec import rans
from vaekit.codec.bitsback import BitsBackCodec, lanes_for, quantized_cdf
from vaekit.data import DataSpec
from vaekit.models import VAE, ModelConfig, build
from vaekit.trainer import evaluate_elbo


@pytest.fixture(scope="module")
def binary_run(tmp_path_factory, private_cache):
    out = tmp_path_factory.mktemp("runs") / "binary"
    return vaekit.train("digits", out, epochs=15, hidden=(64,), latent_dim=4, binarize="static", quiet=True)


def test_quantized_tables_keep_every_symbol_and_sum_to_the_precision(rng):
    probs = rng.dirichlet(np.full(6, 0.2), size=50)
    probs[0] = [1.0, 0, 0, 0, 0, 0]  # impossible symbols still get a frequency
    cdf = quantized_cdf(probs, 16)
    freqs = np.diff(cdf, axis=1)
    assert (cdf[:, -1] == 1 << 16).all() and (freqs >= 1).all()
    assert np.abs(freqs / 2**16 - probs).max() <= 2 * 6 / 2**16  # within rounding (the remainder: one symbol)


@pytest.mark.parametrize("run_name", ["tiny_run", "binary_run"])
def test_round_trip_is_exact_and_restores_the_initial_message(run_name, request):
    model = vaekit.load(request.getfixturevalue(run_name).run_dir)
    x = model.prepare(data.load("digits", "test", spec=model.spec).x[:60], torch.Generator().manual_seed(0))
    codec = BitsBackCodec(model, lanes=3)
    message = codec.encode(x)
    received = rans.Message.from_bytes(message.to_bytes(), 3)
    assert torch.equal(codec.decode(received, len(x)), x)
    # what is left is the start: lanes at their lower bound, and the zero words the first pops borrowed
    assert (received.head == rans.LOWER).all() and not received.tail.any()
    assert len(received.tail) == message.underflow


def test_code_length_is_the_negative_elbo_plus_the_lanes_final_states(binary_run):
    model = vaekit.load(binary_run.run_dir)
    x = model.prepare(data.load("digits", "test", spec=model.spec).x, torch.Generator().manual_seed(0))
    codec = BitsBackCodec(model, lanes=lanes_for(x.numel()))
    bits = codec.encode(x).bits()
    neg_elbo_bits = (
        evaluate_elbo(model, x, generator=torch.Generator().manual_seed(0))["neg_elbo"] * len(x) / math.log(2)
    )
    # one posterior sample per item: a few percent of Monte-Carlo noise; the heads are 64 bits per lane
    assert 0.95 * neg_elbo_bits < bits < 1.05 * neg_elbo_bits + 64 * codec.lanes


def test_a_hierarchical_models_code_length_is_its_negative_elbo(tmp_path, private_cache):
    """Three layers, each coded under its prior given the layers above: the code costs the model's
    -ELBO (whose KL terms are those conditional priors'), not the one-layer model's."""
    run = vaekit.train(
        "digits", tmp_path / "h", layers=(6, 4, 2), hidden=(64,), epochs=12, binarize="static", quiet=True
    )
    model = vaekit.load(run.run_dir)
    x = model.prepare(data.load("digits", "test", spec=model.spec).x, torch.Generator().manual_seed(0))
    codec = BitsBackCodec(model, lanes=lanes_for(x.numel()))
    message = codec.encode(x)
    neg_elbo = evaluate_elbo(model, x, generator=torch.Generator().manual_seed(0))["neg_elbo"]
    bits = message.bits()
    assert 0.95 * neg_elbo * len(x) / math.log(2) < bits < 1.05 * neg_elbo * len(x) / math.log(2) + 64 * codec.lanes
    received = rans.Message.from_bytes(message.to_bytes(), codec.lanes)
    assert torch.equal(codec.decode(received, len(x)), x)


def test_a_logistic_mixture_models_code_length_is_its_negative_elbo(tmp_path, private_cache):
    run = vaekit.train("digits", tmp_path / "m", mixture=3, hidden=(64,), latent_dim=4, epochs=10, quiet=True)
    model = vaekit.load(run.run_dir)
    assert model.config.mixture == 3
    x = data.load("digits", "test", spec=model.spec).x.float()
    codec = BitsBackCodec(model, lanes=lanes_for(x.numel()))
    message = codec.encode(x)
    neg_elbo_bits = (
        evaluate_elbo(model, x, generator=torch.Generator().manual_seed(0))["neg_elbo"] * len(x) / math.log(2)
    )
    assert 0.95 * neg_elbo_bits < message.bits() < 1.05 * neg_elbo_bits + 64 * codec.lanes
    received = rans.Message.from_bytes(message.to_bytes(), codec.lanes)
    assert torch.equal(codec.decode(received, len(x)), x)


def test_models_without_a_layered_normal_prior_are_refused(tmp_path, private_cache):
    spec = DataSpec("levels", (4,), levels=3)
    for options in ({"prior": "vamp", "pseudo_inputs": 3}, {"classes": 2}):
        model = VAE(ModelConfig.for_data(spec, latent_dim=2, hidden=(4,), **options))
        with pytest.raises(rans.CodecError, match="unconditional model with the N"):
            BitsBackCodec(model, lanes=1)


def test_values_or_shapes_the_model_cannot_code_are_refused(tiny_run):
    model = vaekit.load(tiny_run.run_dir)
    codec = BitsBackCodec(model, lanes=2)
    with pytest.raises(rans.CodecError, match=r"integers in 0\.\.16"):
        codec.encode(torch.full((1, *model.spec.shape), 17.0))
    with pytest.raises(rans.CodecError, match="do not fit"):
        codec.encode(torch.zeros(1, 3, 3))
    with pytest.raises(rans.CodecError, match="lanes"):
        codec.encode(torch.zeros(1, *model.spec.shape), rans.Message(5))


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    levels=st.integers(2, 40),
    bernoulli=st.booleans(),
    latent=st.integers(1, 5),
    mixture=st.sampled_from([1, 3]),
    items=st.integers(0, 6),
    lanes=st.integers(1, 9),
    seed=st.integers(0, 2**31 - 1),
)
def test_any_model_shape_and_data_round_trip(shape, levels, bernoulli, latent, mixture, items, lanes, seed):
    """Whatever the weights (an untrained model is as good a test as any), decoding returns the data."""
    torch.manual_seed(seed)
    spec = DataSpec("levels", tuple(shape), levels=levels)
    likelihood, mixture = ("bernoulli", 1) if bernoulli else (None, mixture)
    model = VAE(ModelConfig.for_data(spec, likelihood, "mlp", latent, (8,), mixture=mixture)).eval()
    _assert_round_trip(model, shape, levels, bernoulli, items, lanes, seed)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=2),
    levels=st.integers(2, 40),
    bernoulli=st.booleans(),
    layers=st.lists(st.integers(1, 4), min_size=2, max_size=4),
    items=st.integers(0, 5),
    lanes=st.integers(1, 9),
    seed=st.integers(0, 2**31 - 1),
)
def test_any_hierarchical_model_round_trips(shape, levels, bernoulli, layers, items, lanes, seed):
    """Every layer's prior and posterior depend on the layers above (random weights everywhere, the
    zero-initialised ones too), and decoding still rebuilds each table exactly."""
    torch.manual_seed(seed)
    spec = DataSpec("levels", tuple(shape), levels=levels)
    config = ModelConfig.for_data(spec, "bernoulli" if bernoulli else None, hidden=(8,), layers=tuple(layers))
    _assert_round_trip(_with_random_weights(build(config)), shape, levels, bernoulli, items, lanes, seed)


@settings(max_examples=20, deadline=None)
@given(
    side=st.sampled_from([2, 3, 8]),  # 8 is halved before the transposed convolutions; 2 and 3 are not
    channels=st.integers(1, 2),
    levels=st.integers(2, 40),
    bernoulli=st.booleans(),
    items=st.integers(0, 4),
    lanes=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
    arch=st.sampled_from(["conv", "spatial", "hybrid"]),  # a conv head on the dense model; latent maps; both
    patches=st.booleans(),  # conv and hybrid: the convolutional path by pixel shuffles
    noise_maps=st.booleans(),  # hybrid: a map layer without a posterior
)
def test_any_convolutional_hierarchical_model_round_trips(
    side, channels, levels, bernoulli, items, lanes, seed, arch, patches, noise_maps
):
    torch.manual_seed(seed)
    shape = (channels, side, side)
    spec = DataSpec("levels", shape, levels=levels)
    likelihood, patches = "bernoulli" if bernoulli else None, patches and arch != "spatial"
    config = ModelConfig.for_data(
        spec, likelihood, arch, hidden=(8,), layers=(2, 1), patches=patches, noise_maps=noise_maps and arch == "hybrid"
    )
    _assert_round_trip(_with_random_weights(build(config)), shape, levels, bernoulli, items, lanes, seed)


def _with_random_weights(model):
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.5)
    return model.eval()


def _assert_round_trip(model, shape, levels, bernoulli, items, lanes, seed):
    top = 2 if bernoulli else levels
    x = torch.randint(0, top, (items, *shape), generator=torch.Generator().manual_seed(seed)).float()
    codec = BitsBackCodec(model, lanes=lanes, latent_bits=1 + seed % 12)
    message = rans.Message.from_bytes(codec.encode(x).to_bytes(), lanes)
    assert torch.equal(codec.decode(message, items), x)
    assert (message.head == rans.LOWER).all() and not message.tail.any()
