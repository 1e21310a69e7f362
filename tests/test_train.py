"""Training: determinism, resume, early stopping, KL options, failure on NaN, the run folder."""

import csv
import json
import math

import pytest
import torch
from safetensors.torch import load_file

import vaekit
from vaekit import io as model_io
from vaekit import trainer as train_module
from vaekit.data import DataSpec
from vaekit.errors import ModelFileError, OptionError
from vaekit.models import VAE, ModelConfig, build

TINY = dict(hidden=(16,), latent_dim=2, quiet=True)


def weights(run_dir, name="model.safetensors"):
    return load_file(str(run_dir / name))


def test_same_seed_same_model(tmp_path):
    a = vaekit.train("digits", tmp_path / "a", epochs=2, seed=3, **TINY)
    b = vaekit.train("digits", tmp_path / "b", epochs=2, seed=3, **TINY)
    c = vaekit.train("digits", tmp_path / "c", epochs=2, seed=4, **TINY)
    wa, wb, wc = weights(a.run_dir), weights(b.run_dir), weights(c.run_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_run_folder_contents_and_metrics(tiny_run):
    names = {p.name for p in tiny_run.run_dir.iterdir()}
    expected = {"config.json", "model.safetensors", "metrics.csv", "samples.png", "reconstructions.png"}
    assert expected | {"interpolations.png", "loss.png", "latents.png", "checkpoint.safetensors"} <= names
    with open(tiny_run.run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        assert float(r["train_neg_elbo"]) == pytest.approx(float(r["train_reconstruction"]) + float(r["train_kl"]))
        bpd = float(r["heldout_neg_elbo"]) / (64 * 0.6931471805599453)
        assert float(r["heldout_bits_per_dim"]) == pytest.approx(bpd)
    config = json.loads((tiny_run.run_dir / "config.json").read_text())
    assert config["model"]["spec"] == {
        "kind": "levels", "shape": [1, 8, 8], "levels": 17, "mean": None, "std": None, "features": None,
        "classes": list("0123456789"),
    }  # fmt: skip
    assert config["data"]["source"] == "digits" and config["training"]["epochs"] == 2


def test_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch, cut_training):
    # both runs in one precision: `auto`'s timed choice could differ between them on a busy machine
    monkeypatch.setattr(train_module, "bf16_is_faster", lambda device_type: False)
    full = vaekit.train("digits", tmp_path / "full", epochs=4, **TINY)
    cut_training(tmp_path / "cut", 2, epochs=4, **TINY)
    vaekit.load(tmp_path / "cut")  # loadable while interrupted
    resumed = vaekit.resume(tmp_path / "cut", quiet=True)
    assert len(resumed.metrics) == 4
    a, b = weights(full.run_dir, "checkpoint.safetensors"), weights(resumed.run_dir, "checkpoint.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [m["heldout_neg_elbo"] for m in full.metrics] == [m["heldout_neg_elbo"] for m in resumed.metrics]


def test_early_stopping_keeps_the_best_epoch(tmp_path):
    run = vaekit.train("digits", tmp_path / "r", epochs=50, lr=1e-12, patience=2, **TINY)
    assert len(run.metrics) < 50
    best = min(run.metrics, key=lambda m: m["heldout_neg_elbo"])
    assert run.metrics[-1]["epoch"] - best["epoch"] == 2


def test_warmup_ramps_beta_and_free_bits_keeps_kl_up(tmp_path):
    run = vaekit.train("digits", tmp_path / "w", epochs=3, warmup_epochs=2, **TINY)
    betas = [m["beta"] for m in run.metrics]
    assert betas[0] == pytest.approx(0.5, abs=0.05) and betas[1] == betas[2] == 1.0
    plain = vaekit.train("digits", tmp_path / "p", epochs=3, beta=4.0, **TINY)
    floored = vaekit.train("digits", tmp_path / "f", epochs=3, beta=4.0, free_bits=2.0, **TINY)
    kl_plain, kl_floored = plain.metrics[-1]["heldout_kl"], floored.metrics[-1]["heldout_kl"]
    assert kl_floored > 4 * kl_plain and kl_floored > kl_plain + 0.3  # beta=4 collapses q(z|x) without the floor


def test_dynamic_and_static_binarisation_train_a_bernoulli_model(tmp_path):
    for mode in ("static", "dynamic"):
        run = vaekit.train("digits", tmp_path / mode, epochs=2, binarize=mode, **TINY)
        assert run.model.config.likelihood == "bernoulli"
        assert run.metrics[-1]["heldout_neg_elbo"] < 64 * 0.6931471805599453  # beats a fair coin per pixel


def poison_elbo(monkeypatch, calls_to_poison) -> None:
    """Make VAE.elbo return a NaN reconstruction term on the given calls (counted from 1)."""
    original, calls = VAE.elbo, {"n": 0}

    def poisoned(self, x, noise=None, y=None):
        result = original(self, x, noise, y)
        calls["n"] += 1
        if calls["n"] in calls_to_poison:
            result.reconstruction = result.reconstruction * float("nan")
        return result

    monkeypatch.setattr(VAE, "elbo", poisoned)


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_model(tmp_path, monkeypatch):
    # digits' fit part is 5 steps of 256; one held-out evaluation follows each epoch
    poison_elbo(monkeypatch, {8})
    with pytest.raises(train_module.TrainingError, match="the loss became nan at epoch 2, step 7"):
        vaekit.train("digits", tmp_path / "n", epochs=3, **TINY)
    model = vaekit.load(tmp_path / "n")  # epoch 1's model, not the ruined one
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_on_nan_skip_drops_those_updates_and_trains_on(tmp_path, monkeypatch):
    poison_elbo(monkeypatch, {3, 4})
    run = vaekit.train("digits", tmp_path / "s", epochs=2, on_nan="skip", **TINY)
    assert [m["skipped_updates"] for m in run.metrics] == [2, 2]
    assert all(torch.isfinite(p).all() for p in run.model.parameters())
    assert math.isfinite(run.metrics[0]["train_neg_elbo"]) and math.isfinite(run.metrics[-1]["heldout_neg_elbo"])


def test_on_nan_skip_gives_up_on_a_model_that_stays_nan(tmp_path, monkeypatch):
    poison_elbo(monkeypatch, set(range(1, 10_000)))
    limit = train_module.NONFINITE_IN_A_ROW
    with pytest.raises(train_module.TrainingError, match=f"NaN/inf for {limit} steps in a row, up to epoch 2"):
        vaekit.train("digits", tmp_path / "g", epochs=3, batch_size=16, on_nan="skip", **TINY)


def test_an_error_mid_run_keeps_the_best_model_and_metrics_so_far(tmp_path, monkeypatch):
    original = train_module.Trainer._end_epoch

    def fail_after_three(self, row):
        original(self, row)
        if self.epoch == 3:
            raise train_module.TrainingError("stopped")

    monkeypatch.setattr(train_module.Trainer, "_end_epoch", fail_after_three)
    with pytest.raises(train_module.TrainingError):
        vaekit.train("digits", tmp_path / "e", epochs=5, **TINY)
    rows = train_module.read_metrics(tmp_path / "e")
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # saving is throttled, yet nothing is lost
    best_epoch = min(rows, key=lambda r: r["heldout_neg_elbo"])["epoch"]
    model = vaekit.load(tmp_path / "e")
    held = vaekit.data.load_for_training("digits")[1]
    x = model.prepare(held.x)
    score = train_module.evaluate_elbo(model, x, generator=torch.Generator().manual_seed(train_module.EVAL_SEED))
    assert score["neg_elbo"] == pytest.approx(rows[int(best_epoch) - 1]["heldout_neg_elbo"], rel=1e-5)


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(lr=-1.0), "learning rate must be > 0"),
        (dict(batch_size=0), "batch size must be >= 1"),
        (dict(beta=-1.0), "beta must be >= 0"),
        (dict(binarize="sometimes"), "binarize must be static or dynamic"),
        (dict(heldout_fraction=1.5), "held-out fraction"),
        (dict(likelihood="bernoulli"), "goes with the Bernoulli likelihood"),
        (dict(hidden=(0,)), "hidden layer sizes"),
    ],
)
def test_bad_options_are_refused_before_any_output(tmp_path, options, message):
    with pytest.raises(OptionError, match=message):
        vaekit.train("digits", tmp_path / "x", epochs=1, **{**TINY, **options})
    assert not (tmp_path / "x").exists()


