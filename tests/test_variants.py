"""The model variants and training options of the likelihood work, end to end: VampPrior, conditional VAE,
IWAE objective, update skipping, time budget, and `evaluate --nll`."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import vaekit
from vaekit import io as model_io
from vaekit import trainer as train_module
from vaekit.cli import main
from vaekit.data import load
from vaekit.errors import OptionError

SMALL = dict(hidden=(32,), latent_dim=4, quiet=True, patience=None)


def run_cli(*args):
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def digits_x():
    return load("digits", split="all")


def test_vampprior_trains_samples_and_its_nll_lies_below_its_negative_elbo(tmp_path, capsys):
    run = vaekit.train("digits", tmp_path / "v", prior="vamp", pseudo_inputs=10, epochs=5, **SMALL)
    model = vaekit.load(run.run_dir)
    assert model.config.prior == "vamp" and model.pseudo_inputs.shape == (10, 1, 8, 8)
    assert model.sample(6, generator=torch.Generator().manual_seed(0)).shape == (6, 1, 8, 8)
    out = tmp_path / "m.json"
    assert run_cli("evaluate", run.run_dir, "--nll", "--k", 64, "--no-probe", "-o", out) == 0
    result = json.loads(out.read_text())
    assert result["nll_k"] == 64 and result["nll"] < result["neg_elbo"]
    assert 0 < result["nll_stderr"] < 0.5 and result["nll_bits_per_dim"] == pytest.approx(
        result["nll"] / (64 * 0.6931471805599453)
    )


def test_evaluate_nll_checkpoint_and_workers_give_the_same_figures_and_another_k_is_refused(tmp_path, capsys):
    run = vaekit.train("digits", tmp_path / "v", epochs=1, **SMALL)
    file, first, again = tmp_path / "nll.safetensors", tmp_path / "1.json", tmp_path / "2.json"
    for out in (first, again):
        assert (
            run_cli("evaluate", run.run_dir, "--nll", "--k", 32, "--no-probe", "--nll-checkpoint", file, "-o", out) == 0
        )
    assert json.loads(first.read_text()) == json.loads(again.read_text())
    capsys.readouterr()
    assert run_cli("evaluate", run.run_dir, "--nll", "--k", 33, "--no-probe", "--nll-checkpoint", file) == 1
    assert f"{file}: saved for another model" in capsys.readouterr().err
    assert run_cli("evaluate", run.run_dir, "--nll-checkpoint", file) == 1
    assert "--nll-checkpoint needs --nll" in capsys.readouterr().err
    # two worker processes draw the same samples: the same figure, up to their float arithmetic
    shared = tmp_path / "3.json"
    assert run_cli("evaluate", run.run_dir, "--nll", "--k", 32, "--no-probe", "--workers", 2, "-o", shared) == 0
    assert json.loads(shared.read_text())["nll"] == pytest.approx(json.loads(first.read_text())["nll"], rel=1e-6)
    capsys.readouterr()
    assert run_cli("evaluate", run.run_dir, "--workers", 2) == 1
    assert "--workers needs --nll" in capsys.readouterr().err


def test_vampprior_refuses_free_bits(tmp_path):
    with pytest.raises(OptionError, match="free bits"):
        vaekit.train("digits", tmp_path / "v", prior="vamp", free_bits=0.1, epochs=1, **SMALL)


def test_conditional_model_uses_its_labels(tmp_path, digits_x, capsys):
    run = vaekit.train("digits", tmp_path / "c", conditional=True, epochs=8, **SMALL)
    model = vaekit.load(run.run_dir)
    x, y = model.prepare(digits_x.x[:500]), digits_x.labels[:500]
    noise = torch.randn(500, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        right = model.elbo(x, noise, y).elbo.mean()
        wrong = model.elbo(x, noise, (y + 1) % 10).elbo.mean()
    assert right > wrong + 1.0  # the decoder relies on the class
    for label in (3, 7):
        assert run_cli("sample", run.run_dir, "-n", 4, "--label", label, "-o", tmp_path / f"s{label}.npy") == 0
    assert not np.allclose(np.load(tmp_path / "s3.npy"), np.load(tmp_path / "s7.npy"))
    assert run_cli("sample", run.run_dir, "--label", 12, "-o", tmp_path / "x.png") == 1
    assert "--label '12': not a class of this model" in capsys.readouterr().err


def test_label_on_an_unconditional_model_is_an_error(tiny_run, tmp_path, capsys):
    assert run_cli("sample", tiny_run.run_dir, "--label", 3, "-o", tmp_path / "x.png") == 1
    assert "not conditional" in capsys.readouterr().err


def test_conditional_model_needs_labelled_data(tmp_path):
    np.save(tmp_path / "plain.npy", np.random.default_rng(0).integers(0, 4, (50, 6)).astype(np.uint8))
    with pytest.raises(OptionError, match="labelled data"):
        vaekit.train(str(tmp_path / "plain.npy"), tmp_path / "c", conditional=True, epochs=1, **SMALL)


def test_iwae_objective_trains_and_rejects_beta(tmp_path):
    run = vaekit.train("digits", tmp_path / "i", objective="iwae", k=4, epochs=4, **SMALL)
    assert run.metrics[-1]["heldout_neg_elbo"] < run.metrics[0]["heldout_neg_elbo"]
    with pytest.raises(OptionError, match="IWAE objective"):
        vaekit.train("digits", tmp_path / "b", objective="iwae", beta=2.0, epochs=1, **SMALL)


def test_every_update_above_the_skip_threshold_is_skipped(tmp_path):
    torch.manual_seed(0)
    run = vaekit.train("digits", tmp_path / "s", skip_threshold=1e-6, epochs=1, **SMALL)
    assert run.metrics[-1]["skipped_updates"] == run.metrics[-1]["step"]
    torch.manual_seed(0)  # the same initial weights: nothing moved
    fresh = vaekit.train("digits", tmp_path / "f", epochs=1, lr=1e-30, **SMALL)
    skipped, untouched = (
        load_file(str(run.run_dir / "model.safetensors")),
        load_file(str(fresh.run_dir / "model.safetensors")),
    )
    assert all(torch.allclose(skipped[k], untouched[k]) for k in skipped)


def test_training_stops_with_a_clear_error_when_every_update_is_skipped_for_long(tmp_path, monkeypatch):
    limit = train_module.SKIPPED_IN_A_ROW
    with pytest.raises(
        train_module.TrainingError, match=f"{limit} steps in a row, up to epoch 1, step {limit},.*1e-06"
    ):
        vaekit.train("digits", tmp_path / "s", skip_threshold=1e-6, epochs=2, batch_size=8, **SMALL)

    # outliers that come and go do not add up to a stop
    norms = iter([1.0, 1e9] * 10_000)
    monkeypatch.setattr(train_module, "SKIPPED_IN_A_ROW", 2)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm: torch.tensor(next(norms)))
    run = vaekit.train("digits", tmp_path / "t", skip_threshold=10.0, epochs=2, batch_size=8, **SMALL)
    assert run.metrics[-1]["skipped_updates"] == run.metrics[-1]["step"] // 2


def feed_norms(monkeypatch, norms):
    """Every step's gradient norm, as the update-skipping rules see it, comes from `norms` (the gradients
    themselves are the model's own)."""
    sequence = iter(norms)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm: torch.tensor(next(sequence)))


