"""The hierarchical VAE: its densities against numerical integration, its KL against sampling, and the interface."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

import vaekit
from vaekit.cli import main
from vaekit.data import DataSpec
from vaekit.errors import OptionError
from vaekit.hierarchical import joined_linear
from vaekit.models import ModelConfig, build
from vaekit.nn import ConvHead, SubPixelConvTranspose2d, latent_grid, patch_embedding

SPEC = DataSpec("levels", (3,), levels=2)


def tiny(seed=0, layer_norm=False, spec=SPEC, arch="mlp", patches=False, noise_maps=False):
    """Two stochastic layers of one dimension each over a few binary pixels, with random weights."""
    torch.manual_seed(seed)
    config = ModelConfig.for_data(
        spec, "bernoulli", arch, hidden=(8,), layers=(1, 1), layer_norm=layer_norm, patches=patches,
        noise_maps=noise_maps,
    )  # fmt: skip
    model = build(config)
    with torch.no_grad():
        for p in model.parameters():  # the zero-initialised layers too, so that every path matters
            p.add_(0.3 * torch.randn_like(p))
        for name, p in model.named_parameters():  # q stays a usable proposal: heavy-tailed weights need huge k
            if "posterior" in name:
                p.mul_(0.3)
    return model.eval()


ALL_X = torch.tensor([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=torch.float32)


@torch.no_grad()
def log_px_by_quadrature(model, x, points=601, extent=12.0):
    """log p(x) = log of the double integral of p(x|z1,z2) p(z1|z2) p(z2) on a grid."""
    grid = torch.linspace(-extent, extent, points)
    step = (grid[1] - grid[0]).item()
    z = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).view(-1, 2)  # (z1, z2) pairs
    log_joint = model.prior.log_prob(z)  # p(z1|z2) p(z2) along the shared top-down path
    log_lik = torch.stack([model.decode(z).log_prob(xi.expand(len(z), *xi.shape)) for xi in x])
    return torch.logsumexp(log_lik + log_joint, 1) + 2 * math.log(step)


@pytest.mark.parametrize("layer_norm", [False, True])
def test_prior_density_integrates_to_one_and_the_likelihood_sums_to_one(layer_norm):
    model = tiny(layer_norm=layer_norm)
    exact = log_px_by_quadrature(model, ALL_X)
    assert abs(torch.logsumexp(exact, 0).item()) < 1e-3  # sum over all x of p(x) = 1


@pytest.mark.parametrize("layer_norm", [False, True])
def test_importance_sampled_log_px_matches_quadrature(layer_norm):
    model = tiny(layer_norm=layer_norm)
    exact = log_px_by_quadrature(model, ALL_X)
    est = model.importance_sampled(ALL_X, k=4000, generator=torch.Generator().manual_seed(1))
    assert ((est.log_px - exact).abs() <= 4 * est.stderr + 1e-3).all()
    elbo = model.elbo(ALL_X.repeat(2000, 1), torch.randn(8 * 2000, 2, generator=torch.Generator().manual_seed(2)))
    assert (elbo.elbo.view(2000, 8).mean(0) < exact).all()


@torch.no_grad()
def test_closed_form_kl_is_the_mean_of_the_sampled_log_ratio():
    model = tiny()
    gen = torch.Generator().manual_seed(3)
    n = 20000
    noise = torch.randn(n, 8, 2, generator=gen)
    analytic = model.elbo(ALL_X.repeat(n, 1), noise.view(-1, 2)).kl.view(n, 8)
    _, log_ratio = model.log_weights(ALL_X, noise)
    se = torch.sqrt(analytic.var(0) / n + log_ratio.var(0) / n)
    assert ((analytic.mean(0) + log_ratio.mean(0)).abs() <= 4 * se).all()


@torch.no_grad()
def test_prior_draws_follow_the_prior_density():
    """Self-normalised check: the mean of log p(z) over draws equals minus the prior's entropy estimated by sampling."""
    model = tiny()
    z = model.prior.rsample(50000, generator=torch.Generator().manual_seed(4))
    cold = model.prior.rsample(50000, temperature=0.5, generator=torch.Generator().manual_seed(4))
    assert z.shape == (50000, 2)
    assert cold.std(0).max() < z.std(0).min()  # temperature shrinks every layer's spread
    top = z[:, 1]  # p(z2) = N(0, 1)
    assert abs(top.mean()) < 0.02 and abs(top.std() - 1) < 0.02


