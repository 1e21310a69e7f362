"""The VAE's interface, its ELBO pieces, and save -> load."""

import json

import pytest
import torch

import vaekit
from vaekit import io as model_io
from vaekit.data import DataSpec
from vaekit.errors import ModelFileError, OptionError
from vaekit.models import VAE, ModelConfig

SPECS = {
    "discretized_logistic": DataSpec("levels", (1, 8, 8), levels=17),
    "bernoulli": DataSpec("levels", (1, 8, 8), levels=17),
    "gaussian": DataSpec("real", (5,), mean=(0.0,) * 5, std=(1.0,) * 5),
}


def make(likelihood, arch="mlp"):
    torch.manual_seed(0)
    return VAE(ModelConfig.for_data(SPECS[likelihood], likelihood, arch, latent_dim=3, hidden=(16,)))


def data_for(model, n=6):
    spec = model.spec
    if spec.kind == "real":
        return torch.randn(n, *spec.shape)
    return model.prepare(torch.randint(0, spec.levels, (n, *spec.shape)), torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    "likelihood,arch", [*((k, "mlp") for k in SPECS), ("discretized_logistic", "conv"), ("bernoulli", "conv")]
)
def test_interface_shapes(likelihood, arch):
    model = make(likelihood, arch)
    x = data_for(model)
    post = model.encode(x)
    assert post.mean.shape == (6, 3) and post.stddev.shape == (6, 3)
    r = model.elbo(x)
    assert r.elbo.shape == (6,) and torch.allclose(r.elbo, r.reconstruction - r.kl)
    assert model.sample(4).shape == (4, *model.spec.shape)
    assert model.decode(post.rsample()).log_prob(x).shape == (6,)


def test_elbo_reconstruction_term_is_an_unbiased_monte_carlo_estimate():
    model = make("discretized_logistic")
    x = data_for(model, 2)
    post = model.encode(x)
    z = post.rsample(1000)  # (n, batch, latent)
    expected = torch.stack([model.decode(zi).log_prob(x) for zi in z])
    single = torch.stack([model.elbo(x).reconstruction for _ in range(1000)]).detach()
    assert torch.allclose(single.mean(0), expected.mean(0).detach(), atol=4 * expected.std(0).max().item() / 30)


def test_elbo_lower_bounds_the_importance_sampled_log_likelihood():
    model = make("bernoulli")
    x = data_for(model, 8)
    torch.manual_seed(1)
    elbo = torch.stack([model.elbo(x).elbo for _ in range(200)]).mean(0).detach().double()
    assert (model.log_likelihood(x, k=500) >= elbo - 0.05).all()


def test_sample_temperature_zero_is_the_decoded_prior_mean():
    model = make("gaussian")
    a, b = model.sample(3, temperature=0.0), model.decode(torch.zeros(1, 3)).mean
    assert torch.allclose(a, b.expand_as(a))
    with pytest.raises(OptionError, match="temperature"):
        model.sample(3, temperature=-1)


def test_default_model_fits_the_data():
    assert ModelConfig.for_data(SPECS["discretized_logistic"]).likelihood == "discretized_logistic"
    assert ModelConfig.for_data(SPECS["gaussian"]).likelihood == "gaussian"
    with pytest.raises(OptionError, match="does not fit"):
        ModelConfig.for_data(SPECS["gaussian"], "bernoulli")
    with pytest.raises(OptionError, match="conv architecture needs image data"):
        ModelConfig.for_data(SPECS["gaussian"], arch="conv")


def test_save_load_gives_identical_outputs(tiny_run):
    loaded = vaekit.load(tiny_run.run_dir)
    x = data_for(loaded, 5)
    for a, b in ((tiny_run.model, loaded),):
        assert torch.equal(a.encode(x).mean, b.encode(x).mean)
        z = torch.randn(4, a.latent_dim)
        assert torch.equal(a.decode(z).mean, b.decode(z).mean)
        assert torch.equal(
            a.sample(3, generator=torch.Generator().manual_seed(2)),
            b.sample(3, generator=torch.Generator().manual_seed(2)),
        )


def test_loading_refuses_what_is_not_a_model(tmp_path, tiny_run):
    with pytest.raises(ModelFileError, match="no such run folder"):
        vaekit.load(tmp_path / "nothing")
    with pytest.raises(ModelFileError, match=r"not a vaekit run folder \(no config.json\)"):
        vaekit.load(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{ not json")
    with pytest.raises(ModelFileError, match="config.json: corrupt JSON"):
        vaekit.load(bad)
    config = json.loads((tiny_run.run_dir / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps(config))
    (bad / "model.safetensors").write_bytes(b"\x00" * 50)
    with pytest.raises(ModelFileError, match="model.safetensors: corrupt safetensors file"):
        vaekit.load(bad)
    config["model"]["latent_dim"] = 5
    (bad / "config.json").write_text(json.dumps(config))
    (bad / "model.safetensors").write_bytes((tiny_run.run_dir / "model.safetensors").read_bytes())
    with pytest.raises(ModelFileError, match="weights do not match the config"):
        vaekit.load(bad)
    (bad / "model.safetensors").unlink()
    with pytest.raises(ModelFileError, match="model.safetensors: missing"):
        model_io.load(bad)
