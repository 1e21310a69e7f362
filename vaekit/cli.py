"""The `vaekit` command: parses arguments and calls the library; user errors print one line, exit 1."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

import vaekit
from vaekit import data as vdata
from vaekit import distributed, latent, report
from vaekit import io as model_io
from vaekit._atomic import atomic_path, write_text
from vaekit.data import idx
from vaekit.data.arrays import read_array
from vaekit.errors import OptionError, VaekitError
from vaekit.evaluate import encode_means, evaluate
from vaekit.models import ARCHS, LIKELIHOODS, PRIORS, LatentVariableModel
from vaekit.trainer import (
    DEEP_LR_WARMUP,
    MAX_SEED,
    MIN_EPOCHS,
    OBJECTIVES,
    ON_NAN,
    PRECISIONS,
    TARGET_STEPS,
    TrainConfig,
    best_epoch,
    labels_for,
)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if getattr(args, "nproc", 1) > 1 and distributed.world_size() == 1:
        return distributed.launch(args.nproc, _without_nproc(argv))
    try:
        args.func(args)
    except VaekitError as e:
        print(f"vaekit: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vaekit: interrupted", file=sys.stderr)
        return 130
    return 0


def _without_nproc(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            kept.append(arg)
    return kept


# --- argument types -------------------------------------------------------------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seed(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must lie in 0..{MAX_SEED} (a 63-bit integer), got {value}")
    return value


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        h, w = (int(parts[0]), int(parts[0])) if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"expected HxW (e.g. 28x28) or one number, got {text!r}") from None
    if h < 1 or w < 1 or len(parts) > 2:
        raise argparse.ArgumentTypeError(f"expected a positive HxW, got {text!r}")
    return h, w


def _duration(text: str) -> float:
    """Seconds, from e.g. 90, 90s, 30m or 2h."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, scale = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1)
    try:
        value = float(number) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration such as 90, 90s, 30m or 2h, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive duration, got {text!r}")
    return value


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