def test_trains_saves_loads_and_evaluates_through_the_common_interface(tmp_path):
    run = vaekit.train("digits", tmp_path / "h", layers=(4, 2), hidden=(32,), epochs=3, quiet=True, patience=None)
    model = vaekit.load(run.run_dir)
    assert type(model).__name__ == "HierarchicalVAE" and model.latent_dim == 6
    x = model.prepare(torch.randint(0, 17, (5, 1, 8, 8)))
    assert model.encode(x).mean.shape == (5, 6)
    assert model.sample(4, generator=torch.Generator().manual_seed(0)).shape == (4, 1, 8, 8)
    assert model.elbo(x).kl_per_dim.shape == (5, 6)
    assert torch.isfinite(model.log_likelihood(x, k=10)).all()
    assert run.metrics[-1]["heldout_neg_elbo"] < run.metrics[0]["heldout_neg_elbo"]


def test_layer_norm_from_the_command_line_is_trained_saved_and_recorded_only_when_asked(tmp_path):
    out = tmp_path / "n"
    args = ["train", "--data", "digits", "--out", out, "--layers", "4,2", "--hidden", "32", "--layer-norm"]
    assert main([str(a) for a in [*args, "--epochs", "2", "--quiet"]]) == 0
    model = vaekit.load(out)
    assert model.config.layer_norm and all(cell.norm is not None for cell in [*model.bottom_up, *model.top_down])
    assert not torch.equal(model.top_down[0].norm.weight, torch.ones(32))  # trained, and saved with the rest
    assert torch.isfinite(model.log_likelihood(model.prepare(torch.randint(0, 17, (5, 1, 8, 8))), k=10)).all()
    assert "layer_norm" not in ModelConfig.for_data(SPEC, "bernoulli", hidden=(8,), layers=(1, 1)).to_dict()
    recorded = ModelConfig.for_data(SPEC, "bernoulli", hidden=(8,), layers=(1, 1), layer_norm=True).to_dict()
    assert ModelConfig.from_dict(json.loads(json.dumps(recorded))).layer_norm is True


def test_layer_norm_needs_layers_and_a_boolean():
    with pytest.raises(OptionError, match="needs a hierarchical model"):
        ModelConfig.for_data(SPEC, "bernoulli", hidden=(8,), layer_norm=True)
    recorded = ModelConfig.for_data(SPEC, "bernoulli", hidden=(8,), layers=(1, 1), layer_norm=True).to_dict()
    with pytest.raises(ValueError, match="layer_norm must be true or false"):
        ModelConfig.from_dict({**recorded, "layer_norm": "yes"})


IMAGE = DataSpec("levels", (1, 2, 2), levels=2)  # 16 binary images: p(x) can be summed over all of them
ALL_IMAGES = torch.tensor([[a, b, c, d] for a in (0, 1) for b in (0, 1) for c in (0, 1) for d in (0, 1)]).float()
TWO_CHANNELS = DataSpec("levels", (2, 1, 1), levels=2)  # a one-pixel image of two binary channels: 1x1 maps
ALL_PIXELS = torch.tensor([[a, b] for a in (0, 1) for b in (0, 1)]).float().view(4, 2, 1, 1)


@torch.no_grad()
def test_conv_head_starts_at_zero_and_keeps_leading_dimensions_apart():
    torch.manual_seed(0)
    spec = DataSpec("levels", (1, 8, 8), levels=2)
    model = build(ModelConfig.for_data(spec, "bernoulli", "conv", hidden=(16,), layers=(3, 2)))
    h = torch.randn(4, 5, 16)
    assert torch.equal(model.out_conv(h), torch.zeros(4, 5, 64))  # a fresh model is the dense one
    for p in model.out_conv.parameters():
        p.add_(torch.randn_like(p))
    together = model.out_conv(h)
    apart = torch.stack([torch.stack([model.out_conv(h[i, j : j + 1])[0] for j in range(5)]) for i in range(4)])
    assert together.abs().min() > 0 and torch.allclose(together, apart, atol=1e-5)


