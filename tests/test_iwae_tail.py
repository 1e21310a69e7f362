"""An IWAE tail: ELBO training that switches, once, to the IWAE bound over the last part of the run."""

import math

import pytest
import torch

import vaekit
from vaekit import trainer as train_module
from vaekit.cli import main
from vaekit.errors import OptionError
from vaekit.models import ModelConfig, build
from vaekit.trainer import TrainConfig, Trainer, _elbo_sums

SMALL = dict(hidden=(16,), latent_dim=2, quiet=True, patience=None)
ONE_STEP_AN_EPOCH = dict(batch_size=1347, **SMALL)  # digits' fit part is 1,347 images


@pytest.fixture
def steps_seen(monkeypatch):
    """(learning rate, trained on the IWAE bound) of every optimiser step, in order."""
    seen = []
    original = train_module.Trainer._step

    def record(self, train_x, train_y, batch, beta):
        seen.append((self.optimizer.param_groups[0]["lr"], self.trains_iwae))
        return original(self, train_x, train_y, batch, beta)

    monkeypatch.setattr(train_module.Trainer, "_step", record)
    return seen


def test_the_tail_is_the_last_fraction_of_the_steps_and_the_rate_falls_as_without_it(tmp_path, steps_seen):
    options = dict(epochs=10, lr=1e-2, lr_decay=0.5, **ONE_STEP_AN_EPOCH)
    plain = vaekit.train("digits", tmp_path / "plain", **options)
    plain_steps = list(steps_seen)
    steps_seen.clear()
    tail = vaekit.train("digits", tmp_path / "tail", iwae_tail=0.5, **options)
    assert [iwae for _, iwae in steps_seen] == [False] * 5 + [True] * 5  # 10 steps: the last half, for good
    assert [lr for lr, _ in steps_seen] == pytest.approx([lr for lr, _ in plain_steps])
    assert [m["heldout_neg_iwae"] is not None for m in tail.metrics] == [False] * 5 + [True] * 5
    assert all(m["heldout_neg_iwae"] is None for m in plain.metrics)


def test_the_tail_keeps_its_best_epoch_by_the_heldout_iwae_bound(tmp_path):
    run = vaekit.train("digits", tmp_path / "t", epochs=6, iwae_tail=0.5, k=3, **SMALL)
    tail = [m for m in run.metrics if m["heldout_neg_iwae"] is not None]
    assert len(tail) == 3
    for m in tail:  # log-mean-exp of the same k weights is never below their mean
        assert m["heldout_neg_iwae"] <= m["heldout_neg_elbo"]
    best = min(tail, key=lambda m: m["heldout_neg_iwae"])
    model = vaekit.load(run.run_dir)
    held = vaekit.data.load_for_training("digits")[1]
    x = model.prepare(held.x, torch.Generator().manual_seed(train_module.EVAL_SEED))
    sums = _elbo_sums(model, x, None, None, 1000, torch.Generator().manual_seed(train_module.EVAL_SEED), 3)
    assert float(sums[3]) / len(x) == pytest.approx(best["heldout_neg_iwae"], rel=1e-6)


def tail_trainer(run_dir, iwae_tail: float) -> Trainer:
    """A trainer of a tiny digits model, not yet fitted: for its bookkeeping alone."""
    model = build(ModelConfig.for_data(vaekit.data.load("digits", "all").spec, None, "mlp", 2, (16,)))
    return Trainer(model, TrainConfig(epochs=1, iwae_tail=iwae_tail), run_dir, quiet=True, device="cpu")


def test_a_tail_epoch_is_kept_even_where_its_elbo_is_worse_than_before_the_tail(tmp_path):
    trainer = tail_trainer(tmp_path, 0.5)
    assert trainer._track_best({"heldout_neg_elbo": 100.0, "heldout_neg_iwae": None})
    trainer.total_steps, trainer._clock_start = 10, 0.0
    trainer._begin_tail()
    assert trainer._track_best({"heldout_neg_elbo": 120.0, "heldout_neg_iwae": 119.0})  # a new scale
    assert not trainer._track_best({"heldout_neg_elbo": 90.0, "heldout_neg_iwae": 119.5})


def test_a_budget_estimate_after_the_switch_keeps_the_schedule_continuous_and_ending_at_one(tmp_path):
    trainer = tail_trainer(tmp_path, 0.3)
    trainer._clock_start = 0.0
    trainer.step, trainer.total_steps = 71, 100
    trainer._begin_tail()
    assert trainer._progress() == pytest.approx(0.71)
    trainer.total_steps = 80  # IWAE steps proved slower: fewer of them fit in what is left
    assert trainer._progress() == pytest.approx(0.71)
    trainer.step = 75  # 4 of the tail's 9 steps: 4/9 of the way from 0.71 to 1
    assert trainer._progress() == pytest.approx(0.71 + 0.29 * 4 / 9)
    trainer.step = 80
    assert trainer._progress() == 1.0


def test_one_sample_iwae_bound_is_its_elbo_and_more_samples_tighten_it():
    model = build(ModelConfig.for_data(vaekit.data.load("digits", "all").spec, "bernoulli", "mlp", 2, (16,)))
    x = model.prepare(vaekit.data.load("digits", "all").x[:50], torch.Generator().manual_seed(0))
    one = _elbo_sums(model, x, None, None, 1000, torch.Generator().manual_seed(1), k=1)
    assert math.isclose(one[3], one[0], rel_tol=1e-9)  # -IWAE with k=1 is the sampled -ELBO
    many = _elbo_sums(model, x, None, None, 1000, torch.Generator().manual_seed(1), k=50)
    assert many[3] < many[0] - 1.0  # an untrained model's weights vary: log-mean-exp lies well above the mean


def test_a_run_resumed_inside_the_tail_equals_an_uninterrupted_one(tmp_path, cut_training):
    options = dict(epochs=4, iwae_tail=0.5, **SMALL)
    full = vaekit.train("digits", tmp_path / "full", **options)
    cut_training(tmp_path / "cut", 3, **options)
    resumed = vaekit.resume(tmp_path / "cut", quiet=True)
    assert [m["heldout_neg_iwae"] for m in resumed.metrics] == [m["heldout_neg_iwae"] for m in full.metrics]
    a, b = (vaekit.load(r.run_dir).state_dict() for r in (full, resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "options,message",
    [
        (dict(iwae_tail=1.0), r"IWAE tail must lie in \[0, 1\)"),
        (dict(iwae_tail=-0.1), r"IWAE tail must lie in \[0, 1\)"),
        (dict(iwae_tail=0.2, objective="iwae"), "follows ELBO training"),
        (dict(iwae_tail=0.2, beta=2.0), "follows ELBO training"),
        (dict(iwae_tail=0.2, free_bits=0.5), "follows ELBO training"),
    ],
)
def test_bad_tail_options_are_refused(tmp_path, options, message):
    with pytest.raises(OptionError, match=message):
        vaekit.train("digits", tmp_path / "x", epochs=1, **{**SMALL, **options})
    assert not (tmp_path / "x").exists()


def test_cli_trains_with_a_tail_and_reports_its_bound(tmp_path, capsys):
    code = main(["train", "--data", "digits", "--out", str(tmp_path / "c"), "--epochs", "2", "--hidden", "16",
                 "--latent", "2", "--iwae-tail", "0.5", "--quiet"])  # fmt: skip
    assert code == 0
    assert "-IWAE bound" in capsys.readouterr().out
