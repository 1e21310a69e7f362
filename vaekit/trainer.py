"""The training loop: maximise the ELBO (or the IWAE bound, or the ELBO then the IWAE bound) with Adam,
with KL warm-up, free bits, clipping, skipping of outlier updates, and early stopping.

Data stays in memory as one tensor and batches are taken by index, so there is no per-item Python
work. Every epoch ends with a held-out evaluation; the best model, the metrics and a checkpoint are
written atomically after the first epoch, then at most every SAVE_EVERY_SECONDS, and at the end.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import gc
import io
import math
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from vaekit import distributed
from vaekit import io as model_io
from vaekit._atomic import write_text
from vaekit.data import Dataset
from vaekit.errors import ModelFileError, OptionError, VaekitError
from vaekit.models import BOTH_TOP_PRIORS, MAX_TOP_MIXTURE, LatentVariableModel, ModelConfig, check_top_mixture

METRIC_FIELDS = [
    "epoch", "step", "seconds", "wall_seconds", "beta",
    "train_neg_elbo", "train_reconstruction", "train_kl",
    "heldout_neg_elbo", "heldout_reconstruction", "heldout_kl", "heldout_bits_per_dim", "skipped_updates",
    "heldout_neg_iwae",  # on epochs trained on the IWAE bound: that bound with k samples, which then picks the best
]  # fmt: skip
TARGET_STEPS = 1600  # default epochs give about this many optimiser steps (at least MIN_EPOCHS)
MIN_EPOCHS, MAX_EPOCHS = 5, 300
# under a time budget, the share of it kept for fitting a top-layer prior (--fit-prior) once training ends: the fit
# of 64 components to the 256-wide Fashion-MNIST hybrid took 18 s (36 s is 2 % of 30 minutes), of 256 components 97 s
FIT_PRIOR_SHARE = 0.02
BUDGET_PROBE_STEPS = 50  # under a time budget, the speed is first measured after this many steps
SAVE_EVERY_SECONDS = (
    10.0  # checkpoint, best weights and metrics: after the first epoch, then at most this often, and at the end
)
EVAL_SEED = 0  # binarisation of held-out data for Bernoulli models: one fixed draw
PRECISIONS = ("auto", "fp32", "bf16")
OBJECTIVES = ("elbo", "iwae")
ON_NAN = ("stop", "skip")
MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed takes
NONFINITE_IN_A_ROW = 100  # under --on-nan skip, this many non-finite steps in a row stop training: it will not recover
# and this many updates in a row above --skip-threshold: the model is stuck where every gradient is an 'outlier'
SKIPPED_IN_A_ROW = 100
# --skip-factor: the median gradient norm of the last SKIP_WINDOW steps (skipped ones too, so that norms which grow
# for good are soon the norm) is the scale, once SKIP_HISTORY steps have made one
SKIP_WINDOW = 100
SKIP_HISTORY = 50
DEEP_LR_WARMUP = 200  # steps: without a warm-up, the default hierarchical recipe diverged in its first epoch
ADAM_BETAS = (0.9, 0.99)  # a shorter second-moment memory than the usual 0.999: measured faster to a target -ELBO


class TrainingError(VaekitError):
    """Training cannot go on (for example, the loss became NaN)."""


@dataclasses.dataclass
class TrainConfig:
    epochs: int | None = None  # None: about TARGET_STEPS steps
    batch_size: int = 256
    lr: float = 3e-3
    lr_decay: float = 0.5  # the learning rate falls linearly to 0 over this last fraction of the steps
    lr_warmup: int | None = None  # ... and rises linearly from 0 over this many first steps (None: DEEP_LR_WARMUP
    # for a model of several latent layers, whose zero-initialised posterior layers diverge at the full rate, else 0)
    beta: float = 1.0  # weight of the KL term
    warmup_epochs: float = 0.0  # linear KL warm-up from 0 to beta
    free_bits: float = 0.0  # nats per latent dimension below which KL is not penalised
    clip_grad: float | None = None  # max gradient norm
    # decoupled (AdamW): each step also shrinks every weight matrix and kernel by lr x this fraction
    weight_decay: float = 0.0
    patience: int | None = 20  # early stopping: epochs without held-out improvement (None: never)
    binarize: str | None = None  # None, "static" or "dynamic" (Bernoulli models)
    precision: str = "auto"  # "fp32", "bf16" (autocast of the networks' matmuls) or "auto": bf16 where it is faster
    objective: str = "elbo"  # or "iwae": the importance-weighted bound with `k` samples
    k: int = 5  # importance samples of the IWAE objective
    iwae_tail: float = 0.0  # train the last fraction of the run (of its time, under a budget) on the IWAE bound
    skip_threshold: float | None = None  # skip updates whose gradient norm exceeds this (VDVAE); None: never
    skip_factor: float | None = None  # ... or this many times the median norm of the last SKIP_WINDOW steps
    on_nan: str = "stop"  # a NaN/inf loss or gradient: "stop" naming the epoch and step, or "skip" that update
    time_budget: float | None = None  # wall-clock seconds, evaluation and saving included: training ends (and its
    # learning rate decays) by then
    fit_prior: int = 0  # > 0: once trained, fit a mixture of this many Gaussians as the top layer's prior (top_prior)
    seed: int = 0

    def validate(self, likelihood: str | None = None) -> None:
        """Raise OptionError for values out of range; `likelihood` (where known) must fit the binarisation."""
        checks = [
            (self.epochs is None or self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (math.isfinite(self.lr) and self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (math.isfinite(self.beta) and self.beta >= 0, f"beta must be >= 0, got {self.beta}"),
            (0 <= self.lr_decay <= 1, f"the decay fraction must lie in [0, 1], got {self.lr_decay}"),
            (self.lr_warmup is None or self.lr_warmup >= 0,
             f"learning-rate warm-up must be >= 0 steps, got {self.lr_warmup}"),
            (self.warmup_epochs >= 0, f"warm-up must be >= 0 epochs, got {self.warmup_epochs}"),
            (self.free_bits >= 0, f"free bits must be >= 0, got {self.free_bits}"),
            (self.clip_grad is None or self.clip_grad > 0, f"gradient clip must be > 0, got {self.clip_grad}"),
            (math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             f"weight decay must be >= 0, got {self.weight_decay}"),
            (self.patience is None or self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
            (self.binarize in (None, "static", "dynamic"), f"binarize must be static or dynamic, got {self.binarize}"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision}"),
            (self.objective in OBJECTIVES, f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective}"),
            (self.k >= 1, f"the IWAE objective needs k >= 1 samples, got {self.k}"),
            (self.objective == "elbo" or (self.beta == 1 and self.free_bits == 0 and self.warmup_epochs == 0),
             "the IWAE objective is a bound on log p(x): it takes no beta, free bits or KL warm-up"),
            (0 <= self.iwae_tail < 1, f"the IWAE tail must lie in [0, 1), got {self.iwae_tail}"),
            (self.iwae_tail == 0 or (self.objective == "elbo" and self.beta == 1 and self.free_bits == 0),
             "an IWAE tail follows ELBO training with beta 1 and no free bits (--objective elbo)"),
            (self.time_budget is None or self.time_budget > 0, f"time budget must be > 0 s, got {self.time_budget}"),
            (self.skip_threshold is None or self.skip_threshold > 0,
             f"the update-skipping threshold must be > 0, got {self.skip_threshold}"),
            (self.skip_factor is None or (math.isfinite(self.skip_factor) and self.skip_factor > 1),
             f"the update-skipping factor must be > 1 (times the median gradient norm), got {self.skip_factor}"),
            (isinstance(self.seed, int) and 0 <= self.seed <= MAX_SEED,
             f"seed must lie in 0..{MAX_SEED}, got {self.seed}"),
            (self.on_nan in ON_NAN, f"on_nan must be one of {', '.join(ON_NAN)}, got {self.on_nan}"),
            (0 <= self.fit_prior <= MAX_TOP_MIXTURE,
             f"a fitted top-layer prior has 1..{MAX_TOP_MIXTURE} components, got {self.fit_prior}"),
        ]  # fmt: skip
        if likelihood is not None:
            fits = (self.binarize is not None) == (likelihood == "bernoulli")
            checks.append((fits, "binarisation (--binarize) goes with the Bernoulli likelihood, and only with it"))
        for ok, message in checks:
            if not ok:
                raise OptionError(message)

    def epochs_for(self, n_train: int) -> int:
        if self.epochs is not None:
            return self.epochs
        steps_per_epoch = math.ceil(n_train / self.batch_size)
        return min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(TARGET_STEPS / steps_per_epoch)))


def check_model_fits(config: TrainConfig, model_config: ModelConfig) -> None:
    """What the training options need of the model (OptionError if it lacks it), checked before a run is written."""
    if config.fit_prior:
        check_top_mixture(model_config.layers, model_config.arch)
        if model_config.learned_prior:
            raise OptionError(BOTH_TOP_PRIORS)
    if config.free_bits > 0 and (model_config.prior == "vamp" or model_config.learned_prior):
        raise OptionError(
            "free bits need a KL per latent dimension, which a mixture prior's (VampPrior, --learned-prior) has not"
        )


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW's parameter groups, by the usual convention: the weight matrices and kernels decay; the biases and
    LayerNorm gains (1-D) do not, since they set an offset or a scale, and a gain pulled towards zero only undoes
    the norm. Nor do the parameters a module names in its `not_weights` (learned inputs and starting states, such
    as the VampPrior's pseudo-inputs), which decay would pull towards a blank image."""
    parameters = list(model.parameters())
    spared = {id(getattr(m, name)) for m in model.modules() for name in getattr(m, "not_weights", ())}
    return [
        {"params": [p for p in parameters if p.ndim >= 2 and id(p) not in spared], "weight_decay": weight_decay},
        {"params": [p for p in parameters if p.ndim < 2 or id(p) in spared], "weight_decay": 0.0},
    ]