# --- parser ------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Refuses a bad option in one line, as every other error (argparse's own prints the whole usage first)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    parser = _Parser(prog="vaekit", description="Variational Autoencoders on PyTorch.")
    parser.add_argument("--version", action="version", version=f"vaekit {vaekit.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, example: str, func) -> argparse.ArgumentParser:
        p = commands.add_parser(
            name, help=help, description=help, epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )  # fmt: skip
        p.set_defaults(func=func)
        return p

    p = command("train", "Train a VAE and write a run folder.", "vaekit train --data fashion-mnist --epochs 20", _train)
    _add_data_options(p, default_data="digits")
    p.add_argument("--out", help="run folder to create (default: a new folder under runs/)")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last checkpoint")
    p.add_argument(
        "--heldout",
        type=float,
        default=0.1,
        help="fraction of the training data held out for early stopping (default 0.1)",
    )
    p.add_argument("--likelihood", choices=LIKELIHOODS, help="default: fits the data (discretized_logistic for levels)")
    p.add_argument("--binarize", choices=("static", "dynamic"), help="binarise images and use a Bernoulli likelihood")
    p.add_argument(
        "--arch",
        choices=ARCHS,
        default="mlp",
        help="encoder/decoder family (default: mlp); with --layers, conv adds transposed convolutions to the output, "
        "spatial makes every latent layer maps (--layers: their channels, --hidden: the paths' channels), and "
        "hybrid is conv with a layer of maps at the bottom (--layers MAPS,SIZE,...: its channels, then dense sizes)",
    )
    p.add_argument("--latent", type=_positive_int, help="latent size (default: by data size)")
    p.add_argument("--hidden", type=_int_list, help="hidden layer sizes, e.g. 512,256")
    p.add_argument("--prior", choices=PRIORS, default="normal", help="normal, or vamp: the VampPrior (default normal)")
    p.add_argument("--pseudo-inputs", type=_positive_int, default=500, help="the VampPrior's K (default 500)")
    p.add_argument("--conditional", action="store_true", help="a conditional VAE: labels into encoder and decoder")
    p.add_argument(
        "--layers", type=_int_list, default=(), help="a hierarchical VAE: latent sizes bottom to top, e.g. 32,16"
    )
    p.add_argument(
        "--layer-norm", action="store_true", help="a hierarchical VAE: each residual cell starts with a LayerNorm"
    )
    p.add_argument(
        "--patches",
        action="store_true",
        help="--arch conv or hybrid: the convolutional path meets the pixels by 4x4 patches (pixel shuffles) instead "
        "of strided convolutions: a faster training step",
    )
    p.add_argument(
        "--noise-maps",
        action="store_true",
        help="--arch hybrid: the map layer has no posterior; its latents are noise drawn from their prior, which the "
        "output path learns to use, and there is no bottom-up map path: a faster training step",
    )
    p.add_argument(
        "--context",
        type=int,
        default=0,
        help="images: each pixel's likelihood also sees the earlier pixels within this radius, 1..3 (default 0: none)",
    )
    p.add_argument(
        "--context-hidden",
        type=int,
        default=0,
        help="hidden units through which the pixel context sees them, with z's view of the pixel, 1..64 "
        "(default 0: a linear context)",
    )
    p.add_argument(
        "--mixture",
        type=int,
        default=1,
        help="integer levels: a mixture of this many discretised logistics per value, 1..5 (default 1)",
    )
    p.add_argument("--objective", choices=OBJECTIVES, default="elbo", help="elbo, or iwae (with --k samples)")
    p.add_argument("--k", type=_positive_int, default=defaults.k, help=f"IWAE samples (default {defaults.k})")
    p.add_argument(
        "--iwae-tail", type=_finite_float, default=0.0, metavar="FRACTION",
        help="train on the ELBO, then on the IWAE bound (--k samples) over this last fraction of the run "
        "(of its time, under --time-budget); the best epoch of the tail is kept, by held-out IWAE bound",
    )  # fmt: skip
    p.add_argument(
        "--learned-prior", type=int, default=0, metavar="K",
        help="a hierarchical model: the top layer's prior is an equal-weight mixture of K diagonal Gaussians, "
        "learned with the model, in place of N(0, I) (1..256)",
    )  # fmt: skip
    p.add_argument(
        "--fit-prior", type=int, default=0, metavar="K",
        help="a hierarchical model: once trained, fit a K-component Gaussian mixture to the top layer's posteriors "
        "and make it that layer's prior (1..256; it raises log p(x); a time budget keeps 2%% of itself for the fit)",
    )  # fmt: skip
    p.add_argument(
        "--epochs",
        type=_positive_int,
        help=f"default: about {TARGET_STEPS} optimiser steps, at least {MIN_EPOCHS} epochs",
    )
    p.add_argument(
        "--time-budget",
        type=_duration,
        help="train for this long, wall clock (e.g. 30m), the learning rate decaying by its end",
    )
    p.add_argument(
        "--batch-size", type=_positive_int, default=defaults.batch_size,
        help=f"global batch size (default {defaults.batch_size})",
    )  # fmt: skip
    p.add_argument("--lr", type=_finite_float, default=defaults.lr, help=f"Adam learning rate (default {defaults.lr})")
    p.add_argument(
        "--lr-decay", type=_finite_float, default=defaults.lr_decay,
        help=f"fraction of the last steps over which the rate falls to 0 (default {defaults.lr_decay})",
    )  # fmt: skip
    p.add_argument(
        "--lr-warmup",
        type=int,
        help=f"steps over which the rate rises from 0 (default {DEEP_LR_WARMUP} for several latent layers, else 0)",
    )
    p.add_argument("--beta", type=_finite_float, default=1.0, help="KL weight (beta-VAE)")
    p.add_argument("--warmup", type=_finite_float, default=0.0, help="KL warm-up epochs (linear from 0 to beta)")
    p.add_argument("--free-bits", type=_finite_float, default=0.0, help="nats per latent dimension left unpenalised")
    p.add_argument("--clip-grad", type=_finite_float, help="clip the gradient norm to this value")
    p.add_argument(
        "--weight-decay",
        type=_finite_float,
        default=0.0,
        help="decoupled weight decay (AdamW): each step shrinks every weight matrix and kernel (not the biases, "
        "LayerNorm gains or VampPrior pseudo-inputs) by lr x this (default 0: Adam)",
    )
    p.add_argument(
        "--skip-threshold",
        type=_finite_float,
        help="skip updates whose gradient norm exceeds this; 100 skipped in a row stop training",
    )
    p.add_argument(
        "--skip-factor",
        type=_finite_float,
        metavar="F",
        help="skip updates whose gradient norm exceeds F times the median of the last 100 steps' (from step 50 on; "
        "no threshold to tune per model); with --skip-threshold, the lower limit applies",
    )
    p.add_argument(
        "--on-nan", choices=ON_NAN, default="stop",
        help="a NaN/inf loss or gradient: stop, naming the epoch and step (default), or skip that update",
    )  # fmt: skip
    p.add_argument(
        "--patience", type=int, default=20, help="stop after this many epochs without held-out gain (0: never)"
    )
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda where there is one")
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",
        help="bf16 autocast of the matmuls; auto: where this machine runs bf16 faster (weights stay fp32)",
    )
    p.add_argument("--nproc", type=_positive_int, default=1, help="processes on this machine, launched with torchrun")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = command(
        "sample",
        "Generate new items from the prior.",
        "vaekit sample runs/digits -n 64 --temperature 0.7 -o samples.png",
        _sample,
    )
    p.add_argument("run")
    p.add_argument("-n", type=_positive_int, default=64, help="how many items")
    p.add_argument(
        "--temperature", type=_finite_float, default=1.0, help="scales the prior's stddev: lower, less diverse"
    )
    p.add_argument("--draw", action="store_true", help="draw x from p(x|z) instead of showing its mean")
    p.add_argument("--label", help="a conditional model's class (name or number; default: every class in turn)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("-o", "--output", required=True, help=".png (a grid) or .npy (values in data units)")

    p = command(
        "reconstruct",
        "Encode and decode items: originals above, reconstructions below.",
        "vaekit reconstruct runs/digits --data digits -o recon.png",
        _reconstruct,
    )
    _add_run_data_options(p)
    p.add_argument("-n", type=_positive_int, default=16, help="how many items (from the start of the data)")
    p.add_argument("-o", "--output", required=True, help=".png or .npy")

    p = command(
        "interpolate",
        "Decode a path between the latents of two items.",
        "vaekit interpolate runs/digits --data digits --from 0 --to 1 --steps 10 --slerp -o path.png",
        _interpolate,
    )
    _add_run_data_options(p)
    p.add_argument("--from", dest="start", type=int, required=True, help="index of the first item")
    p.add_argument("--to", dest="end", type=int, required=True, help="index of the second item")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--slerp", action="store_true", help="spherical instead of linear interpolation")
    p.add_argument("-o", "--output", required=True, help=".png or .npy")

    p = command(
        "traverse",
        "Vary one latent dimension at a time around an item's latent.",
        "vaekit traverse runs/digits --data digits --index 0 --dims 0,1,2 --range 3 -o traverse.png",
        _traverse,
    )
    _add_run_data_options(p)
    p.add_argument("--index", type=int, default=0, help="the item whose latent is the centre")
    p.add_argument("--dims", type=_int_list, help="latent dimensions (default: all)")
    p.add_argument(
        "--range", dest="extent", type=_finite_float, default=3.0, help="from -RANGE to +RANGE prior stddevs"
    )
    p.add_argument("--steps", type=int, default=9)
    p.add_argument("-o", "--output", required=True, help=".png or .npy")

    p = command(
        "encode",
        "Write posterior means (features) of items.",
        "vaekit encode runs/digits --data digits -o latents.csv --logvar --labels",
        _encode,
    )
    _add_run_data_options(p)
    p.add_argument("--logvar", action="store_true", help="also write the posterior log-variances")
    p.add_argument("--labels", action="store_true", help="also write the labels, where the data has them")
    p.add_argument("-o", "--output", required=True, help=".npy, .npz or .csv")

    p = command(
        "evaluate",
        "Report -ELBO, bits/dim, active units and a linear probe.",
        "vaekit evaluate runs/digits --data digits -o metrics.json",
        _evaluate,
    )
    _add_run_data_options(p)
    p.add_argument("--no-probe", action="store_true", help="skip the logistic-regression probe")
    p.add_argument("--nll", action="store_true", help="add the importance-sampled negative log-likelihood")
    p.add_argument("--k", type=_positive_int, default=1000, help="importance samples per item for --nll (default 1000)")
    p.add_argument(
        "--nll-checkpoint",
        metavar="FILE",
        help="with --nll: save its estimates here every minute (.safetensors), and go on from this file if a "
        "run was cut short; a finished file gives the figures at once",
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="with --nll: processes estimating batches side by side, the cores shared among them (default 1); "
        "for long estimates, such as a deep model's with k in the thousands. The figures do not change",
    )
    p.add_argument("-o", "--output", help="write the metrics as JSON")

    p = command(
        "compress",
        "Compress data losslessly with a trained model (bits-back coding).",
        "vaekit compress runs/digits levels.npy -o levels.vkz",
        _compress,
    )
    p.add_argument("run", help="a run folder written by vaekit train (an unconditional model of discrete data)")
    p.add_argument(
        "input",
        help="an .npy of integers (levels; 0/1 for a Bernoulli model), kept exactly; or an IDX file or image "
        "folder, read through the run's data spec",
    )
    p.add_argument("-o", "--output", required=True, help="the compressed file (.vkz)")
    _add_codec_options(p)

    p = command(
        "decompress",
        "Restore data compressed by vaekit compress, with the same model.",
        "vaekit decompress runs/digits levels.vkz -o levels.npy  (or -o images-idx3-ubyte)",
        _decompress,
    )
    p.add_argument("run", help="the run folder the data were compressed with")
    p.add_argument("input", help="a .vkz file written by vaekit compress")
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="an .npy with the original's shape and dtype, or an IDX file (a name with idx and ubyte, or .idx)",
    )
    _add_codec_options(p)
    return parser