@torch.no_grad()
def test_conv_head_keeps_the_plain_convolutions_order_of_outputs():
    # it runs its convolutions channels-last for speed; its flat output must stay parameter, channel, row, column
    torch.manual_seed(0)
    head = ConvHead(16, (3, 8, 8), n_params=2)
    for p in head.parameters():
        p.add_(torch.randn_like(p))
    h = torch.randn(5, 16)
    plain = head.conv(head.head(h).view(-1, *head.start).contiguous()).flatten(1)
    assert plain.abs().min() > 0 and torch.allclose(head(h), plain, atol=1e-5)


@torch.no_grad()
def test_patches_reach_the_pixels_of_their_own_square_and_its_neighbours():
    torch.manual_seed(0)
    embed = patch_embedding(1, 16, halvings=2)  # 28x28 pixels to 7x7 positions, each a 4x4 square
    x = torch.rand(1, 1, 28, 28)
    moved = x.clone()
    moved[0, 0, 9, 14] += 1.0  # row 9, column 14: the square at position (2, 3)
    changed = (embed(moved) - embed(x)).abs().sum(1)[0] > 0
    assert changed.nonzero().tolist() == [[2, 3]]
    head = ConvHead(8, (1, 28, 28), n_params=1, patches=True)
    for p in head.parameters():
        p.add_(torch.randn_like(p))
    maps = torch.randn(1, *head.start)
    nudged = maps.clone()
    nudged[0, :, 3, 3] += 1.0  # position (3, 3), the square of pixels 12..15 on both sides
    changed = (head.from_maps(nudged) - head.from_maps(maps)).view(28, 28) != 0
    rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
    # its 3x3 convolution reaches the squares around it: pixels 8..19
    assert rows.tolist() == cols.tolist() == list(range(8, 20)) and changed.sum() == 144


def test_sub_pixel_transposed_convolution_computes_the_transposed_convolution():
    torch.manual_seed(0)
    layer = SubPixelConvTranspose2d(16, 3)
    x = torch.randn(2, 16, 5, 6, requires_grad=True)
    out = layer(x)
    plain = F.conv_transpose2d(x, layer.weight, layer.bias, stride=2, padding=1)
    assert out.shape == plain.shape == (2, 3, 10, 12) and torch.allclose(out, plain, atol=1e-5)
    push = torch.randn_like(out)
    for ours, theirs in zip(
        torch.autograd.grad(out, [x, layer.weight, layer.bias], push),
        torch.autograd.grad(plain, [x, layer.weight, layer.bias], push),
        strict=True,
    ):
        assert torch.allclose(ours, theirs, atol=1e-4)
    # a conv head's last layer (16 maps to one logit per pixel) takes that form; 16 to 16 keeps the plain one
    layers = list(ConvHead(8, (1, 28, 28), n_params=1).conv)
    assert type(layers[-1]) is SubPixelConvTranspose2d and type(layers[1]) is torch.nn.ConvTranspose2d


def test_posterior_layer_on_the_joined_input_meets_each_item_once():
    torch.manual_seed(0)
    layer = torch.nn.Linear(10, 4)
    h, f = torch.randn(7, 3, 5), torch.randn(3, 5)  # 7 samples of the state of 3 items, and the items' features
    joined = layer(torch.cat([h, f.expand_as(h)], -1))
    assert torch.allclose(joined_linear(layer, h, f), joined, atol=1e-6)


def test_conv_head_from_the_command_line_trains_saves_and_loads(tmp_path):
    out = tmp_path / "c"
    args = ["train", "--data", "digits", "--out", out, "--layers", "4,2", "--hidden", "32", "--arch", "conv"]
    assert main([str(a) for a in [*args, "--epochs", "2", "--quiet"]]) == 0
    model = vaekit.load(out)
    assert model.config.arch == "conv" and model.out_conv.conv[-1].weight.abs().sum() > 0  # trained and saved
    assert torch.isfinite(model.log_likelihood(model.prepare(torch.randint(0, 17, (5, 1, 8, 8))), k=10)).all()
    with pytest.raises(OptionError, match="needs image data"):
        ModelConfig.for_data(SPEC, "bernoulli", "conv", hidden=(8,), layers=(1, 1))


