"""Estimators against known answers: a linear-Gaussian VAE is probabilistic PCA, whose log p(x) is exact."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from vaekit.data import DataSpec
from vaekit.dist import DiagonalGaussian, GaussianMixture
from vaekit.errors import VaekitError
from vaekit.evaluate import negative_log_likelihood
from vaekit.importance import RunningLogMeanExp
from vaekit.models import VAE, ModelConfig

D, L, NOISE_VAR = 6, 2, 0.25
SCALES = torch.tensor([2.0, 1.0], dtype=torch.float64)


def ppca(perturb: bool = False):
    """A VAE whose decoder is x = W z + b + N(0, NOISE_VAR I); W has orthogonal columns, so the exact
    posterior is diagonal and a linear encoder can hold it. `perturb` makes the encoder suboptimal.
    Returns (model, W, b)."""
    gen = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(D, L, generator=gen, dtype=torch.float64))
    w, b = u * SCALES, torch.randn(D, generator=gen, dtype=torch.float64)
    spec = DataSpec("real", (D,), mean=(0.0,) * D, std=(1.0,) * D)
    model = VAE(ModelConfig(spec, "gaussian", "mlp", L, hidden=()))
    precision = 1 / (SCALES**2 + NOISE_VAR)  # the posterior: N(M^-1 W^T (x - b), NOISE_VAR M^-1), M diagonal
    enc_w = precision[:, None] * w.T
    enc_logvar = torch.log(NOISE_VAR * precision)
    if perturb:
        enc_w, enc_logvar = 0.7 * enc_w, enc_logvar + 0.8
    with torch.no_grad():
        (enc,), (dec,) = model.encoder.net, model.decoder.net
        enc.weight.copy_(torch.cat([enc_w, torch.zeros(L, D, dtype=torch.float64)]))
        enc.bias.copy_(torch.cat([-enc_w @ b, enc_logvar]))
        dec.weight.copy_(torch.cat([w, torch.zeros(D, L, dtype=torch.float64)]))
        dec.bias.copy_(torch.cat([b, torch.full((D,), math.log(NOISE_VAR), dtype=torch.float64)]))
    return model.eval(), w, b


def exact_log_px(x, w, b):
    return MultivariateNormal(b, w @ w.T + NOISE_VAR * torch.eye(D, dtype=torch.float64)).log_prob(x.double())


def data(w, b, n=50):
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(n, L, generator=gen, dtype=torch.float64)
    return (z @ w.T + b + math.sqrt(NOISE_VAR) * torch.randn(n, D, generator=gen, dtype=torch.float64)).float()


@torch.no_grad()
def mean_elbo(model, x, draws=4000):
    """The ELBO averaged over many reparameterisation draws per item, and that average's standard error."""
    gen = torch.Generator().manual_seed(2)
    reps = x.repeat(draws, 1)
    values = model.elbo(reps, torch.randn(len(reps), L, generator=gen)).elbo.view(draws, len(x)).double()
    return values.mean(0), values.std(0) / math.sqrt(draws)