def _add_codec_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workers", type=_positive_int, help="processes coding shards of large data side by side (default: every core)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_data_options(p: argparse.ArgumentParser, default_data: str | None) -> None:
    p.add_argument(
        "--data",
        default=default_data,
        help="digits, mnist, fashion-mnist, a folder or an .npy/.npz/.csv/IDX file "
        f"(default: {default_data or 'the run’s own data'})",
    )
    p.add_argument("--data-dir", help="where to look for mnist / fashion-mnist (also $VAEKIT_DATA)")
    p.add_argument("--download", action="store_true", help="download mnist / fashion-mnist (needs the internet)")
    p.add_argument("--size", type=_size, help="resize images to HxW")
    p.add_argument("--label", help="the label column of a .csv (or label array of an .npz)")


def _add_run_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", help="a run folder written by vaekit train")
    _add_data_options(p, default_data=None)
    p.add_argument(
        "--split",
        choices=vdata.SPLITS,
        default="auto",
        help="default: the test split where the source has one, else the run's held-out part (its own data) or all",
    )


# --- commands ----------------------------------------------------------------------


def _train(args: argparse.Namespace) -> None:
    if args.resume:
        run = vaekit.resume(args.resume, quiet=args.quiet, device=args.device)
    else:
        run = vaekit.train(
            args.data, args.out, likelihood=args.likelihood, arch=args.arch, latent_dim=args.latent,
            hidden=args.hidden, prior=args.prior, pseudo_inputs=args.pseudo_inputs, conditional=args.conditional,
            layers=args.layers, context=args.context, context_hidden=args.context_hidden, mixture=args.mixture,
            layer_norm=args.layer_norm, learned_prior=args.learned_prior, patches=args.patches,
            noise_maps=args.noise_maps, objective=args.objective, k=args.k, iwae_tail=args.iwae_tail,
            skip_threshold=args.skip_threshold, skip_factor=args.skip_factor, on_nan=args.on_nan,
            time_budget=args.time_budget, fit_prior=args.fit_prior,
            data_dir=args.data_dir, download=args.download, size=args.size, label=args.label,
            heldout_fraction=args.heldout, quiet=args.quiet, epochs=args.epochs, batch_size=args.batch_size,
            lr=args.lr, lr_decay=args.lr_decay, lr_warmup=args.lr_warmup, beta=args.beta, warmup_epochs=args.warmup,
            free_bits=args.free_bits,
            clip_grad=args.clip_grad, weight_decay=args.weight_decay,
            patience=args.patience or None, binarize=args.binarize, seed=args.seed,
            precision=args.precision,
            device=args.device,
        )  # fmt: skip
    if not distributed.is_main():
        return
    best = best_epoch(run.metrics)
    bpd = "" if best["heldout_bits_per_dim"] is None else f" ({best['heldout_bits_per_dim']:.4f} bits/dim)"
    iwae = "" if best.get("heldout_neg_iwae") is None else f", -IWAE bound {best['heldout_neg_iwae']:.2f}"
    print(
        f"{run.run_dir}: best held-out -ELBO {best['heldout_neg_elbo']:.2f} nats{bpd}{iwae} at epoch "
        f"{int(best['epoch'])} of {int(run.metrics[-1]['epoch'])}, {run.metrics[-1]['seconds']:.1f} s of training"
    )
    fitted = model_io.read_config(run.run_dir).get("top_prior")
    if fitted:
        print(
            f"top-layer prior: a mixture of {fitted['components']} Gaussians, fitted in {fitted['seconds']:.1f} s; "
            f"on held-out posteriors it is {fitted['heldout_gain_nats']:.3f} nats denser than N(0, I)"
        )