@pytest.mark.parametrize(
    "arch, options",
    [
        ("conv", {}), ("conv", {"patches": True}), ("spatial", {}), ("spatial", {"layer_norm": True}),
        ("hybrid", {}), ("hybrid", {"layer_norm": True}), ("hybrid", {"layer_norm": True, "patches": True}),
        ("hybrid", {"noise_maps": True}),
    ],
)  # fmt: skip
@torch.no_grad()
def test_convolutional_models_are_normalised_densities_and_importance_sampling_finds_them(arch, options):
    # the conv head on 2x2 images; latent maps on one pixel of two channels (1x1 maps: two latent values; the
    # hybrid's are one map value and one dense value)
    spec, x = (IMAGE, ALL_IMAGES.view(16, 1, 2, 2)) if arch == "conv" else (TWO_CHANNELS, ALL_PIXELS)
    model = tiny(spec=spec, arch=arch, **options)  # zero-initialised layers made random
    wide = dict(points=1001, extent=20.0) if arch == "hybrid" else {}  # its random map prior reaches sd 7 at mean 4
    exact = log_px_by_quadrature(model, x, **wide)
    assert abs(torch.logsumexp(exact, 0).item()) < 1e-3
    est = model.importance_sampled(x, k=4000, generator=torch.Generator().manual_seed(1))
    assert ((est.log_px - exact).abs() <= 4 * est.stderr + 1e-3).all()


def test_latent_maps_are_on_a_grid_of_up_to_two_halvings():
    assert [latent_grid(shape) for shape in [(1, 28, 28), (3, 32, 32), (1, 8, 8), (1, 6, 6)]] == [
        (7, 7), (8, 8), (4, 4), (6, 6)
    ]  # fmt: skip


# spatial: every layer is maps (channels); hybrid: the bottom layer is maps, the others dense
@pytest.mark.parametrize("arch, sizes", [("spatial", (48, 32)), ("hybrid", (48, 2))])
@torch.no_grad()
def test_map_models_start_with_q_at_p_and_keep_samples_apart(arch, sizes):
    torch.manual_seed(0)
    spec = DataSpec("levels", (1, 8, 8), levels=2)
    model = build(ModelConfig.for_data(spec, "bernoulli", arch, hidden=(6,), layers=(3, 2)))
    assert model.sizes == sizes and model.latent_dim == sum(sizes)  # 8x8 images: 4x4 maps
    x = torch.randint(0, 2, (4, 1, 8, 8)).float()
    assert torch.equal(model.elbo(x).kl, torch.zeros(4))  # each posterior starts as its prior
    for p in model.parameters():
        p.add_(0.3 * torch.randn_like(p))
    noise = torch.randn(3, 4, model.latent_dim)
    log_px_z, log_ratio = model.log_weights(x, noise)
    one_by_one = [model.log_weights(x, noise[i]) for i in range(3)]
    assert torch.allclose(log_px_z, torch.stack([a for a, _ in one_by_one]), atol=1e-4)
    assert torch.allclose(log_ratio, torch.stack([b for _, b in one_by_one]), atol=1e-4)
    assert log_ratio.abs().min() > 0  # q now differs from p


MAP_INFERENCE = ("map_embed", "map_bottom_up", "map_posterior")  # the hybrid's modules that --noise-maps drops


