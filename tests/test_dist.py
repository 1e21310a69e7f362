"""Distributions against closed forms, torch.distributions and Monte-Carlo estimates."""

import math

import pytest
import torch
from torch import distributions as D

from vaekit.dist import Bernoulli, DiagonalGaussian, DiscretizedLogistic, DiscretizedLogisticMixture, Gaussian


def test_gaussian_kl_closed_form_matches_monte_carlo():
    torch.manual_seed(0)
    q = DiagonalGaussian(torch.tensor([[0.5, -1.0, 2.0]]), torch.tensor([[-1.0, 0.3, 0.0]]))
    z = q.rsample(200_000)  # (n, 1, 3)
    prior = DiagonalGaussian.standard((3,))
    mc = (q.log_prob(z) - prior.log_prob(z)).mean()
    exact = q.kl_standard_normal_per_dim().sum()
    stderr = (q.log_prob(z) - prior.log_prob(z)).std() / math.sqrt(len(z))
    assert abs(mc - exact) < 4 * stderr
    reference = D.kl_divergence(D.Normal(q.mean, q.stddev), D.Normal(0.0, 1.0)).sum()
    assert torch.allclose(exact, reference, atol=1e-6)


def test_diagonal_gaussian_log_prob_and_temperature():
    q = DiagonalGaussian(torch.randn(4, 5), torch.randn(4, 5))
    z = torch.randn(4, 5)
    assert torch.allclose(q.log_prob(z), D.Normal(q.mean, q.stddev).log_prob(z).sum(-1), atol=1e-5)
    cold = DiagonalGaussian.standard((2,)).rsample(50_000, temperature=0.5, generator=torch.Generator().manual_seed(0))
    assert abs(cold.std().item() - 0.5) < 0.01


def test_bernoulli_and_gaussian_log_prob_match_torch():
    logits, x = torch.randn(3, 1, 4, 4) * 5, torch.randint(0, 2, (3, 1, 4, 4)).float()
    assert torch.allclose(
        Bernoulli(logits).log_prob(x), D.Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1), atol=1e-4
    )
    loc, logvar, y = torch.randn(3, 6), torch.randn(3, 6), torch.randn(3, 6)
    expected = D.Normal(loc, torch.exp(0.5 * logvar)).log_prob(y).sum(1)
    assert torch.allclose(Gaussian(loc, logvar).log_prob(y), expected, atol=1e-5)


def test_bernoulli_log_prob_is_exact_for_confident_logits_and_broadcasts_over_samples():
    logits = torch.tensor([[-60.0, -15.0, -1e-3, 0.0, 2.5, 15.0, 60.0]] * 2).view(1, 2, 7).expand(3, 2, 7).clone()
    logits[1] *= 0.5
    x = torch.tensor([[1.0, 0, 1, 0, 1, 1, 0], [0.0, 1, 0, 1, 0, 0, 1]])
    exact = -torch.nn.functional.softplus(-logits.double() * (2 * x.double() - 1)).sum(-1)
    ours = Bernoulli(logits).log_prob(x)  # logits (samples, batch, dim), x (batch, dim)
    assert ours.shape == (3, 2)
    assert torch.allclose(ours.double(), exact, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_discretized_logistic_is_a_normalised_pmf(levels):
    torch.manual_seed(levels)
    dist = DiscretizedLogistic(torch.rand(5, 3) * 1.4 - 0.2, torch.randn(5, 3) - 2, levels)
    probs = dist.probs().double()
    assert torch.allclose(probs.sum(-1), torch.ones(5, 3, dtype=torch.float64), atol=1e-4)


def test_discretized_logistic_matches_cdf_differences():
    levels = 17
    loc, log_scale = torch.tensor([[0.3]], dtype=torch.float64), torch.tensor([[-2.0]], dtype=torch.float64)
    dist = DiscretizedLogistic(loc, log_scale, levels)
    for k in range(levels):
        x = torch.tensor([[float(k)]], dtype=torch.float64)
        lo = -math.inf if k == 0 else (k - 0.5) / (levels - 1)
        hi = math.inf if k == levels - 1 else (k + 0.5) / (levels - 1)

        def cdf(t):  # the logistic CDF, in plain float64 arithmetic
            return 1.0 / (1.0 + math.exp(-(t - 0.3) / math.exp(-2.0))) if math.isfinite(t) else float(t > 0)

        assert dist.log_prob(x).exp().item() == pytest.approx(cdf(hi) - cdf(lo), rel=1e-9, abs=1e-12)


def test_discretized_logistic_stays_finite_far_from_the_data():
    dist = DiscretizedLogistic(torch.tensor([[50.0, -50.0, 0.5]]), torch.tensor([[-7.0, -7.0, -7.0]]), 256)
    logp = dist.log_prob(torch.tensor([[0.0, 255.0, 128.0]]).view(1, 3))
    assert torch.isfinite(logp).all() and logp.item() < -1e4


def test_discretized_logistic_samples_follow_its_probabilities():
    dist = DiscretizedLogistic(torch.full((20_000,), 0.45), torch.full((20_000,), -2.0), 9)
    counts = torch.bincount(dist.sample(torch.Generator().manual_seed(0)).long(), minlength=9).double()
    expected = dist.probs()[0].double() * 20_000
    chi2 = ((counts - expected) ** 2 / expected.clamp_min(1e-9)).sum()
    assert chi2 < 30  # 8 degrees of freedom: p < 0.001
    mean = dist.mean[0].item()
    assert mean == pytest.approx((torch.arange(9.0) * dist.probs()[0]).sum().item())


def test_a_logistic_mixture_is_the_weighted_sum_of_its_components():
    torch.manual_seed(1)
    logits, loc, log_scale = torch.randn(4, 3, 5), torch.rand(4, 3, 5), torch.randn(4, 3, 5) - 2
    mixture = DiscretizedLogisticMixture(logits, loc, log_scale, 17, item_dims=1)  # 4 items of 5 values, 3 components
    probs = mixture.probs().double()
    assert torch.allclose(probs.sum(-1), torch.ones(4, 5, dtype=torch.float64), atol=1e-5)
    x = torch.randint(0, 17, (4, 5)).float()
    weights = torch.softmax(logits.double(), 1)
    direct = sum(
        weights[:, m] * DiscretizedLogistic(loc[:, m], log_scale[:, m], 17)._log_prob_elementwise(x).double().exp()
        for m in range(3)
    )
    assert torch.allclose(mixture.log_prob(x).double(), direct.log().sum(-1), rtol=1e-5)
    assert torch.allclose(mixture.mean.double(), (torch.arange(17.0, dtype=torch.float64) * probs).sum(-1), rtol=1e-4)


def test_logistic_mixture_samples_follow_its_probabilities():
    n = 20_000
    logits, loc = torch.tensor([0.0, 1.0]).expand(n, 2), torch.tensor([0.1, 0.8]).expand(n, 2)
    mixture = DiscretizedLogisticMixture(logits[..., None], loc[..., None], torch.full((n, 2, 1), -2.5), 9, 1)
    counts = torch.bincount(mixture.sample(torch.Generator().manual_seed(0)).long().flatten(), minlength=9).double()
    expected = mixture.probs()[0, 0].double() * n
    chi2 = ((counts - expected) ** 2 / expected.clamp_min(1e-9)).sum()
    assert chi2 < 30  # 8 degrees of freedom: p < 0.001