def _load_run(args) -> tuple[LatentVariableModel, vdata.Dataset | None]:
    """The model, and the data named by --data (default: the run's own source) read through its spec."""
    model = vaekit.load(args.run)
    if not hasattr(args, "split"):
        return model, None
    config = model_io.read_config(args.run)
    recorded = config.get("data", {})
    source = args.data or recorded.get("source")
    if source is None:
        raise OptionError(f"{args.run}: the run records no data source; give --data")
    same_source = source == recorded.get("source")
    data_dir = args.data_dir or (recorded.get("data_dir") if same_source else None)
    label = args.label or (recorded.get("label") if same_source else None)
    # the run's own data: its fit/held-out split can be rebuilt from the recorded fraction and seed
    heldout = (recorded["heldout_fraction"], config["training"]["seed"]) if same_source else None
    dataset = vdata.load(
        source, args.split, spec=model.spec, heldout=heldout, data_dir=data_dir, download=args.download,
        size=args.size, label=label,
    )  # fmt: skip
    return model, dataset


def _check_suffix(path: str, allowed: tuple[str, ...]) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in allowed:
        raise OptionError(f"{path}: output must end in {' or '.join(allowed)}")
    return suffix


def _write_items(path: str, model: LatentVariableModel, items: torch.Tensor, ncols: int) -> None:
    """A PNG grid of items (model space), or an .npy of them in the source's units (suffix already checked)."""
    if Path(path).suffix.lower() == ".png":
        if not model.spec.is_image:
            raise OptionError(f"{path}: this model's data are not images; write .npy instead")
        report.save_grid(path, model.spec.to_unit(items), ncols)
    else:
        with atomic_path(path) as tmp:
            np.save(tmp, model.spec.to_data_units(items).numpy())
    print(f"wrote {path}")