@torch.no_grad()
def test_noise_maps_are_the_hybrid_with_its_map_posterior_held_at_its_prior():
    # the full hybrid starts with its map layer's posterior at the prior; given the same weights elsewhere, the
    # model with noise maps has the same ELBO and importance weights, and no parameters for that posterior
    spec, x = DataSpec("levels", (1, 8, 8), levels=2), torch.randint(0, 2, (4, 1, 8, 8)).float()
    torch.manual_seed(0)
    shape = dict(hidden=(6,), layers=(3, 2), layer_norm=True)
    full, noise = (
        build(ModelConfig.for_data(spec, "bernoulli", "hybrid", **shape, noise_maps=n)) for n in (False, True)
    )
    for name, p in full.named_parameters():
        if not name.startswith("map_posterior"):
            p.add_(0.3 * torch.randn_like(p))
    noise.load_state_dict({k: v for k, v in full.state_dict().items() if not k.startswith(MAP_INFERENCE)})
    eps = torch.randn(3, 4, full.latent_dim)
    for a, b in zip(full.log_weights(x, eps), noise.log_weights(x, eps), strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    elbo, maps = noise.elbo(x, eps[0]), 48  # 3 maps of 4x4
    assert torch.allclose(elbo.elbo, full.elbo(x, eps[0]).elbo, atol=1e-5)
    assert torch.equal(elbo.kl_per_dim[:, :maps], torch.zeros(4, maps)) and elbo.kl_per_dim[:, maps:].sum() > 0
    moved = eps[0].clone()
    moved[:, :maps] += 1.0  # the noise reaches the pixels
    assert (noise.elbo(x, moved).reconstruction - elbo.reconstruction).abs().min() > 1e-4


@pytest.mark.parametrize(
    "arch, latent_dim, switch",
    [("spatial", 3 * 16, None), ("hybrid", 2 * 16 + 1, None), ("hybrid", 2 * 16 + 1, "patches"),
     ("hybrid", 2 * 16 + 1, "noise_maps")],
)  # fmt: skip
def test_map_models_from_the_command_line_train_save_and_load(tmp_path, arch, latent_dim, switch):
    out = tmp_path / "s"
    args = ["train", "--data", "digits", "--out", out, "--layers", "2,1", "--hidden", "8", "--arch", arch]
    flags = [] if switch is None else ["--" + switch.replace("_", "-")]
    assert main([str(a) for a in [*args, "--epochs", "2", "--quiet", *flags]]) == 0
    model = vaekit.load(out)
    assert model.config.arch == arch and model.latent_dim == latent_dim  # digits are 8x8: 4x4 maps
    # a model without the switches keeps the file it had before they existed
    recorded = json.loads((out / "config.json").read_text())["model"]
    assert {key: recorded.get(key) for key in ("patches", "noise_maps")} == {
        key: True if key == switch else None for key in ("patches", "noise_maps")
    }
    if switch == "noise_maps":  # no posterior for the map layer, no bottom-up maps
        assert not any(name.startswith(MAP_INFERENCE) for name in model.state_dict())
        trained = model.posteriors[0].weight  # the lowest dense layer's
    else:
        assert type(model.map_embed.module[0] if arch == "hybrid" else model.embed.module[0]) is (
            torch.nn.PixelUnshuffle if switch == "patches" else torch.nn.Conv2d
        )
        trained = (model.map_posterior if arch == "hybrid" else model.posteriors[0]).module.weight
    assert trained.abs().sum() > 0  # trained and saved
    assert torch.isfinite(model.log_likelihood(model.prepare(torch.randint(0, 17, (5, 1, 8, 8))), k=10)).all()
    assert model.sample(2).shape == (2, 1, 8, 8)
    with pytest.raises(OptionError, match="needs image data"):
        ModelConfig.for_data(SPEC, "bernoulli", "spatial", hidden=(8,), layers=(1, 1))
    with pytest.raises(OptionError, match="give its latent layers|a map layer and at least one dense layer"):
        ModelConfig.for_data(IMAGE, "bernoulli", arch, hidden=(8,), layers=() if arch == "spatial" else (1,))
    with pytest.raises(OptionError, match="need --arch conv or hybrid"):
        ModelConfig.for_data(IMAGE, "bernoulli", "spatial", hidden=(8,), layers=(1, 1), patches=True)
    with pytest.raises(OptionError, match="need --arch hybrid"):
        ModelConfig.for_data(IMAGE, "bernoulli", "conv", hidden=(8,), layers=(1, 1), noise_maps=True)