def test_optimal_encoder_makes_the_elbo_and_every_importance_weight_exact():
    model, w, b = ppca()
    x = data(w, b)
    exact = exact_log_px(x, w, b)
    est = model.importance_sampled(x, k=20, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(est.log_px, exact, atol=2e-3)
    assert est.stderr.max() < 1e-3  # every weight equals p(x)
    assert torch.allclose(est.effective_sample_size(), torch.full((len(x),), 20.0, dtype=torch.float64), rtol=1e-4)
    elbo, se = mean_elbo(model, x)
    assert ((elbo - exact).abs() <= 4 * se + 2e-3).all()


def test_suboptimal_encoder_orders_elbo_is_estimate_and_exact_and_is_converges_with_k():
    model, w, b = ppca(perturb=True)
    x = data(w, b)
    exact = exact_log_px(x, w, b)
    elbo, _ = mean_elbo(model, x)
    gen = torch.Generator().manual_seed(4)
    small = model.importance_sampled(x, k=1, generator=gen).log_px
    large = model.importance_sampled(x, k=5000, generator=gen)
    assert (elbo < exact - 0.05).all()  # the perturbation costs something: the test can fail
    assert (elbo < large.log_px).all()
    assert (large.log_px <= exact + 3 * large.stderr + 1e-3).all()
    assert (large.log_px - exact).abs().mean() < 0.1 * (small - exact).abs().mean()
    assert ((large.log_px - exact).abs() <= 5 * large.stderr + 2e-3).float().mean() > 0.95


def test_running_log_mean_exp_matches_logsumexp_for_huge_weights_fed_in_passes():
    gen = torch.Generator().manual_seed(5)
    log_w = torch.randn(300, 4, generator=gen, dtype=torch.float64) * 5 - torch.tensor([1e4, 0.0, -700.0, 3e3])
    running = RunningLogMeanExp(4)
    for part in log_w.split([1, 120, 179]):
        running.add(part)
    est = running.estimate()
    assert torch.allclose(est.log_px, torch.logsumexp(log_w, 0) - math.log(300), atol=1e-9)
    shifted = torch.exp(log_w - log_w.max(0).values)  # the delta method, directly
    assert torch.allclose(est.stderr, shifted.std(0) / math.sqrt(300) / shifted.mean(0), rtol=1e-9)
    assert est.k == 300
    ess = shifted.sum(0) ** 2 / (shifted**2).sum(0)  # the effective sample size, directly
    assert torch.allclose(est.effective_sample_size(), ess, rtol=1e-9)


def test_gaussian_kl_in_closed_form_matches_monte_carlo():
    gen = torch.Generator().manual_seed(6)
    q = DiagonalGaussian(torch.tensor([0.5, -1.0]), torch.tensor([-0.5, 0.7]))
    p = DiagonalGaussian(torch.tensor([0.2, 0.3]), torch.tensor([0.4, -0.2]))
    z = q.rsample(400_000, generator=gen)
    log_ratio_q = -0.5 * (math.log(2 * math.pi) + q.logvar + (z - q.mean) ** 2 * torch.exp(-q.logvar))
    log_ratio_p = -0.5 * (math.log(2 * math.pi) + p.logvar + (z - p.mean) ** 2 * torch.exp(-p.logvar))
    monte_carlo = (log_ratio_q - log_ratio_p).mean(0)
    assert torch.allclose(q.kl_per_dim(p), monte_carlo, atol=0.01)
    standard = DiagonalGaussian.standard((2,))
    assert torch.allclose(q.kl_standard_normal_per_dim(), q.kl_per_dim(standard), atol=1e-6)
    assert q.kl_per_dim(q).abs().max() < 1e-6


def test_mixture_log_density_is_the_direct_sum_over_components():
    gen = torch.Generator().manual_seed(7)
    means, logvars = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen) * 0.3
    mixture = GaussianMixture(means, logvars)
    z = torch.randn(10, 3, generator=gen)
    direct = torch.zeros(10, dtype=torch.float64)
    for m, lv in zip(means.double(), logvars.double(), strict=True):
        density = torch.exp(-0.5 * (math.log(2 * math.pi) + lv + (z.double() - m) ** 2 / lv.exp()).sum(-1))
        direct += density / 5
    assert torch.allclose(mixture.log_prob(z).double(), direct.log(), atol=1e-5)
    draws = mixture.rsample(200_000, generator=gen)
    assert torch.allclose(draws.mean(0), means.mean(0), atol=0.02)


@pytest.mark.parametrize("k", [1, 3])
@torch.no_grad()
def test_iwae_bound_lies_between_the_elbo_and_log_px_and_tightens_with_k(k):
    model, w, b = ppca(perturb=True)
    x = data(w, b, n=20)
    exact = exact_log_px(x, w, b)
    gen = torch.Generator().manual_seed(8)

    def iwae_draws(samples, draws=3000):
        noise = torch.randn(draws, samples, len(x), L, generator=gen)
        values = torch.stack([model.iwae(x, eps).objective for eps in noise]).double()
        return values.mean(0), values.std(0) / math.sqrt(draws)

    (bound, bound_se), (tighter, _) = iwae_draws(k), iwae_draws(4 * k)
    elbo, elbo_se = mean_elbo(model, x)
    assert (bound <= exact + 0.02).all() and (tighter <= exact + 0.02).all()
    assert (tighter > bound).float().mean() > 0.9
    if k == 1:  # IWAE with one sample is the ELBO (with a sampled instead of a closed-form KL)
        assert ((bound - elbo).abs() <= 4 * torch.sqrt(bound_se**2 + elbo_se**2)).all()
    else:
        assert (bound > elbo).all()


