"""Test log-likelihood of vaekit's models and pythae's under the same wall-clock budget, by one estimator.

Every model trains on the same dynamically binarised training images (vaekit's fit part: the seeded
90 % that `vaekit train` fits, or 1 - `--heldout`; pythae gets the same images) for the same budget on
this machine, then its test NLL is estimated by vaekit's importance sampler (k samples per image, all
test images, one fixed binarisation, seed 0). Models run one after another, never side by side, and
each result is saved as soon as it exists, so a long table can be built over several sittings
(`--models` picks).
vaekit's learning curves (metrics.csv) are kept beside the results, in a `-curves` folder.

    pip install -c constraints.txt -e ".[bench]"
    python benchmarks/likelihood_table.py --data fashion-mnist --budget 30m --k 5000
    python benchmarks/likelihood_table.py --data digits --budget 2m --k 5000

Published MNIST figures, for context (test NLL, nats): IWAE paper VAE 86.76, IWAE 84.78, two-layer
IWAE 82.90; NVAE about 78.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch
from common import cpu_name, matmul_gflops, table_test_images, write_json
from peers import PythaeAdapter, dynamic_binarisation_dataset, pythae_model, train_pythae

import vaekit
from vaekit import data
from vaekit import io as model_io
from vaekit.evaluate import negative_log_likelihood
from vaekit.models import ModelConfig
from vaekit.trainer import EVAL_SEED, evaluate_elbo

FLAT = dict(hidden=(512, 256), latent_dim=32)  # every one-layer model, vaekit's and pythae's
# Adam's first steps at the full 3e-3 wrecked its zero-initialised posterior layers (every later update
# was then skipped); a gentler rate with a warm-up trains it
HIERARCHICAL = dict(hidden=(512,), layers=(32, 16, 8), warmup_epochs=5, skip_threshold=1000.0, lr=1e-3, lr_warmup=500)
DEEP = dict(HIERARCHICAL, layers=(32, 32, 16, 16, 8, 8), layer_norm=True)  # six latent layers, LayerNorm cells
VAEKIT = {
    "vaekit-vae": dict(FLAT, lr=1e-3),  # pythae's rate, as for the IWAE (the VAE's row at 3e-3: 2026-11-27)
    # at the default 3e-3 the IWAE bound stalled for half its budget with 12 nats of KL (2026-11-30)
    "vaekit-iwae": dict(FLAT, objective="iwae", k=5, lr=1e-3),
    "vaekit-vamp": dict(FLAT, prior="vamp", pseudo_inputs=500, lr=1e-3),  # as the VAE (its row at 3e-3: 2026-11-28)
    # each pixel's Bernoulli also sees the 24 pixels before it within radius 3 (a masked convolution)
    "vaekit-context": dict(FLAT, context=3),
    "vaekit-hierarchical": dict(HIERARCHICAL),
    # the same recipe with a LayerNorm in each residual cell, which let a deeper model pay (12-minute pilots)
    "vaekit-hierarchical-ln": dict(DEEP),
    # and transposed convolutions beside the dense output layer (--arch conv)
    "vaekit-hierarchical-conv": dict(DEEP, arch="conv"),
    # the conv recipe with decoupled weight decay (AdamW): it ends 5 nats of -ELBO better on its training images
    # than on held-out ones
    "vaekit-hierarchical-conv-wd": dict(DEEP, arch="conv", weight_decay=0.05),
    # and a latent layer of 4 maps (7x7) in that convolutional path, below the six dense layers (--arch hybrid);
    # its first run, at the recipe's threshold of 1000, stopped early in epoch 2 after 100 skipped updates in a row
    # (2026-11-30); at 3000 none was skipped
    "vaekit-hybrid": dict(DEEP, layers=(4, *DEEP["layers"]), arch="hybrid", skip_threshold=3000.0),
    # the same with paths 384 wide instead of 512: 0.85 times the step cost, where the hybrid's is 1.18 times the
    # recipe's (2 threads, batch 256, 2026-12-01)
    "vaekit-hybrid-384": dict(DEEP, hidden=(384,), layers=(4, *DEEP["layers"]), arch="hybrid", skip_threshold=3000.0),
    # and 256 wide: on a slow sitting (2026-12-01, 99 GFLOP/s) the 384-wide model made only 42 epochs in 30 minutes
    "vaekit-hybrid-256": dict(DEEP, hidden=(256,), layers=(4, *DEEP["layers"]), arch="hybrid", skip_threshold=3000.0),
}
HYBRIDS = ("vaekit-hybrid", "vaekit-hybrid-256")  # the rows below are variants of each
# each hybrid with its convolutional path meeting the pixels by 4x4 patches (--patches), not strided convolutions:
# 0.8 times the step time of the 256-wide one (benchmarks/step_speed.py: 2 threads, batch 256, bf16; 2026-12-03)
for name in HYBRIDS:
    VAEKIT[f"{name}-patches"] = dict(VAEKIT[name], patches=True)
# each hybrid with noise maps (--noise-maps): no posterior for its map layer, whose posterior had collapsed to its prior
# (0.00 nats of KL on test images after 30 minutes, 2026-12-03), and so no bottom-up maps: a cheaper step
for name in HYBRIDS:
    VAEKIT[f"{name}-noise"] = dict(VAEKIT[name], noise_maps=True)
# each hybrid with a Gaussian mixture fitted to its top layer's posteriors as that layer's prior (--fit-prior), in
# the budget's last 2 %: on the 256-wide model after 30 minutes on two threads of a slow machine (45 epochs), 64
# components gained 0.08 nats of test NLL on the first 1,000 images (16: 0.04, 256: 0.05; 2026-12-02)
FIT_PRIOR = 64
for name in HYBRIDS:
    VAEKIT[f"{name}-prior"] = dict(VAEKIT[name], fit_prior=FIT_PRIOR)
    # ... or with a 64-component diagonal mixture learned with the model as that prior (--learned-prior): on 15-minute
    # one-thread pilots of the 256-wide model, 0.39 nats of NLL ahead of N(0, I) on the first 1,000 test images, but
    # level with it after the table's 30 minutes (2026-12-03)
    VAEKIT[f"{name}-learned"] = dict(VAEKIT[name], learned_prior=FIT_PRIOR)
# each hybrid with a linear pixel context (--context 3): each pixel's logit shifted by the 24 pixels before it within
# radius 3. On 12-epoch one-thread pilots of the 256-wide model (the same schedule for both, 2026-12-08), 0.24 nats of
# test NLL ahead on the first 1,000 images; its steps cost 1.06 times as much. Over the table's 30 minutes, beside
# pythae's IWAE, no more than the plain model: 4.69 +- 0.07 nats ahead on the first 5,888 test images; and beside the
# plain model in 30-minute one-thread runs, 0.17 +- 0.05 nats behind it on the first 1,000 (both 2026-12-08)
for name in HYBRIDS:
    VAEKIT[f"{name}-context"] = dict(VAEKIT[name], context=3)
PYTHAE = {
    "pythae-vae": ("vae", {}),
    "pythae-iwae": ("iwae", {"number_samples": 5}),
    "pythae-vamp": ("vamp", {"number_components": 500}),
}
DEFAULT_HELDOUT = 0.1  # the rows measured up to 2026-11-30 (rows without `heldout_fraction`)
PYTHAE_TRAINING = dict(learning_rate=1e-3, per_device_train_batch_size=100)


def parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)


def train_vaekit(name: str, source: str, budget: float, heldout: float, out: Path):
    folder = out / name
    if (folder / model_io.CONFIG).exists():  # a kept run folder, cut short earlier: go on from its checkpoint
        kept = model_io.read_config(folder)
        kept_budget, kept_heldout = kept["training"]["time_budget"], kept["data"]["heldout_fraction"]
        if (kept_budget, kept_heldout) != (budget, heldout):  # resuming would record the old ones as these
            raise SystemExit(
                f"{folder} was trained under a budget of {kept_budget} s with {kept_heldout} held out, not "
                f"{budget:g} s with {heldout}: choose other --runs"
            )
        run = vaekit.resume(folder)
    else:
        run = vaekit.train(
            source, folder, binarize="dynamic", time_budget=budget, patience=None, quiet=False,
            heldout_fraction=heldout, **VAEKIT[name],
        )  # fmt: skip
    # a fitted prior's seconds count: the budget kept them back
    fit_seconds = model_io.read_config(folder).get("top_prior", {}).get("seconds", 0.0)
    return run.model, run.metrics[-1]["wall_seconds"] + fit_seconds, int(run.metrics[-1]["epoch"])


def train_peer(name: str, source: str, budget: float, heldout: float, out: Path):
    kind, options = PYTHAE[name]
    fit, _ = data.load_for_training(source, heldout_fraction=heldout)
    torch.manual_seed(0)
    peer = pythae_model(kind, tuple(fit.spec.shape), FLAT["hidden"], FLAT["latent_dim"], **options)
    dataset = dynamic_binarisation_dataset(fit.x, fit.spec.levels - 1)
    seconds, epochs = train_pythae(peer, dataset, budget, str(out / name), **PYTHAE_TRAINING)
    config = ModelConfig.for_data(fit.spec, "bernoulli", "mlp", FLAT["latent_dim"], FLAT["hidden"])
    return PythaeAdapter(peer, config), seconds, epochs


def first_start(folder: Path, gflops: float) -> dict:
    """The date and matmul rate of the sitting where a kept run folder's measurement began: a row resumed in a
    later sitting (its training or only its evaluation) belongs to the sitting it trained in, not to this one."""
    record = folder / "table-start.json"
    if record.exists():
        return json.loads(record.read_text())
    start = {"date": time.strftime("%Y-%m-%d"), "matmul_gflops": gflops}
    folder.mkdir(parents=True, exist_ok=True)
    write_json(str(record), start)
    return start


def measure(name: str, source: str, budget: float, heldout: float, k: int, out: Path) -> dict:
    # the machine's speed varies between sittings; this same-run reference makes rows comparable
    gflops = matmul_gflops()
    if name in VAEKIT:  # pythae's models are trained afresh each time
        began = first_start(out / name, gflops)
    else:
        began = {"date": time.strftime("%Y-%m-%d"), "matmul_gflops": gflops}
    start = time.perf_counter()
    # phase lines: in a log file (a background run) the progress bars are off
    where = f"; its curve goes to {out / name / 'metrics.csv'}" if name in VAEKIT else ""
    print(f"{time.strftime('%H:%M')} {name}: training, {budget:g} s budget{where}", flush=True)
    model, seconds, epochs = (train_vaekit if name in VAEKIT else train_peer)(name, source, budget, heldout, out)
    model.eval()
    x = table_test_images(model, source)
    print(f"{time.strftime('%H:%M')} {name}: {epochs} epochs in {seconds:.0f} s; test NLL, k={k}", flush=True)
    with torch.no_grad():
        elbo = evaluate_elbo(model, x, generator=torch.Generator().manual_seed(EVAL_SEED))
        # saved as it goes, so that in a kept run folder (--runs) an evaluation cut short goes on where it
        # stopped, and so that the per-image estimates of two rows can be compared; pythae's models are
        # trained afresh each time, so their old file goes (it would be refused)
        checkpoint = out / name / f"test-nll-k{k}.safetensors"
        if name not in VAEKIT:
            checkpoint.unlink(missing_ok=True)
        # vaekit's models: a process per core; pythae's networks are classes local to a function, which
        # cannot be sent to another process, so they are estimated here
        workers = None if name in VAEKIT else 1
        nll = negative_log_likelihood(model, x, k, checkpoint=checkpoint, workers=workers)
    return {
        "train_seconds": seconds,
        "epochs": epochs,
        "test_neg_elbo": elbo["neg_elbo"],
        **nll,
        "test_items": len(x),
        "binarization": f"dynamic in training; test: one draw, seed {EVAL_SEED}",
        "wall_seconds": time.perf_counter() - start,  # this sitting's part of it
        **began,
        "heldout_fraction": heldout,
        # what vaekit's `auto` chose (bf16 autocast where a probe finds it faster); pythae's trainer offers
        # mixed precision only on CUDA, so it trains in fp32 here
        "precision": model_io.read_config(out / name)["resolved"]["precision"] if name in VAEKIT else "fp32",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="fashion-mnist", help="fashion-mnist, mnist or digits")
    parser.add_argument("--budget", default="30m", help="training wall-clock budget per model, e.g. 30m, 2h")
    parser.add_argument("--k", type=int, default=5000, help="importance samples per test image")
    parser.add_argument(
        "--heldout",
        type=float,
        default=DEFAULT_HELDOUT,
        help=f"fraction of the training images kept out of training, for the learning curves (default "
        f"{DEFAULT_HELDOUT}); another fraction writes its own results file",
    )
    parser.add_argument("--models", default=",".join([*VAEKIT, *PYTHAE]), help="comma-separated subset")
    parser.add_argument(
        "--results", help="JSON file to add to (default: benchmarks/results/likelihood-DATA-BUDGET.json)"
    )
    parser.add_argument(
        "--runs",
        help="keep vaekit's run folders here (default: a temporary folder); a run found there that was cut "
        "short is resumed from its checkpoint, and so is its test evaluation, so that a long budget can be "
        "trained and evaluated over several sittings",
    )
    parser.add_argument("--force", action="store_true", help="measure models the results file already holds")
    args = parser.parse_args()

    budget = parse_duration(args.budget)
    protocol = "" if args.heldout == DEFAULT_HELDOUT else f"-heldout{args.heldout:g}"  # its own table
    default = Path(__file__).parent / "results" / f"likelihood-{args.data}-{args.budget}{protocol}.json"
    path = Path(args.results or default)
    results = json.loads(path.read_text()) if path.exists() else {}
    results.setdefault("machine", {})[cpu_name()] = f"{torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"{args.data}, budget {args.budget} per model, k={args.k}; CPU: {cpu_name()}")
    for name in args.models.split(","):
        if name not in VAEKIT and name not in PYTHAE:
            raise SystemExit(f"unknown model {name!r}: choose from {', '.join([*VAEKIT, *PYTHAE])}")
        if name in results.get("models", {}) and not args.force:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            runs = Path(args.runs) if args.runs else Path(tmp)
            row = measure(name, args.data, budget, args.heldout, args.k, runs)
            curve = runs / name / "metrics.csv"  # vaekit's runs: was it still improving at the end?
            if curve.exists():
                curves = path.with_name(path.stem + "-curves")
                curves.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(curve, curves / f"{name}.csv")
        row.update(cpu=cpu_name(), k=args.k, budget=args.budget)
        results.setdefault("models", {})[name] = row
        write_json(str(path), results)  # a table of hours of rows: never left half-written
        print(f"{name}: NLL {row['nll']:.2f} ± {row['nll_stderr']:.2f}, -ELBO {row['test_neg_elbo']:.2f}", flush=True)

    print(f"\n{'model':<22}{'train s':>9}{'epochs':>8}{'-ELBO':>9}{'NLL':>9}{'± se':>7}{'bits/dim':>10}")
    for name, row in results.get("models", {}).items():
        bpd = row.get("nll_bits_per_dim", math.nan)
        print(
            f"{name:<22}{row['train_seconds']:>9.0f}{row['epochs']:>8}{row['test_neg_elbo']:>9.2f}"
            f"{row['nll']:>9.2f}{row['nll_stderr']:>7.2f}{bpd:>10.4f}"
        )


if __name__ == "__main__":
    main()