def test_an_existing_run_is_not_overwritten(tiny_run):
    before = (tiny_run.run_dir / "model.safetensors").read_bytes()
    with pytest.raises(OptionError, match="already holds a run"):
        vaekit.train("digits", tiny_run.run_dir, epochs=1, **TINY)
    assert (tiny_run.run_dir / "model.safetensors").read_bytes() == before


def test_a_run_cut_before_its_first_checkpoint_resumes_from_the_start(tmp_path, monkeypatch):
    full = vaekit.train("digits", tmp_path / "full", epochs=2, **TINY)

    def crash(self, train, heldout, stop_below=None):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(train_module.Trainer, "fit", crash)
        with pytest.raises(KeyboardInterrupt):
            vaekit.train("digits", tmp_path / "cut", epochs=2, **TINY)
    assert (tmp_path / "cut" / "config.json").exists() and not (tmp_path / "cut" / "checkpoint.safetensors").exists()
    resumed = vaekit.resume(tmp_path / "cut", quiet=True)
    a, b = weights(full.run_dir), weights(resumed.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_auto_is_recorded_and_a_run_cut_before_its_first_checkpoint_chooses_again(tmp_path, monkeypatch):
    def crash(self, train, heldout, stop_below=None):
        raise KeyboardInterrupt

    def recorded():
        return json.loads((tmp_path / "cut" / "config.json").read_text())["resolved"]

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "bf16_is_faster", lambda device_type: False)  # an AVX2 machine
        patch.setattr(train_module.Trainer, "fit", crash)
        with pytest.raises(KeyboardInterrupt):
            vaekit.train("digits", tmp_path / "cut", epochs=1, **TINY)
    assert recorded() == {"device": "cpu", "precision": "fp32"}
    monkeypatch.setattr(train_module, "bf16_is_faster", lambda device_type: True)  # one with AMX
    vaekit.resume(tmp_path / "cut", quiet=True)
    assert recorded() == {"device": "cpu", "precision": "bf16"}
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["training"]["precision"] == "auto"