def _sample(args) -> None:
    _check_suffix(args.output, (".png", ".npy"))
    model, _ = _load_run(args)
    gen = torch.Generator().manual_seed(args.seed)
    y = None if args.label is None else _class_index(model, args.label)
    items = model.sample(args.n, args.temperature, mean=not args.draw, generator=gen, y=y)
    _write_items(args.output, model, items, ncols=math.ceil(math.sqrt(args.n)))


def _class_index(model: LatentVariableModel, label: str) -> int:
    """A class given by name (as the data named it) or by number."""
    if not model.conditional:
        raise OptionError("--label: this model is not conditional (train with --conditional)")
    names = model.spec.classes or ()
    if label in names:
        return names.index(label)
    if label.lstrip("-").isdigit() and 0 <= int(label) < model.config.classes:
        return int(label)
    known = ", ".join(names) if names else f"0..{model.config.classes - 1}"
    raise OptionError(f"--label {label!r}: not a class of this model ({known})")


def _reconstruct(args) -> None:
    _check_suffix(args.output, (".png", ".npy"))
    model, dataset = _load_run(args)
    x = model.prepare(dataset.x[: args.n], torch.Generator().manual_seed(0))
    y = labels_for(model, dataset)
    recon = model.reconstruct(x, None if y is None else y[: args.n])
    if Path(args.output).suffix.lower() == ".npy":
        _write_items(args.output, model, recon, len(x))
    else:
        _write_items(args.output, model, torch.cat([x, recon]), len(x))