def test_the_skip_factor_skips_spikes_against_the_median_of_recent_norms(tmp_path, monkeypatch):
    # digits' fit part at batches of 8: 169 steps an epoch; norms near 1, spikes of 30 at steps 20, 90, 91, 130
    history = train_module.SKIP_HISTORY
    norms = [1.0 + 0.1 * (step % 7) for step in range(400)]
    for step in (20, 90, 91, 130):
        norms[step] = 30.0
    feed_norms(monkeypatch, norms)
    run = vaekit.train("digits", tmp_path / "s", skip_factor=10.0, epochs=1, batch_size=8, **SMALL)
    assert run.metrics[-1]["step"] > 130 > 20 + history > 20
    assert run.metrics[-1]["skipped_updates"] == 3  # not step 20, before the median had 50 steps behind it
    kept = model_io.load_checkpoint(run.run_dir, run.model, torch.optim.Adam(run.model.parameters()))[1]
    steps = run.metrics[-1]["step"]  # the median's window goes into the checkpoint, for an exact resume
    assert kept["recent_norms"] == pytest.approx(norms[steps - train_module.SKIP_WINDOW : steps])


def test_the_skip_factor_follows_norms_that_grow_for_good_where_a_threshold_stops(tmp_path, monkeypatch):
    window, onset = train_module.SKIP_WINDOW, 2 * train_module.SKIP_WINDOW
    norms = [1.0] * onset + [1000.0] * 1000  # a model whose gradients are 1000 times larger from step 200 on
    feed_norms(monkeypatch, norms)
    run = vaekit.train("digits", tmp_path / "f", skip_factor=10.0, epochs=3, batch_size=8, **SMALL)
    # skipped until half the window holds the new norms and the median is theirs; none after
    assert run.metrics[-1]["step"] > onset + window
    assert run.metrics[-1]["skipped_updates"] == window // 2

    feed_norms(monkeypatch, norms)
    with pytest.raises(train_module.TrainingError, match="above the skip limit of 10"):
        vaekit.train("digits", tmp_path / "t", skip_threshold=10.0, epochs=3, batch_size=8, **SMALL)


def test_time_budget_ends_training_on_time_with_the_learning_rate_decayed(tmp_path, monkeypatch):
    rates = []
    original = train_module.Trainer._step

    def record(self, *args):
        rates.append(self.optimizer.param_groups[0]["lr"])
        return original(self, *args)

    monkeypatch.setattr(train_module.Trainer, "_step", record)
    # 3 s, not less: on a loaded machine a single stall of a few hundred ms would use up a shorter budget
    # before its decay began
    run = vaekit.train("digits", tmp_path / "t", time_budget=3.0, **SMALL)
    last = run.metrics[-1]
    # the budget is wall-clock time, evaluation and saving included; the margin lets a loaded machine's last
    # epoch run slower than the speed measured before it
    assert 2.5 <= last["wall_seconds"] <= 4.0
    assert last["seconds"] < last["wall_seconds"]
    # the decay follows the steps estimated to fit; should the machine slow down, the budget ends it a little early
    assert rates[0] == pytest.approx(3e-3) and rates[-1] < 0.25 * rates[0]