def test_a_resumed_run_keeps_the_precision_it_began_in(tmp_path, monkeypatch, cut_training):
    # `auto` is timed: on a busy machine it can choose otherwise at a resume, which would change the run halfway
    monkeypatch.setattr(train_module, "bf16_is_faster", lambda device_type: False)
    full = vaekit.train("digits", tmp_path / "full", epochs=3, **TINY)
    cut_training(tmp_path / "cut", 1, epochs=3, **TINY)
    monkeypatch.setattr(train_module, "bf16_is_faster", lambda device_type: True)  # the probe now says bf16
    resumed = vaekit.resume(tmp_path / "cut", quiet=True)
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["resolved"]["precision"] == "fp32"
    a, b = weights(full.run_dir, "checkpoint.safetensors"), weights(resumed.run_dir, "checkpoint.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_is_one_file_with_its_counters(tiny_run):
    from safetensors import safe_open

    with safe_open(str(tiny_run.run_dir / "checkpoint.safetensors"), "pt") as f:
        state = json.loads(f.metadata()["state"])
    config = json.loads((tiny_run.run_dir / "config.json").read_text())
    steps_per_epoch = -(-config["data"]["n_fit"] // config["training"]["batch_size"])
    assert state["epoch"] == 2 and state["step"] == 2 * steps_per_epoch
    assert not (tiny_run.run_dir / "checkpoint.json").exists()


def test_heldout_estimate_is_the_same_every_time(tiny_run):
    from vaekit import data
    from vaekit.evaluate import evaluate

    test = data.load("digits", "test", spec=tiny_run.model.spec)
    first, second = evaluate(tiny_run.model, test, probe=False), evaluate(tiny_run.model, test, probe=False)
    assert first == second


def test_tiny_heldout_part_still_gets_figures(tmp_path, rng):
    import numpy as np

    np.save(tmp_path / "few.npy", rng.integers(0, 17, (40, 8, 8)))
    np.save(tmp_path / "fewer.npy", rng.integers(0, 17, (12, 8, 8)))  # one held-out item: no principal components
    for name, latent, pairs in (("few", 2, True), ("fewer", 4, False)):
        run = vaekit.train(str(tmp_path / f"{name}.npy"), tmp_path / name, epochs=1, **{**TINY, "latent_dim": latent})
        figures = {"samples.png", "reconstructions.png", "latents.png"} | ({"interpolations.png"} if pairs else set())
        assert figures <= {p.name for p in run.run_dir.iterdir()}


@pytest.fixture
def rates_seen(monkeypatch):
    """The learning rate of every optimiser step, in order."""
    seen = []
    original = train_module.Trainer._step

    def record(self, train_x, train_y, batch, beta):
        seen.append(self.optimizer.param_groups[0]["lr"])
        return original(self, train_x, train_y, batch, beta)

    monkeypatch.setattr(train_module.Trainer, "_step", record)
    return seen


def test_learning_rate_is_constant_then_falls_linearly_to_zero(tmp_path, rates_seen):
    seen = rates_seen
    vaekit.train("digits", tmp_path / "r", epochs=10, lr=1e-2, lr_decay=0.5, batch_size=1347, **TINY)
    assert seen[:5] == [1e-2] * 5  # one step an epoch: constant for the first half
    assert seen[5:] == pytest.approx([1e-2 * (10 - s) / 5 for s in range(5, 10)])


def test_learning_rate_warm_up_rises_linearly_then_holds(tmp_path, rates_seen):
    seen = rates_seen
    vaekit.train("digits", tmp_path / "w", epochs=8, lr=1e-2, lr_decay=0, lr_warmup=4, batch_size=1347, **TINY)
    assert seen == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2, 1e-2, 1e-2])