class Interrupted(Exception):
    pass


def interrupt_after(model, calls: int):
    """Make the model's importance sampler fail on call number `calls` + 1, as a killed process would."""
    sampler, count = model.importance_sampled, [0]

    def sample(*args):
        count[0] += 1
        if count[0] > calls:
            raise Interrupted
        return sampler(*args)

    model.importance_sampled = sample
    return count


def test_an_interrupted_nll_resumes_from_its_checkpoint_to_the_unbroken_runs_exact_figures(tmp_path):
    model, w, b = ppca(perturb=True)
    x, file = data(w, b, n=40), tmp_path / "nll.safetensors"
    unbroken = negative_log_likelihood(model, x, 200, batch_size=8, progress=False)
    assert unbroken["nll"] == pytest.approx(-float(exact_log_px(x, w, b).mean()), abs=5 * unbroken["nll_stderr"] + 0.01)

    interrupt_after(model, 3)
    with pytest.raises(Interrupted):
        negative_log_likelihood(model, x, 200, batch_size=8, progress=False, checkpoint=file, checkpoint_seconds=0)
    del model.importance_sampled
    calls = interrupt_after(model, 99)
    resumed = negative_log_likelihood(model, x, 200, batch_size=8, progress=False, checkpoint=file)
    assert calls[0] == 2  # batches 4 and 5 of 5: the first three came from the file
    assert resumed == unbroken  # the same samples, so the same figures to the last bit

    calls[0] = 0
    assert negative_log_likelihood(model, x, 200, batch_size=8, progress=False, checkpoint=file) == unbroken
    assert calls[0] == 0  # a finished file answers without sampling


def test_nll_figures_do_not_depend_on_how_many_processes_estimate_them():
    model, w, b = ppca(perturb=True)
    x = data(w, b, n=40)
    alone = negative_log_likelihood(model, x, 200, batch_size=8, progress=False)
    shared = negative_log_likelihood(model, x, 200, batch_size=8, progress=False, workers=2)
    # each batch has its own seed, so two processes draw the very samples one does; only the float
    # arithmetic may differ, with their other thread counts
    assert shared == pytest.approx(alone, rel=1e-6) and alone["nll_stderr"] > 1e-3
    # the suboptimal encoder: the weights differ, so fewer than k samples count, but far more than one
    assert 10 < alone["nll_ess_median"] < 200
    reseeded = negative_log_likelihood(model, x, 200, batch_size=8, progress=False, seed=1)
    assert abs(reseeded["nll"] - alone["nll"]) > 1e-4  # another seed: other samples, another figure


def test_an_nll_checkpoint_is_refused_for_other_settings_or_weights_and_when_corrupt(tmp_path):
    model, w, b = ppca(perturb=True)
    x, file = data(w, b, n=16), tmp_path / "nll.safetensors"
    negative_log_likelihood(model, x, 50, batch_size=8, progress=False, checkpoint=file)
    for changed in (dict(k=51), dict(batch_size=4), dict(seed=1), dict(x=x + 0.5)):
        options = dict(model=model, x=x, k=50, batch_size=8, progress=False, checkpoint=file) | changed
        with pytest.raises(VaekitError, match="saved for another model, data set, k, seed or batch size"):
            negative_log_likelihood(**options)
    with torch.no_grad():
        model.decoder.net[0].bias[0] += 1e-3
    with pytest.raises(VaekitError, match=str(file)):
        negative_log_likelihood(model, x, 50, batch_size=8, progress=False, checkpoint=file)
    file.write_bytes(b"not a checkpoint")
    with pytest.raises(VaekitError, match="not a readable log-likelihood checkpoint"):
        negative_log_likelihood(model, x, 50, batch_size=8, progress=False, checkpoint=file)