def _item(model: LatentVariableModel, dataset: vdata.Dataset, index: int) -> torch.Tensor:
    return model.prepare(dataset.item(index).unsqueeze(0), torch.Generator().manual_seed(0))[0]


def _item_label(model: LatentVariableModel, dataset: vdata.Dataset, index: int) -> int | None:
    """A conditional model's label for one item (None for an unconditional model)."""
    y = labels_for(model, dataset)
    return None if y is None else int(y[index])


def _interpolate(args) -> None:
    _check_suffix(args.output, (".png", ".npy"))
    model, dataset = _load_run(args)
    x0, x1 = _item(model, dataset, args.start), _item(model, dataset, args.end)
    y = _item_label(model, dataset, args.start)  # a conditional model draws the path under the first item's class
    path = latent.interpolate(model, x0, x1, args.steps, spherical=args.slerp, y=y)
    _write_items(args.output, model, path, ncols=args.steps)


def _traverse(args) -> None:
    _check_suffix(args.output, (".png", ".npy"))
    model, dataset = _load_run(args)
    dims = list(args.dims) if args.dims else list(range(model.latent_dim))
    item, y = _item(model, dataset, args.index), _item_label(model, dataset, args.index)
    grid = latent.traverse(model, item, dims, args.extent, args.steps, y=y)
    _write_items(args.output, model, grid.flatten(0, 1), ncols=args.steps)


def _encode(args) -> None:
    suffix = _check_suffix(args.output, (".npy", ".npz", ".csv"))
    model, dataset = _load_run(args)
    x = model.prepare(dataset.x, torch.Generator().manual_seed(0))
    mean, logvar = encode_means(model, x, labels_for(model, dataset))
    columns = {"mean": mean.numpy()}
    if args.logvar:
        columns["logvar"] = logvar.numpy()
    if args.labels:
        if dataset.labels is None:
            raise OptionError(f"{dataset.source}: the data have no labels to write")
        columns["labels"] = dataset.labels.numpy()
    with atomic_path(args.output) as tmp:
        if suffix == ".npz":
            np.savez(tmp, **columns)
        elif suffix == ".npy":
            np.save(tmp, np.column_stack([v.astype(np.float32) for v in columns.values()]))
        else:
            header = [f"z{i}" for i in range(model.latent_dim)]
            header += [f"logvar{i}" for i in range(model.latent_dim)] if args.logvar else []
            header += ["label"] if args.labels else []
            fmt = ["%.6g"] * (len(header) - args.labels) + ["%d"] * args.labels
            table = np.column_stack(list(columns.values()))
            np.savetxt(tmp, table, delimiter=",", header=",".join(header), comments="", fmt=fmt)
    print(f"wrote {args.output}: {len(mean)} items x {model.latent_dim} latent dimensions")


