"""The fitted top-layer prior (--fit-prior): its density against torch's, its fit against a known mixture, and the
hierarchical model under it (or under a learned one, --learned-prior) against quadrature."""

import dataclasses
import json
import math

import pytest
import torch
from test_hierarchical import ALL_X, log_px_by_quadrature, tiny
from test_learned_prior import with_learned_top

import vaekit
from vaekit.codec import CodecError, compress
from vaekit.errors import OptionError
from vaekit.top_prior import TopMixture, fit_top_prior

D = torch.distributions


def known_mixture(dim=2, components=3, seed=0):
    """A mixture with random weights, means and full covariances, and torch's own version of it."""
    gen = torch.Generator().manual_seed(seed)
    weights = torch.softmax(torch.randn(components, generator=gen), 0)
    means = 4 * torch.randn(components, dim, generator=gen)
    a = torch.randn(components, dim, dim, generator=gen)
    covariance = 0.25 * a @ a.mT + 0.1 * torch.eye(dim)
    mixture = TopMixture(components, dim)
    mixture.log_weights.copy_(weights.log())
    mixture.means.copy_(means)
    precision = torch.linalg.inv(covariance.double())
    # upper U with precision = U U^T: the transpose of the lower Cholesky factor of the flipped precision
    flip = torch.arange(dim - 1, -1, -1)
    lower = torch.linalg.cholesky(precision[:, flip][:, :, flip])
    mixture.precision_cholesky.copy_(lower[:, flip][:, :, flip].float())
    reference = D.MixtureSameFamily(D.Categorical(weights), D.MultivariateNormal(means, covariance))
    return mixture, reference


def test_log_prob_is_the_mixture_density():
    mixture, reference = known_mixture()
    u = mixture.precision_cholesky
    assert torch.allclose(u.tril(-1), torch.zeros_like(u))  # upper triangular, as sklearn stores it
    z = 4 * torch.randn(7, 5, 2)
    assert torch.allclose(mixture.log_prob(z), reference.log_prob(z), atol=1e-4)


def test_draws_follow_the_mixture_and_temperature_zero_gives_its_means():
    mixture, reference = known_mixture()
    gen = torch.Generator().manual_seed(1)
    z = mixture.sample(40000, generator=gen)
    # a draw's mean log-density is minus the entropy, which torch's own draws estimate too
    own = reference.sample((40000,))
    se = math.sqrt(reference.log_prob(z).var() / 40000 + reference.log_prob(own).var() / 40000)
    assert abs(reference.log_prob(z).mean() - reference.log_prob(own).mean()) < 4 * se
    assert torch.allclose(z.mean(0), reference.mean, atol=0.1)
    cold = mixture.sample(100, temperature=0.0, generator=gen)
    distances = torch.cdist(cold, mixture.means).min(1).values
    assert distances.max() < 1e-5  # each draw is a component's mean


def test_fit_recovers_a_known_mixture():
    mixture, reference = known_mixture(components=2, seed=3)
    torch.manual_seed(4)
    fitted = TopMixture(2, 2)
    fitted.fit(reference.sample((20000,)))
    fresh = reference.sample((20000,))
    # the fit's log-likelihood on fresh draws is the truth's to within sampling error
    gap = reference.log_prob(fresh) - fitted.log_prob(fresh)
    assert abs(gap.mean()) < 4 * gap.std() / math.sqrt(20000) + 0.005
    assert torch.allclose(fitted.log_weights.exp().sort().values, mixture.log_weights.exp().sort().values, atol=0.02)


def with_mixture_top(model):
    """The tiny model with a two-component mixture as its top layer's prior."""
    mixture = TopMixture(2, 1)
    mixture.log_weights.copy_(torch.tensor([0.3, 0.7]).log())
    mixture.means.copy_(torch.tensor([[-1.5], [1.0]]))
    mixture.precision_cholesky.copy_(torch.tensor([[[2.0]], [[1.25]]]))  # stddevs 0.5 and 0.8
    model.top_prior = mixture
    model.config = dataclasses.replace(model.config, top_mixture=2)
    return model


@pytest.mark.parametrize("with_top", [with_mixture_top, with_learned_top], ids=["fitted", "learned"])
def test_the_model_with_a_mixture_top_is_a_density_and_importance_sampling_finds_it(with_top):
    model = with_top(tiny())
    exact = log_px_by_quadrature(model, ALL_X)
    assert abs(torch.logsumexp(exact, 0).item()) < 1e-3  # sum over all x of p(x) = 1
    plain = log_px_by_quadrature(tiny(), ALL_X)
    assert (exact - plain).abs().max() > 0.05  # the top prior does change p(x)
    est = model.importance_sampled(ALL_X, k=4000, generator=torch.Generator().manual_seed(1))
    assert ((est.log_px - exact).abs() <= 4 * est.stderr + 1e-3).all()
    elbo = model.elbo(ALL_X.repeat(2000, 1), torch.randn(8 * 2000, 2, generator=torch.Generator().manual_seed(2)))
    assert elbo.kl_per_dim is None  # the top layer's KL is sampled
    assert (elbo.elbo.view(2000, 8).mean(0) < exact).all()


