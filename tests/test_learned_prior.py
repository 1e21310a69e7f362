"""The learned top-layer prior (--learned-prior): its density and draws against torch's mixture, its ELBO and
gradient, its training, saving and loading, and the options it refuses (the hierarchical model under it against
quadrature: test_top_prior)."""

import dataclasses
import json
import math

import pytest
import torch
from test_hierarchical import ALL_X, tiny

import vaekit
from vaekit.codec import CodecError, compress
from vaekit.errors import OptionError
from vaekit.models import ModelConfig, build
from vaekit.top_prior import LearnedTopMixture

D = torch.distributions


def known_mixture(dim=2, components=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mixture = LearnedTopMixture(components, dim)
    with torch.no_grad():
        mixture.means.copy_(3 * torch.randn(components, dim, generator=gen))
        mixture.logvars.copy_(torch.randn(components, dim, generator=gen))
    reference = D.MixtureSameFamily(
        D.Categorical(torch.ones(components)),
        D.Independent(D.Normal(mixture.means.detach(), (0.5 * mixture.logvars.detach()).exp()), 1),
    )
    return mixture, reference


def test_log_prob_is_the_equal_weight_mixture_density():
    mixture, reference = known_mixture()
    z = 4 * torch.randn(7, 5, 2)
    assert torch.allclose(mixture.log_prob(z), reference.log_prob(z), atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the mixture keeps float32 under the trainer's autocast
        assert torch.allclose(mixture.log_prob(z), reference.log_prob(z), atol=1e-4)


def test_draws_follow_the_mixture_and_temperature_zero_gives_its_means():
    mixture, reference = known_mixture()
    gen = torch.Generator().manual_seed(1)
    z = mixture.sample(40000, generator=gen).detach()
    own = reference.sample((40000,))
    se = math.sqrt(reference.log_prob(z).var() / 40000 + reference.log_prob(own).var() / 40000)
    assert abs(reference.log_prob(z).mean() - reference.log_prob(own).mean()) < 4 * se
    assert torch.allclose(z.mean(0), reference.mean, atol=0.1)
    cold = mixture.sample(100, temperature=0.0, generator=gen)
    assert torch.cdist(cold, mixture.means.detach()).min(1).values.max() < 1e-5


def with_learned_top(model):
    """The tiny model with a learned two-component mixture as its top layer's prior."""
    mixture = LearnedTopMixture(2, 1)
    with torch.no_grad():
        mixture.means.copy_(torch.tensor([[-1.5], [1.0]]))
        mixture.logvars.copy_(torch.tensor([[0.5], [0.8]]).log() * 2)  # stddevs 0.5 and 0.8
    model.top_prior = mixture
    model.config = dataclasses.replace(model.config, learned_prior=2)
    return model


def test_the_elbo_s_gradient_reaches_the_mixture():
    model = with_learned_top(tiny())
    noise = torch.randn(8 * 100, 2, generator=torch.Generator().manual_seed(2))
    model.elbo(ALL_X.repeat(100, 1), noise).elbo.mean().backward()
    prior = model.top_prior
    assert prior.means.grad.abs().min() > 0 and prior.logvars.grad.abs().min() > 0


def test_a_learned_prior_trains_saves_loads_and_resumes(tmp_path):
    run = vaekit.train(
        "digits", tmp_path / "h", layers=(4, 2), hidden=(32,), epochs=2, quiet=True, patience=None, learned_prior=4
    )
    config = json.loads((run.run_dir / "config.json").read_text())
    assert config["model"]["learned_prior"] == 4 and "top_mixture" not in config["model"]
    model = vaekit.load(run.run_dir)
    assert isinstance(model.top_prior, LearnedTopMixture)
    assert torch.equal(model.top_prior.means, run.model.top_prior.means)
    torch.manual_seed(config["training"]["seed"])  # the run's initial weights, as resume rebuilds them
    start = build(ModelConfig.from_dict(config["model"])).top_prior
    for name in ("means", "logvars"):  # training moved the components (a little: two epochs, in the lr's warm-up)
        assert (getattr(model.top_prior, name) - getattr(start, name)).abs().max() > 1e-5
    x = model.prepare(torch.randint(0, 17, (5, 1, 8, 8)))
    standard = vaekit.load(run.run_dir)
    standard.top_prior = None
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    assert not torch.allclose(model.log_likelihood(x, k=20, generator=gen()), standard.log_likelihood(x, k=20))
    assert torch.allclose(
        model.log_likelihood(x, k=20, generator=gen()), run.model.log_likelihood(x, k=20, generator=gen())
    )
    assert model.sample(3).shape == (3, 1, 8, 8)
    with pytest.raises(CodecError, match="learned-prior"):
        compress(model, torch.randint(0, 17, (5, 1, 8, 8)).numpy())
    again = vaekit.resume(run.run_dir, quiet=True)  # all epochs done: the model as saved
    assert torch.equal(again.model.top_prior.means, model.top_prior.means)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"learned_prior": 4}, "learned top-layer prior needs a hierarchical model"),
        ({"learned_prior": 4, "layers": (4, 2), "arch": "spatial"}, "needs a hierarchical model"),
        ({"learned_prior": 300, "layers": (4, 2)}, "1..256 components"),
        ({"learned_prior": 4, "layers": (4, 2), "fit_prior": 4}, "either learned"),
        ({"learned_prior": 4, "layers": (4, 2), "free_bits": 0.1}, "free bits"),
    ],
)
def test_refused_options_are_named_before_anything_is_written(tmp_path, options, message):
    with pytest.raises(OptionError, match=message):
        vaekit.train("digits", tmp_path / "r", epochs=1, quiet=True, **options)
    assert not (tmp_path / "r").exists()


def test_a_file_with_both_top_priors_is_refused():
    config = tiny().config.to_dict()
    config.update(learned_prior=2, top_mixture=2)
    with pytest.raises(ValueError, match="either learned"):
        ModelConfig.from_dict(config)