def _evaluate(args) -> None:
    if args.output:
        _check_suffix(args.output, (".json",))
    if args.workers != 1 and not args.nll:
        raise OptionError("--workers needs --nll")
    if args.nll_checkpoint:
        if not args.nll:
            raise OptionError("--nll-checkpoint needs --nll")
        _check_suffix(args.nll_checkpoint, (".safetensors",))
    model, dataset = _load_run(args)
    nll = dict(nll_k=args.k, nll_checkpoint=args.nll_checkpoint, nll_workers=args.workers) if args.nll else {}
    result = {
        "run": str(args.run),
        "data": dataset.source,
        "split": args.split,
        **evaluate(model, dataset, probe=not args.no_probe, **nll),
    }
    width = max(len(k) for k in result)
    for key, value in result.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    if args.output:
        write_text(args.output, json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.output}")


def _compress(args) -> None:
    from vaekit.codec import container

    _check_suffix(args.output, (".vkz",))
    model = vaekit.load(args.run)
    items = _items_to_compress(Path(args.input), model)
    try:
        with _coding_bar(len(items), "compress", args) as bar:
            blob = container.compress(model, items, workers=args.workers, progress=bar.update)
    except VaekitError as error:
        raise type(error)(f"{args.input}: {error}") from None
    with atomic_path(args.output) as tmp:
        Path(tmp).write_bytes(blob)
    print(f"wrote {args.output}: {len(blob):,} bytes, {8 * len(blob) / max(1, items.size):.4f} bits per value")


def _items_to_compress(path: Path, model: LatentVariableModel) -> np.ndarray:
    """The values the model codes, in the input's own shape and dtype where the run reads them unchanged (an
    .npy of integers; an IDX file of 8-bit levels), so that decompressing can give back the same file."""
    if path.suffix.lower() == ".npy":
        return np.asarray(read_array(path)[0])  # exactly as stored: shape and dtype
    items = vdata.load(str(path), "all", spec=model.spec).x.numpy()
    if idx.is_idx_file(path):
        raw = idx.read_idx(path)
        if raw.size == items.size and np.array_equal(raw.reshape(items.shape), items):
            return raw
    return items


def _coding_bar(items: int, desc: str, args) -> tqdm:
    return tqdm(total=items, unit="item", desc=desc, leave=False, disable=True if args.quiet else None)


def _decompress(args) -> None:
    from vaekit.codec import container

    to_idx = idx.is_idx_file(args.output)
    if not to_idx and Path(args.output).suffix.lower() != ".npy":
        raise OptionError(f"{args.output}: output must end in .npy or be an IDX file (images-idx3-ubyte, x.idx)")
    model = vaekit.load(args.run)
    try:
        blob = Path(args.input).read_bytes()
    except OSError as error:
        raise OptionError(f"{args.input}: cannot read ({error.strerror.lower()})") from None
    try:
        header = container.read_header(blob)
        with _coding_bar(header["shape"][0], "decompress", args) as bar:
            items = container.decompress(model, blob, workers=args.workers, progress=bar.update)
    except VaekitError as error:
        raise type(error)(f"{args.input}: {error}") from None
    if to_idx:
        if items.dtype.newbyteorder("=") not in idx.IDX_DTYPES:
            raise OptionError(f"{args.output}: IDX files hold {', '.join(map(str, idx.IDX_DTYPES))}, not "
                              f"{items.dtype}; write .npy instead")  # fmt: skip
        idx.write_idx(args.output, items)
    else:
        with atomic_path(args.output) as tmp:
            np.save(tmp, items)
    print(f"wrote {args.output}: {items.shape} {items.dtype}")


if __name__ == "__main__":
    sys.exit(main())