def test_a_model_of_several_latent_layers_warms_its_learning_rate_up_by_default(tmp_path, rates_seen):
    options = dict(epochs=3, lr=1e-2, lr_decay=0, batch_size=1347, patience=None, **TINY)
    deep = vaekit.train("digits", tmp_path / "deep", layers=(2, 2), **options)
    assert rates_seen == pytest.approx([1e-2 * s / train_module.DEEP_LR_WARMUP for s in (1, 2, 3)])
    recorded = json.loads((deep.run_dir / "config.json").read_text())
    assert recorded["training"]["lr_warmup"] == train_module.DEEP_LR_WARMUP  # recorded as used
    rates_seen.clear()
    vaekit.train("digits", tmp_path / "flat", **options)
    vaekit.train("digits", tmp_path / "asked", layers=(2, 2), lr_warmup=0, **options)
    assert rates_seen == [1e-2] * 6


def test_weight_decay_shrinks_each_weight_matrix_by_lr_times_decay_beside_the_adam_step(tmp_path):
    # one step from the same start with the same gradient: w_0 - w_d = lr * d * w_start, whatever the Adam step;
    # the biases (1-D) are not decayed
    options = dict(epochs=1, lr=1e-2, lr_decay=0, batch_size=1347, seed=1, **TINY)
    plain = weights(vaekit.train("digits", tmp_path / "plain", **options).run_dir)
    light = weights(vaekit.train("digits", tmp_path / "light", weight_decay=0.5, **options).run_dir)
    heavy = weights(vaekit.train("digits", tmp_path / "heavy", weight_decay=2.0, **options).run_dir)
    recorded = json.loads((tmp_path / "heavy" / "config.json").read_text())
    assert recorded["training"]["weight_decay"] == 2.0
    assert any(w.ndim == 1 for w in plain.values())
    for name, w in plain.items():
        if w.ndim < 2:
            assert torch.equal(light[name], w) and torch.equal(heavy[name], w), name
            continue
        shrink_light, shrink_heavy = w - light[name], w - heavy[name]
        assert torch.allclose(shrink_heavy, 4 * shrink_light, rtol=1e-3, atol=1e-7), name
        far = w.abs() > 0.05  # beyond the reach of one Adam step (about lr): the weight kept its start's sign
        assert far.any() and (torch.sign(shrink_heavy[far]) == torch.sign(w[far])).all()  # towards zero


@pytest.mark.parametrize("arch, prior, spared", [("mlp", "vamp", "pseudo_inputs"), ("spatial", "normal", "start")])
def test_weight_decay_spares_learned_inputs_and_starting_states(arch, prior, spared):
    # they are points in the data or state space, not weights: decay would pull them towards a blank
    spec = DataSpec("levels", (1, 8, 8), levels=2)
    model = build(ModelConfig.for_data(spec, "bernoulli", arch, hidden=(6,), layers=(2,) * (arch == "spatial"),
                                       prior=prior, pseudo_inputs=3))  # fmt: skip
    decayed, kept = (group["params"] for group in train_module.decay_groups(model, 0.1))
    names = {id(p): name for name, p in model.named_parameters()}
    assert spared in [names[id(p)] for p in kept] and getattr(model, spared).ndim >= 2
    assert {names[id(p)] for p in decayed} == {n for n, p in model.named_parameters() if p.ndim >= 2} - {spared}


def test_a_checkpoint_whose_optimizer_does_not_fit_is_refused_by_name(tmp_path):
    # as one of a weight-decay run from before the biases left the decay: Adam's one group of parameters
    run = vaekit.train("digits", tmp_path / "run", epochs=1, **TINY)
    two_groups = torch.optim.AdamW(train_module.decay_groups(run.model, 0.1))
    with pytest.raises(ModelFileError, match=r"checkpoint\.safetensors: its optimizer state does not fit"):
        model_io.load_checkpoint(run.run_dir, run.model, two_groups)


def test_bf16_autocast_trains_to_the_same_elbo_as_fp32(tmp_path):
    runs = {p: vaekit.train("digits", tmp_path / p, epochs=30, precision=p, **TINY) for p in ("fp32", "bf16")}
    fp32, bf16 = (min(m["heldout_neg_elbo"] for m in runs[p].metrics) for p in ("fp32", "bf16"))
    assert abs(fp32 - bf16) < 0.02 * fp32
    assert runs["bf16"].model.encoder.net[0].weight.dtype == torch.float32  # weights stay fp32