def bits_per_dim(nats: float, model: LatentVariableModel) -> float | None:
    """Nats per example as bits per dimension; None for continuous data, where it is no code length."""
    return None if model.spec.kind == "real" else nats / (model.spec.dim * math.log(2))


def evaluate_elbo(
    model: LatentVariableModel,
    x: torch.Tensor,
    batch_size: int = 1000,
    generator: torch.Generator | None = None,
    y: torch.Tensor | None = None,
) -> dict[str, float]:
    """Mean -ELBO, reconstruction term and KL over model-space data `x` (labels `y`), in nats per example."""
    totals = _elbo_sums(model, x, y, None, batch_size, generator)
    neg_elbo, rec, kl = (totals / len(x)).tolist()
    return {"neg_elbo": neg_elbo, "reconstruction": rec, "kl": kl}


@torch.no_grad()
def _elbo_sums(model, x, y, rows, batch_size, generator, k: int | None = None) -> torch.Tensor:
    """Sums of -ELBO, -reconstruction and KL over x[rows] (all rows if None), in float64; with `k`, the
    ELBO's pieces are averages over k samples, and a fourth sum is that of the negative IWAE bound.

    The reparameterisation noise is drawn for all of x and then sliced, so a shard of x sees the
    same noise as it would in a single process.
    """
    was_training = model.training
    model.eval()
    samples = () if k is None else (k,)
    noise = torch.randn(*samples, len(x), model.latent_dim, generator=generator, device=x.device)
    if rows is not None:
        x, noise, y = x[rows], noise[..., rows, :], None if y is None else y[rows]
    batch_size = max(1, batch_size // (k or 1))  # about as many decoded rows per pass either way
    totals = torch.zeros(3 if k is None else 4, dtype=torch.float64, device=x.device)
    for start in range(0, len(x), batch_size):
        part = slice(start, start + batch_size)
        r = model(x[part].float(), noise[..., part, :], None if y is None else y[part])
        sums = r.totals()
        totals += sums if k is None else torch.cat([sums, -r.objective.sum().double().reshape(1)])
    model.train(was_training)
    return totals


def heldout_score(row: dict[str, Any]) -> float:
    """What picks the best epoch: the held-out bound that epoch trained on (-IWAE where it was the IWAE bound)."""
    iwae = row.get("heldout_neg_iwae")
    return row["heldout_neg_elbo"] if iwae is None else iwae


def best_epoch(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """The metrics row of the epoch a run kept: by `heldout_score`, among the IWAE-trained epochs if there are
    any (an IWAE tail's, which is how `Trainer._begin_tail` restarts the comparison)."""
    trained_iwae = [m for m in metrics if m.get("heldout_neg_iwae") is not None]
    return min(trained_iwae or metrics, key=heldout_score)


@functools.cache
def bf16_is_faster(device_type: str) -> bool:
    """Whether bf16 matmuls beat fp32 ones here by a clear margin (CPUs with AVX512-BF16 or AMX; not AVX2 alone)."""
    if device_type != "cpu":
        return False  # the CUDA path stays fp32 unless asked: untested here
    a32, b32 = torch.randn(256, 512), torch.randn(512, 512)
    a16, b16 = a32.bfloat16(), b32.bfloat16()

    def best_of(a, b):
        times = []
        for _ in range(7):
            start = time.perf_counter()
            for _ in range(5):
                a @ b
            times.append(time.perf_counter() - start)
        return min(times)

    best_of(a16, b16)
    return best_of(a16, b16) * 1.3 < best_of(a32, b32)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    if precision == "bf16" or (precision == "auto" and bf16_is_faster(device.type)):
        return torch.bfloat16
    return torch.float32


def _prepared(
    model: LatentVariableModel, raw: torch.Tensor, generator: torch.Generator, chunk: int = 65536
) -> torch.Tensor:
    """Model-space data, kept as uint8 where the values are levels or bits (a quarter of float32's memory)."""
    compact = model.spec.kind == "levels" and model.spec.levels <= 256
    parts = [model.prepare(raw[i : i + chunk], generator) for i in range(0, len(raw), chunk)]
    return torch.cat([p.to(torch.uint8) for p in parts] if compact else parts)


def labels_for(model: LatentVariableModel, data: Dataset) -> torch.Tensor | None:
    """The labels a conditional model needs, checked once here rather than in every step (None if unconditional)."""
    if not model.conditional:
        return None
    if data.labels is None:
        raise OptionError(f"{data.source}: a conditional model needs labelled data (see --label)")
    labels = data.labels.long()
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < model.config.classes:
        raise OptionError(f"{data.source}: labels must lie in 0..{model.config.classes - 1} for this model")
    return labels


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise OptionError(f"unknown device {name!r}: use cpu, cuda or auto")
    if name == "cuda" and not torch.cuda.is_available():
        raise OptionError("--device cuda was asked for, but PyTorch sees no CUDA device")
    return torch.device(name)


class Trainer:
    """Runs the epochs; under torchrun each rank takes its share of every global batch (DDP)."""

    def __init__(
        self, model: LatentVariableModel, config: TrainConfig, run_dir: str | Path, quiet: bool = False, device="auto"
    ):
        config.validate(model.config.likelihood)
        if config.lr_warmup is None:
            config = dataclasses.replace(config, lr_warmup=DEEP_LR_WARMUP if len(model.layer_sizes) > 1 else 0)
        check_model_fits(config, model.config)
        self.device = resolve_device(device) if isinstance(device, str) else device
        distributed.setup(self.device)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        self.model, self.config, self.run_dir, self.quiet = model.to(self.device), config, Path(run_dir), quiet
        self.ddp = model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        # fused Adam: one kernel for all parameters instead of a Python loop over them; AdamW only with a decay, so
        # that the runs and checkpoints without one keep the optimizer they had
        adam = dict(lr=config.lr, betas=ADAM_BETAS, fused=True)
        if config.weight_decay:
            self.optimizer = torch.optim.AdamW(decay_groups(model, config.weight_decay), **adam)
        else:
            self.optimizer = torch.optim.Adam(model.parameters(), **adam)
        # rank 0's probe decides for every rank: the ranks of one run must not differ in their arithmetic
        self.dtype = distributed.broadcast(resolve_precision(config.precision, self.device))
        self.generator = torch.Generator(self.device).manual_seed(config.seed)  # same stream on every rank
        self.epoch, self.step, self.skipped = 0, 0, 0
        # where an IWAE tail began: its step, and the progress (0..1) of the learning-rate schedule there
        self.tail_start: int | None = None
        self.tail_progress = 0.0
        self._nonfinite_in_a_row = self._skipped_in_a_row = 0
        self._recent_norms: collections.deque[float] = collections.deque(maxlen=SKIP_WINDOW)  # for --skip-factor
        self.seconds, self.wall = 0.0, 0.0  # optimisation time; wall-clock time of training, evaluation and saving
        self._best_state: dict[str, torch.Tensor] | None = None  # best weights not yet written
        self._last_save = self._last_epoch_end = -math.inf
        self.best, self.bad_epochs = math.inf, 0
        self.metrics: list[dict[str, float]] = []

    @property
    def resolved(self) -> dict[str, str]:
        """What this session trains on and in, `auto`'s choices included: a section of config.json."""
        return {"device": self.device.type, "precision": "bf16" if self.dtype == torch.bfloat16 else "fp32"}

    # --- state for resume -------------------------------------------------
    def save_checkpoint(self) -> None:
        rng = {"generator": self.generator.get_state()}
        state = {"epoch": self.epoch, "step": self.step, "seconds": self.seconds, "wall": self.wall,
                 "best": self.best, "skipped": self.skipped, "tail_start": self.tail_start,
                 "tail_progress": self.tail_progress, "recent_norms": list(self._recent_norms)}  # fmt: skip
        model_io.save_checkpoint(
            self.run_dir, self.model, self.optimizer, rng, {**state, "bad_epochs": self.bad_epochs}
        )

    def restore_checkpoint(self) -> None:
        """Continue from the last checkpoint; a run cut before its first one starts again from scratch."""
        if not (self.run_dir / model_io.CHECKPOINT).exists():
            return
        rng, state = model_io.load_checkpoint(self.run_dir, self.model, self.optimizer)
        self.generator.set_state(rng["generator"])
        self.epoch, self.step, self.seconds = state["epoch"], state["step"], state["seconds"]
        self.best, self.bad_epochs, self.skipped = state["best"], state["bad_epochs"], state.get("skipped", 0)
        self.wall = state.get("wall", self.seconds)
        self.tail_start, self.tail_progress = state.get("tail_start"), state.get("tail_progress", 0.0)
        self._recent_norms.extend(state.get("recent_norms", []))
        self.metrics = read_metrics(self.run_dir)[: self.epoch]

    def release_ddp(self) -> None:
        """Free the DDP wrapper while its process group still exists. Its reducer keeps the group alive, and
        a group left to interpreter exit may abort the process with gloo threads unjoined: the suspected
        cause of a rare "terminate called without an active exception" in a 2-process resume test."""
        if self.ddp is not self.model:
            self.ddp = self.model
            gc.collect()  # in case hooks hold the wrapper in a reference cycle

    # --- the loop ---------------------------------------------------------
    def fit(self, train: Dataset, heldout: Dataset, stop_below: float | None = None) -> list[dict[str, float]]:
        """Train until the epoch or time budget, early stopping, or held-out -ELBO <= `stop_below`.

        Returns the metrics, one row per epoch (a budget may end the last one early)."""
        cfg, model = self.config, self.model
        budget_only = cfg.time_budget is not None and cfg.epochs is None
        epochs = 10**9 if budget_only else cfg.epochs_for(len(train))  # the budget alone decides
        steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
        self.max_steps = self.total_steps = epochs * steps_per_epoch
        self._clock_start = time.perf_counter() - self.wall  # so that _wall() goes on from a resumed run's time
        train_x = train.x.to(self.device)  # moved once; uint8 where the data are levels
        train_y, heldout_y = (labels_for(model, d) for d in (train, heldout))
        train_y, heldout_y = (None if t is None else t.to(self.device) for t in (train_y, heldout_y))
        heldout_x = _prepared(model, heldout.x, torch.Generator().manual_seed(EVAL_SEED)).to(self.device)
        if cfg.binarize == "static":
            train_x = _prepared(model, train.x, torch.Generator().manual_seed(cfg.seed)).to(self.device)
        bar = tqdm(
            total=self.total_steps, initial=self.step, disable=True if self.quiet or self.rank else None,
            unit="step", dynamic_ncols=True, leave=False,
        )  # fmt: skip
        self._speed_origin = (self.step, self._wall())  # the budget's speed: this session's steps, not the set-up
        self._fit_steps_to_budget()
        model.train()
        try:
            self._epochs(train_x, train_y, heldout_x, heldout_y, bar, stop_below)
        except BaseException:
            if self.rank == 0:  # keep the best model so far; the checkpoint stays at its last epoch's end
                self._save(checkpoint=False)
            raise
        finally:
            bar.close()
        if self.rank == 0 and self._last_save < self._last_epoch_end:
            self._save()
        distributed.barrier()
        model.eval()
        return self.metrics

    def _epochs(self, train_x, train_y, heldout_x, heldout_y, bar, stop_below: float | None) -> None:
        cfg = self.config
        warmup_steps = cfg.warmup_epochs * math.ceil(len(train_x) / cfg.batch_size)
        check_every = 1 if self.device.type == "cpu" else 50  # on a GPU, reading the loss waits for it
        while self.step < self.total_steps and not self._should_stop():
            start, seen = time.perf_counter(), 0
            sums = torch.zeros(3, dtype=torch.float64, device=self.device)
            order = torch.randperm(len(train_x), generator=self.generator, device=self.device)
            for i in range(0, len(train_x), cfg.batch_size):
                if self.step >= self.total_steps:  # the time budget ends inside this epoch
                    break
                batch = order[i : i + cfg.batch_size]
                beta = cfg.beta * min(1.0, (self.step + 1) / warmup_steps) if warmup_steps > 0 else cfg.beta
                if self.tail_start is None and cfg.iwae_tail > 0 and self._progress() >= 1 - cfg.iwae_tail:
                    self._begin_tail()
                self._set_learning_rate()
                result = self._step(train_x, train_y, batch, beta)
                self.step += 1
                if result is not None:
                    loss, r = result
                    seen += len(batch)
                    sums += r.totals()
                if self.step - self._speed_origin[0] == BUDGET_PROBE_STEPS:
                    self._fit_steps_to_budget()  # a first estimate, should one epoch outlast the budget
                if result is not None and (self.step % check_every == 0 or i + cfg.batch_size >= len(train_x)):
                    value = loss.item()
                    if not math.isfinite(value):
                        raise TrainingError(f"the loss became {value} at epoch {self.epoch + 1}, step {self.step}")
                    bar.set_postfix(epoch=self.epoch + 1, loss=f"{value:.2f}", refresh=False)
                bar.update(1)
            self.seconds += time.perf_counter() - start
            self.epoch += 1
            train_means = distributed.all_reduce_sum(sums) / seen if seen else torch.full_like(sums, math.nan)
            row = self._epoch_row(train_means, heldout_x, heldout_y, beta)
            self.wall = self._wall()
            row["wall_seconds"] = round(self.wall, 3)
            self.metrics.append(row)
            if self.rank == 0:
                self._end_epoch(row)
            else:
                self._track_best(row)
            bar.set_postfix(epoch=self.epoch, heldout=f"{row['heldout_neg_elbo']:.2f}")
            if stop_below is not None and row["heldout_neg_elbo"] <= stop_below:
                break
            self._fit_steps_to_budget()
            bar.total = self.total_steps

    def _wall(self) -> float:
        return time.perf_counter() - self._clock_start

    def _fit_steps_to_budget(self) -> None:
        """Under a time budget, the steps that fit in it at the speed measured so far, evaluation and saving
        included (rank 0's measure, so that every rank stops at the same step and follows the same
        learning-rate schedule)."""
        budget, elapsed = self.config.time_budget, self._wall()
        first_step, first_wall = self._speed_origin
        if budget is None or self.step == 0:
            return
        if self.config.fit_prior:
            budget *= 1 - FIT_PRIOR_SHARE
        if self.step > first_step:
            steps_per_second = (self.step - first_step) / (elapsed - first_wall)
        else:  # a resumed run before its first step: the speed of the earlier session(s)
            steps_per_second = self.step / elapsed
        remaining = max(0.0, budget - elapsed) * steps_per_second
        self.total_steps = distributed.broadcast(min(self.max_steps, self.step + int(remaining)))

    def _progress(self) -> float:
        """How far training has come, 0..1: the share of the steps done, except that an IWAE tail, once begun,
        spans what was left at its start, however slow its steps (under a budget: the last part of the time)."""
        if self.tail_start is None:
            return self.step / self.total_steps
        tail_done = (self.step - self.tail_start) / max(1, self.total_steps - self.tail_start)
        return self.tail_progress + (1 - self.tail_progress) * min(1.0, tail_done)

    def _begin_tail(self) -> None:
        """Switch to the IWAE bound for good (a later budget estimate never switches back)."""
        self.tail_start, self.tail_progress = self.step, self._progress()
        # its steps are slower (k samples each): under a budget, measure their speed afresh
        self._speed_origin = (self.step, self._wall())
        # the held-out score becomes the IWAE bound, on another scale: the best is picked among tail epochs
        self.best, self.bad_epochs = math.inf, 0

    @property
    def trains_iwae(self) -> bool:
        return self.config.objective == "iwae" or self.tail_start is not None

    def _set_learning_rate(self) -> None:
        """Warm-up-stable-decay: a linear rise over the first `lr_warmup` steps (Adam's first steps move every
        weight by about the rate, which a deep model's zero-initialised layers do not survive at full rate),
        constant, then a linear fall to zero over the last `lr_decay` of training: most of the gain of
        annealing, at whatever point the budget ends."""
        remaining = 1 - self._progress()
        scale = 1.0 if self.config.lr_decay == 0 else min(1.0, remaining / self.config.lr_decay)
        if self.config.lr_warmup > 0:
            scale *= min(1.0, (self.step + 1) / self.config.lr_warmup)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * scale

    def _step(self, train_x: torch.Tensor, train_y: torch.Tensor | None, batch: torch.Tensor, beta: float):
        """One optimiser step on this rank's share of a global batch; returns (loss, ELBO pieces), or None
        where `on_nan="skip"` dropped a non-finite step."""
        cfg, model = self.config, self.model
        n = len(batch)
        # random draws cover the whole global batch so that every rank (and a single process) sees the same ones
        samples = (cfg.k,) if self.trains_iwae else ()
        noise = torch.randn(*samples, n, model.latent_dim, generator=self.generator, device=self.device)
        mine = slice(self.rank, None, self.world)
        rows = batch[mine]
        raw, y = train_x[rows], None if train_y is None else train_y[rows]
        if cfg.binarize == "dynamic":
            uniform = torch.rand((n, *raw.shape[1:]), generator=self.generator, device=self.device)
            x = model.binarize(raw, uniform[mine])
        else:
            x = raw.to(torch.float32)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            r = self.ddp(x, noise[..., mine, :], y)
        if r.objective is not None:
            objective = r.objective
        elif cfg.free_bits > 0:  # Kingma et al. 2016: per dimension, batch-averaged KL below the floor is free
            objective = r.reconstruction - beta * r.kl_per_dim.mean(0).clamp_min(cfg.free_bits).sum()
        else:
            objective = r.reconstruction - beta * r.kl
        # sum over this rank's items / global batch size: DDP's average over ranks then gives the global mean
        loss = -objective.sum() * (self.world / n)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        skipping = cfg.skip_threshold is not None or cfg.skip_factor is not None
        if cfg.on_nan == "skip" or skipping:
            # the norm, unchanged; taken after DDP's all-reduce, so every rank decides alike
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), math.inf)
        if cfg.on_nan == "skip" and not self._finite_step(loss, norm):
            return None
        limit = self._skip_limit(float(norm)) if skipping else None
        if limit is not None and not norm <= limit:  # also NaN: an outlier update would undo many good ones
            self.skipped += 1
            self._skipped_in_a_row += 1
            if self._skipped_in_a_row >= SKIPPED_IN_A_ROW:
                raise TrainingError(
                    f"every update for {SKIPPED_IN_A_ROW} steps in a row, up to epoch {self.epoch + 1}, step "
                    f"{self.step + 1}, had a gradient norm above the skip limit of {limit:g} (the last: "
                    f"{float(norm):.4g}), so the model cannot move: raise --skip-threshold or --skip-factor, or "
                    "lower --lr"
                )
            return loss.detach(), r
        self._skipped_in_a_row = 0
        if cfg.clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
        self.optimizer.step()
        return loss, r

    def _skip_limit(self, norm: float) -> float | None:
        """The gradient norm above which this update is skipped: --skip-threshold, or --skip-factor times the
        median of the norms before it, whichever is lower (None: neither applies yet). Records `norm`."""
        cfg, limits = self.config, []
        if cfg.skip_threshold is not None:
            limits.append(cfg.skip_threshold)
        if cfg.skip_factor is not None and len(self._recent_norms) >= SKIP_HISTORY:
            limits.append(cfg.skip_factor * statistics.median(self._recent_norms))
        if cfg.skip_factor is not None and math.isfinite(norm):
            self._recent_norms.append(norm)
        return min(limits, default=None)

    def _finite_step(self, loss: torch.Tensor, norm: torch.Tensor) -> bool:
        """Whether this step's loss and gradient norm are finite; counts the ones that are not (a rank's NaN loss
        makes every rank's all-reduced gradient NaN, so the ranks agree)."""
        if bool(torch.isfinite(loss)) and bool(torch.isfinite(norm)):
            self._nonfinite_in_a_row = 0
            return True
        self.skipped += 1
        self._nonfinite_in_a_row += 1
        if self._nonfinite_in_a_row >= NONFINITE_IN_A_ROW:
            raise TrainingError(
                f"the loss or gradient was NaN/inf for {NONFINITE_IN_A_ROW} steps in a row, up to epoch "
                f"{self.epoch + 1}, step {self.step + 1}: the model will not recover (try a lower --lr or --clip-grad)"
            )
        return False

    def _epoch_row(self, train_means: torch.Tensor, heldout_x, heldout_y, beta: float) -> dict[str, float]:
        eval_gen = torch.Generator(self.device).manual_seed(EVAL_SEED)  # the same noise every epoch
        rows = slice(self.rank, None, self.world)
        k = self.config.k if self.trains_iwae else None
        sums = _elbo_sums(self.model, heldout_x, heldout_y, rows, 1000, eval_gen, k)
        held = distributed.all_reduce_sum(sums) / len(heldout_x)
        t, h = train_means.tolist(), held.tolist()
        return {
            "epoch": self.epoch, "step": self.step, "seconds": round(self.seconds, 3), "beta": beta,
            "train_neg_elbo": t[0], "train_reconstruction": t[1], "train_kl": t[2],
            "heldout_neg_elbo": h[0], "heldout_reconstruction": h[1], "heldout_kl": h[2],
            "heldout_bits_per_dim": bits_per_dim(h[0], self.model), "skipped_updates": self.skipped,
            "heldout_neg_iwae": h[3] if k else None,
        }  # fmt: skip

    def _should_stop(self) -> bool:
        return self.config.patience is not None and self.bad_epochs >= self.config.patience

    def _track_best(self, row: dict[str, float]) -> bool:
        score = heldout_score(row)
        improved = score < self.best
        if improved:
            self.best, self.bad_epochs = score, 0
        else:
            self.bad_epochs += 1
        return improved

    def _end_epoch(self, row: dict[str, float]) -> None:
        """Keep the model when held-out -ELBO improved; save now and then (rank 0 only), since on a small
        data set writing every epoch would take longer than the epoch itself."""
        if self._track_best(row):
            self._best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self._last_epoch_end = time.perf_counter()
        if self._last_epoch_end - self._last_save >= SAVE_EVERY_SECONDS:
            self._save()

    def _save(self, checkpoint: bool = True) -> None:
        """The best model (if it changed), then metrics, then the checkpoint: a crash between any two
        leaves a loadable run, and a resumed run repeats the epochs since the checkpoint exactly (it
        reads the metrics only up to the checkpoint's epoch)."""
        if self._best_state is not None:
            model_io.save_weights(self.run_dir / model_io.WEIGHTS, self._best_state)
            self._best_state = None
        write_metrics(self.run_dir, self.metrics)
        if checkpoint:
            self.save_checkpoint()
            self._last_save = time.perf_counter()


def write_metrics(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(run_dir / "metrics.csv", buffer.getvalue())


COUNTS = ("epoch", "step", "skipped_updates")  # read back as integers, so that a resumed run writes them alike


def read_metrics(run_dir: Path) -> list[dict[str, float]]:
    path = Path(run_dir) / "metrics.csv"
    if not path.is_file():
        return []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [
                {k: None if not v else int(v) if k in COUNTS else float(v) for k, v in row.items()}
                for row in csv.DictReader(f)
            ]
    except (UnicodeDecodeError, ValueError, TypeError, csv.Error) as e:
        raise ModelFileError(f"{path}: corrupt metrics file ({e})") from None