@torch.no_grad()
def test_the_sampled_kl_is_the_closed_form_one_below_and_log_q_over_p_on_top():
    model, plain = with_mixture_top(tiny()), tiny()
    noise = torch.randn(8, 2, generator=torch.Generator().manual_seed(3))
    kl, plain_kl = model.elbo(ALL_X, noise).kl, plain.elbo(ALL_X, noise).kl_per_dim
    q = plain.top_posterior(ALL_X)  # the posterior does not change with the prior it corrects
    z = q.mean + q.stddev * noise[:, 1:]
    expected = plain_kl[:, 0] + q.log_prob(z) - model.top_prior.log_prob(z)
    assert torch.allclose(kl, expected, atol=1e-5)


def test_prior_draws_follow_the_mixture_on_top():
    model = with_mixture_top(tiny())
    top = model.prior.rsample(40000, generator=torch.Generator().manual_seed(4))[:, 1]
    assert abs(top.mean() - (0.3 * -1.5 + 0.7 * 1.0)) < 0.02
    assert abs((top < -0.4).float().mean() - 0.3 * 0.9772 - 0.7 * 0.0401) < 0.01  # the mass below -0.4


@torch.no_grad()
def test_the_fitted_prior_gains_what_the_aggregate_posterior_gains_over_n01():
    """The top posteriors of the eight x, moved off N(0, 1): their equal mixture is the best prior there is, and
    the fit should gain, on held-out draws, what it gains over N(0, 1)."""
    model = tiny()
    model.posteriors[1].bias.copy_(torch.tensor([1.5, -2.0]))  # the top layer's: mean up, variance down
    q = model.top_posterior(ALL_X)
    aggregate = D.MixtureSameFamily(D.Categorical(torch.ones(8)), D.Normal(q.mean[:, 0], q.stddev[:, 0]))
    z = aggregate.sample(
        (200000,),
    )
    best = aggregate.log_prob(z) - D.Normal(0.0, 1.0).log_prob(z)
    summary = fit_top_prior(model, ALL_X.repeat(2500, 1), ALL_X.repeat(2500, 1), components=8)
    assert model.config.top_mixture == 8 and summary["components"] == 8
    assert best.mean() > 0.3  # the case is not trivial
    assert abs(summary["heldout_gain_nats"] - best.mean()) < 0.03 + 4 * best.std() / math.sqrt(20000)


def test_fit_prior_from_the_command_line_is_recorded_and_loaded(tmp_path):
    run = vaekit.train(
        "digits", tmp_path / "h", layers=(4, 2), hidden=(32,), epochs=2, quiet=True, patience=None, fit_prior=4
    )
    config = json.loads((run.run_dir / "config.json").read_text())
    assert config["model"]["top_mixture"] == 4 and config["training"]["fit_prior"] == 4
    assert math.isfinite(config["top_prior"]["heldout_gain_nats"]) and config["top_prior"]["seconds"] > 0
    model = vaekit.load(run.run_dir)
    assert torch.allclose(model.top_prior.means, run.model.top_prior.means)
    x = model.prepare(torch.randint(0, 17, (5, 1, 8, 8)))
    plain = vaekit.load(run.run_dir)
    plain.top_prior = None
    assert not torch.allclose(model.log_likelihood(x, k=20), plain.log_likelihood(x, k=20))
    with pytest.raises(CodecError, match="fit-prior"):
        compress(model, torch.randint(0, 17, (5, 1, 8, 8)).numpy())
    # resumed on a machine that chooses otherwise: the recorded prior stays loadable, and is fitted again
    config["resolved"]["precision"] = "elsewhere"
    (run.run_dir / "config.json").write_text(json.dumps(config))
    again = vaekit.resume(run.run_dir, quiet=True)
    assert again.model.config.top_mixture == 4 and vaekit.load(run.run_dir).top_prior is not None


@pytest.mark.parametrize(
    "options, message",
    [
        ({"fit_prior": 4}, "needs a hierarchical model"),
        ({"fit_prior": 4, "layers": (4, 2), "arch": "spatial"}, "needs a hierarchical model"),
        ({"fit_prior": 300, "layers": (4, 2)}, "1..256 components"),
    ],
)
def test_fit_prior_needs_a_dense_top_layer_and_a_sane_size(tmp_path, options, message):
    with pytest.raises(OptionError, match=message):
        vaekit.train("digits", tmp_path / "r", epochs=1, quiet=True, **options)
