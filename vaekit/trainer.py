"""The training loop: maximise the ELBO with Adam, with KL warm-up, free bits, clipping, early stopping.

Data stays in memory as one tensor and batches are taken by index, so there is no per-item Python
work. Every epoch ends with an atomic checkpoint and, when held-out -ELBO improved, the saved model.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vaekit import io as model_io
from vaekit._atomic import write_text
from vaekit.data import Dataset
from vaekit.errors import OptionError, VaekitError
from vaekit.models import VAE

METRIC_FIELDS = [
    "epoch", "step", "seconds", "beta",
    "train_neg_elbo", "train_reconstruction", "train_kl",
    "heldout_neg_elbo", "heldout_reconstruction", "heldout_kl", "heldout_bits_per_dim",
]  # fmt: skip
TARGET_STEPS = 3000  # default epochs give about this many optimiser steps (at least MIN_EPOCHS)
MIN_EPOCHS, MAX_EPOCHS = 10, 300
EVAL_SEED = 0  # binarisation of held-out data for Bernoulli models: one fixed draw


class TrainingError(VaekitError):
    """Training cannot go on (for example, the loss became NaN)."""


@dataclasses.dataclass
class TrainConfig:
    epochs: int | None = None  # None: about TARGET_STEPS steps
    batch_size: int = 128
    lr: float = 1e-3
    beta: float = 1.0  # weight of the KL term
    warmup_epochs: float = 0.0  # linear KL warm-up from 0 to beta
    free_bits: float = 0.0  # nats per latent dimension below which KL is not penalised
    clip_grad: float | None = None  # max gradient norm
    patience: int | None = 20  # early stopping: epochs without held-out improvement (None: never)
    binarize: str | None = None  # None, "static" or "dynamic" (Bernoulli models)
    seed: int = 0

    def validate(self) -> None:
        checks = [
            (self.epochs is None or self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (math.isfinite(self.lr) and self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (math.isfinite(self.beta) and self.beta >= 0, f"beta must be >= 0, got {self.beta}"),
            (self.warmup_epochs >= 0, f"warm-up must be >= 0 epochs, got {self.warmup_epochs}"),
            (self.free_bits >= 0, f"free bits must be >= 0, got {self.free_bits}"),
            (self.clip_grad is None or self.clip_grad > 0, f"gradient clip must be > 0, got {self.clip_grad}"),
            (self.patience is None or self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
            (self.binarize in (None, "static", "dynamic"), f"binarize must be static or dynamic, got {self.binarize}"),
        ]
        for ok, message in checks:
            if not ok:
                raise OptionError(message)

    def epochs_for(self, n_train: int) -> int:
        if self.epochs is not None:
            return self.epochs
        steps_per_epoch = math.ceil(n_train / self.batch_size)
        return min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(TARGET_STEPS / steps_per_epoch)))


@torch.no_grad()
def evaluate_elbo(model: VAE, x: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
    """Mean -ELBO, reconstruction term and KL over model-space data `x`, in nats per example."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64)
    for start in range(0, len(x), batch_size):
        r = model.elbo(x[start : start + batch_size])
        totals += torch.stack([-r.elbo.sum(), -r.reconstruction.sum(), r.kl.sum()]).double()
    model.train(was_training)
    neg_elbo, rec, kl = (totals / len(x)).tolist()
    return {"neg_elbo": neg_elbo, "reconstruction": rec, "kl": kl}


