"""Training runs: a run folder is created, trained, checkpointed and filled with figures.

This is what `vaekit train` and `vaekit.train(...)` call; it joins data, model, trainer, io and report.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import time
from pathlib import Path
from typing import Any

import torch

from vaekit import distributed, latent, report
from vaekit import io as model_io
from vaekit.data import Dataset, load_for_training
from vaekit.errors import OptionError
from vaekit.evaluate import encode_means
from vaekit.models import LatentVariableModel, ModelConfig, build
from vaekit.top_prior import fit_top_prior
from vaekit.trainer import EVAL_SEED, TrainConfig, Trainer, check_model_fits, labels_for, resolve_device

FIGURE_SEED = 0


@dataclasses.dataclass
class Run:
    """A finished training run: the trained model (best held-out -ELBO), its folder and metrics."""

    model: LatentVariableModel
    run_dir: Path
    metrics: list[dict[str, float]]


def train(
    data: str = "digits",
    out: str | os.PathLike | None = None,
    *,
    likelihood: str | None = None,
    arch: str = "mlp",
    latent_dim: int | None = None,
    hidden: tuple[int, ...] | None = None,
    prior: str = "normal",
    pseudo_inputs: int = 500,
    conditional: bool = False,
    layers: tuple[int, ...] = (),
    context: int = 0,
    context_hidden: int = 0,
    mixture: int = 1,
    layer_norm: bool = False,
    learned_prior: int = 0,
    patches: bool = False,
    noise_maps: bool = False,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    size: tuple[int, int] | None = None,
    label: str | None = None,
    heldout_fraction: float = 0.1,
    quiet: bool = False,
    device: str = "auto",
    **options: Any,
) -> Run:
    """Train a VAE on `data` and write the run folder `out` (default: a new folder under runs/).

    The model: `prior` "normal" or "vamp" (with `pseudo_inputs`), `conditional` (labels into encoder
    and decoder; the data need labels), `layers` (latent sizes of a hierarchical VAE, bottom to top),
    `context` (each pixel's likelihood also sees the earlier pixels within this radius), `context_hidden`
    (units of a hidden layer through which it sees them, with z's parameters of the pixel; 0: linear),
    `mixture` (discretised data: each value's likelihood a mixture of this many discretised logistics),
    `layer_norm` (a hierarchical model: each residual cell starts with a LayerNorm), `learned_prior` (a hierarchical
    model: the top layer's prior is a mixture of this many diagonal Gaussians, learned with it), `patches` (arch
    conv or hybrid: the convolutional path meets the pixels by 4x4 patches, not strided convolutions: a faster step),
    `noise_maps` (arch hybrid: the map layer has no posterior, its latents are noise from their prior, and there is
    no bottom-up map path: a faster step).
    `options` are TrainConfig fields: epochs, batch_size, lr, beta, warmup_epochs, free_bits, clip_grad,
    weight_decay, patience, binarize, objective, k, iwae_tail, skip_threshold, skip_factor, on_nan, precision,
    fit_prior (a mixture prior for the top layer, fitted once trained: vaekit.top_prior), seed.
    Under torchrun, every process calls this; rank 0 writes.
    """
    config = TrainConfig(**options)
    if config.binarize is not None:
        likelihood = likelihood or "bernoulli"
    config.validate(likelihood)
    if not 0 < heldout_fraction < 1:
        raise OptionError(f"held-out fraction must lie in (0, 1), got {heldout_fraction}")
    data_args = {
        "source": data,
        "data_dir": None if data_dir is None else str(data_dir),
        "size": None if size is None else list(size),
        "label": label,
        "heldout_fraction": heldout_fraction,
    }
    train_set, heldout = load_for_training(
        data, heldout_fraction=heldout_fraction, seed=config.seed, data_dir=data_dir, download=download,
        size=size, label=label,
    )  # fmt: skip
    if config.binarize is not None and train_set.spec.kind != "levels":
        raise OptionError("--binarize needs image data with integer levels, not real-valued features")
    torch.manual_seed(config.seed)
    classes = _class_count(train_set) if conditional else 0
    spec = train_set.spec
    model_config = ModelConfig.for_data(
        spec, likelihood, arch, latent_dim, hidden, prior=prior, pseudo_inputs=pseudo_inputs, classes=classes,
        layers=tuple(layers), context=context, context_hidden=context_hidden, mixture=mixture,
        layer_norm=layer_norm, learned_prior=learned_prior, patches=patches, noise_maps=noise_maps,
    )  # fmt: skip
    check_model_fits(config, model_config)  # before the run folder is made
    model = build(model_config)
    device = resolve_device(device)
    distributed.setup(device)  # joins the process group under torchrun
    run_dir = distributed.broadcast(_new_run_dir(out, data) if distributed.is_main() else None)
    trainer = Trainer(model, config, run_dir, quiet, device)
    data_args.update(n_fit=len(train_set), n_heldout=len(heldout))
    if distributed.is_main():
        model_io.save_config(
            run_dir, model, training=dataclasses.asdict(trainer.config), data=data_args, resolved=trainer.resolved
        )
    return _finish(trainer, train_set, heldout)


def resume(run_dir: str | os.PathLike, quiet: bool = False, device: str = "auto") -> Run:
    """Continue an interrupted run from its last checkpoint, with its recorded options and data."""
    run_dir = Path(run_dir)
    config = model_io.read_config(run_dir)
    data = config["data"]
    train_set, heldout = load_for_training(
        data["source"], heldout_fraction=data["heldout_fraction"], seed=config["training"]["seed"],
        data_dir=data["data_dir"], size=data["size"] and tuple(data["size"]), label=data["label"],
    )  # fmt: skip
    torch.manual_seed(config["training"]["seed"])  # the same initial weights, should no checkpoint exist yet
    # training always runs under N(0, I): a prior fitted before an interruption is fitted again at the end
    model = build(dataclasses.replace(ModelConfig.from_dict(config["model"]), top_mixture=0))
    trainer = Trainer(model, TrainConfig(**_kept_arithmetic(run_dir, config, device)), run_dir, quiet, device)
    trainer.restore_checkpoint()
    if distributed.is_main() and config.get("resolved") != trainer.resolved:  # another machine, or `auto` chose anew
        model_io.update_config(run_dir, resolved=trainer.resolved)  # the model section as recorded (a fitted prior)
    return _finish(trainer, train_set, heldout)


def _kept_arithmetic(run_dir: Path, config: dict, device: str) -> dict:
    """The training options to resume with: a run that has begun training on this kind of device keeps the
    precision it began in, rather than letting `auto` choose afresh. The choice is timed, and a busy machine
    can flip it, which would change a run's arithmetic halfway (and its result, against an uninterrupted
    run). A run cut before its first checkpoint, or moved to another kind of device, still lets `auto`
    choose."""
    training, recorded = config["training"], config.get("resolved", {})
    began = (run_dir / model_io.CHECKPOINT).exists()
    same_kind = recorded.get("device") == resolve_device(device).type
    if began and same_kind and recorded.get("precision") in ("fp32", "bf16"):
        return {**training, "precision": recorded["precision"]}
    return training


def _finish(trainer: Trainer, train_set: Dataset, heldout: Dataset) -> Run:
    try:
        metrics = trainer.fit(train_set, heldout)
    finally:
        trainer.release_ddp()  # before the process group goes
        distributed.teardown()
    if not distributed.is_main():
        return Run(trainer.model, trainer.run_dir, metrics)
    model = model_io.load(trainer.run_dir)  # the best epoch, as saved
    if trainer.config.fit_prior:
        _fit_prior(model, trainer, train_set, heldout)
    write_figures(model, heldout, trainer.run_dir, metrics)
    return Run(model, trainer.run_dir, metrics)


def _fit_prior(model: LatentVariableModel, trainer: Trainer, train_set: Dataset, heldout: Dataset) -> None:
    """Fit the top layer's mixture prior (--fit-prior) on the training data, then write the weights and, last,
    the config that names it (the two files disagree only between the two writes)."""
    start = time.perf_counter()
    binarisation = torch.Generator().manual_seed(trainer.config.seed)
    x, held = (model.prepare(d.x, binarisation) for d in (train_set, heldout))
    summary = fit_top_prior(model, x, held, trainer.config.fit_prior, seed=trainer.config.seed)
    summary["seconds"] = round(time.perf_counter() - start, 2)
    model_io.save_weights(trainer.run_dir / model_io.WEIGHTS, model.state_dict())
    model_io.update_config(trainer.run_dir, model=model.config.to_dict(), top_prior=summary)


def _class_count(data: Dataset) -> int:
    if data.labels is None:
        raise OptionError(f"{data.source}: a conditional model needs labelled data (see --label)")
    return len(data.spec.classes) if data.spec.classes else int(data.labels.max()) + 1


def _new_run_dir(out: str | os.PathLike | None, source: str) -> Path:
    if out is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        name = re.sub(r"[^A-Za-z0-9_-]+", "-", Path(source).name).strip("-") or "data"
        out = Path("runs") / f"{name}-{stamp}"
    out = Path(out)
    if (out / model_io.CONFIG).exists():
        raise OptionError(f"{out} already holds a run; resume it with --resume or choose another --out")
    if out.exists() and not out.is_dir():
        raise OptionError(f"{out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


@torch.no_grad()
def write_figures(model: LatentVariableModel, heldout: Dataset, run_dir: Path, metrics: list[dict[str, float]]) -> None:
    """samples.png, reconstructions.png, interpolations.png (image data), loss.png and latents.png."""
    spec = model.spec
    x = model.prepare(heldout.x, torch.Generator().manual_seed(EVAL_SEED))
    y = labels_for(model, heldout)  # a conditional model's: each item is encoded and decoded with its own
    if spec.is_image:
        gen = torch.Generator().manual_seed(FIGURE_SEED)
        report.save_grid(run_dir / "samples.png", spec.to_unit(model.sample(64, generator=gen)), ncols=8)
        cols = min(16, len(x))
        rows = min(2, len(x) // cols)  # pairs of rows: originals above, reconstructions below
        originals = x[: rows * cols].view(rows, cols, *spec.shape)
        shown = None if y is None else y[: rows * cols]
        pairs = torch.cat([originals, model.reconstruct(originals.flatten(0, 1), shown).view_as(originals)], 1)
        report.save_grid(run_dir / "reconstructions.png", spec.to_unit(pairs.flatten(0, 1)), ncols=cols)
        n = min(8, len(x) // 2)
        paths = [
            latent.interpolate(model, x[2 * i], x[2 * i + 1], steps=10, y=None if y is None else y[2 * i])
            for i in range(n)
        ]
        if paths:
            report.save_grid(run_dir / "interpolations.png", spec.to_unit(torch.cat(paths)), ncols=10)
    if metrics:
        report.save_loss_plot(run_dir / "loss.png", metrics)
    means, _ = encode_means(model, x, y)
    labels = None if heldout.labels is None else heldout.labels.numpy()
    report.save_latent_scatter(run_dir / "latents.png", means.numpy(), labels, heldout.label_names)