class Trainer:
    def __init__(self, model: VAE, config: TrainConfig, run_dir: str | Path, quiet: bool = False):
        config.validate()
        if (config.binarize is not None) != (model.config.likelihood == "bernoulli"):
            raise OptionError("binarisation (--binarize) goes with the Bernoulli likelihood, and only with it")
        self.model, self.config, self.run_dir, self.quiet = model, config, Path(run_dir), quiet
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.epoch, self.step, self.seconds = 0, 0, 0.0
        self.best, self.bad_epochs = math.inf, 0
        self.metrics: list[dict[str, float]] = []

    # --- state for resume -------------------------------------------------
    def save_checkpoint(self) -> None:
        rng = {"torch": torch.get_rng_state(), "generator": self.generator.get_state()}
        state = {"epoch": self.epoch, "step": self.step, "seconds": self.seconds, "best": self.best}
        model_io.save_checkpoint(
            self.run_dir, self.model, self.optimizer, rng, {**state, "bad_epochs": self.bad_epochs}
        )

    def restore_checkpoint(self) -> None:
        rng, state = model_io.load_checkpoint(self.run_dir, self.model, self.optimizer)
        torch.set_rng_state(rng["torch"])
        self.generator.set_state(rng["generator"])
        self.epoch, self.step, self.seconds = state["epoch"], state["step"], state["seconds"]
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
        self.metrics = read_metrics(self.run_dir)[: self.epoch]

    # --- the loop ---------------------------------------------------------
    def fit(self, train: Dataset, heldout: Dataset) -> list[dict[str, float]]:
        """Train until the epoch budget or early stopping; returns the per-epoch metrics."""
        cfg, model = self.config, self.model
        epochs = cfg.epochs_for(len(train))
        steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
        warmup_steps = cfg.warmup_epochs * steps_per_epoch
        eval_gen = torch.Generator().manual_seed(EVAL_SEED)
        heldout_x = model.prepare(heldout.x, eval_gen)
        static_x = model.prepare(train.x, torch.Generator().manual_seed(cfg.seed)) if cfg.binarize == "static" else None
        bar = tqdm(
            total=epochs * steps_per_epoch, initial=self.step, disable=True if self.quiet else None,
            unit="step", dynamic_ncols=True, leave=False,
        )  # fmt: skip
        model.train()
        while self.epoch < epochs and not self._should_stop():
            start = time.perf_counter()
            sums = torch.zeros(3, dtype=torch.float64)
            order = torch.randperm(len(train), generator=self.generator)
            for i in range(0, len(train), cfg.batch_size):
                index = order[i : i + cfg.batch_size]
                x = static_x[index] if static_x is not None else model.prepare(train.x[index], self.generator)
                beta = cfg.beta * min(1.0, (self.step + 1) / warmup_steps) if warmup_steps > 0 else cfg.beta
                r = model.elbo(x)
                kl_penalised = r.kl_per_dim
                if cfg.free_bits > 0:  # Kingma et al. 2016: per dimension, batch-averaged KL below the floor is free
                    kl_penalised = r.kl_per_dim.mean(0).clamp_min(cfg.free_bits).expand_as(r.kl_per_dim)
                loss = -(r.reconstruction - beta * kl_penalised.sum(-1)).mean()
                if not torch.isfinite(loss):
                    raise TrainingError(
                        f"the loss became {loss.item()} at epoch {self.epoch + 1}, step {self.step + 1}"
                    )
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.clip_grad is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                self.optimizer.step()
                self.step += 1
                sums += torch.stack([-r.elbo.sum(), -r.reconstruction.sum(), r.kl.sum()]).detach().double()
                bar.update(1)
                bar.set_postfix(epoch=self.epoch + 1, loss=f"{loss.item():.2f}", refresh=False)
            self.seconds += time.perf_counter() - start
            self.epoch += 1
            held = evaluate_elbo(model, heldout_x)
            train_means = (sums / len(train)).tolist()
            row = {
                "epoch": self.epoch, "step": self.step, "seconds": round(self.seconds, 3), "beta": beta,
                "train_neg_elbo": train_means[0], "train_reconstruction": train_means[1], "train_kl": train_means[2],
                "heldout_neg_elbo": held["neg_elbo"], "heldout_reconstruction": held["reconstruction"],
                "heldout_kl": held["kl"], "heldout_bits_per_dim": held["neg_elbo"] / (model.spec.dim * math.log(2)),
            }  # fmt: skip
            self.metrics.append(row)
            self._end_epoch(row)
            bar.set_postfix(epoch=self.epoch, heldout=f"{row['heldout_neg_elbo']:.2f}")
        bar.close()
        model.eval()
        return self.metrics

    def _should_stop(self) -> bool:
        return self.config.patience is not None and self.bad_epochs >= self.config.patience

    def _end_epoch(self, row: dict[str, float]) -> None:
        """Save the model when held-out -ELBO improved, then metrics, then the checkpoint."""
        if row["heldout_neg_elbo"] < self.best:
            self.best, self.bad_epochs = row["heldout_neg_elbo"], 0
            model_io.save_weights(self.run_dir / model_io.WEIGHTS, self.model.state_dict())
        else:
            self.bad_epochs += 1
        write_metrics(self.run_dir, self.metrics)
        self.save_checkpoint()


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(run_dir / "metrics.csv", buffer.getvalue())


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
