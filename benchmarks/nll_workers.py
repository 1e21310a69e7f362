"""The importance-sampled log-likelihood of a deep model on several worker processes against one
process with all the threads, in one run.

The model is the likelihood table's `vaekit-hybrid-384` (six dense latent layers and a layer of latent
maps, 384-wide paths, LayerNorm cells) with random weights, on 28x28 binary images; the figure is the
time of `negative_log_likelihood` over the same images with the same k, the median of the repeats (each
call of the workers includes starting them). Both must give the same figures; the speed-up is printed
with the machine's fp32 matmul rate measured in the same run.

    pip install -c constraints.txt -e ".[bench]"
    python benchmarks/nll_workers.py --json nll_workers.json
"""

from __future__ import annotations

import argparse

import torch
from common import cpu_name, matmul_gflops, print_figures, timed, write_json
from likelihood_table import VAEKIT

from vaekit.data import DataSpec
from vaekit.evaluate import negative_log_likelihood
from vaekit.models import ModelConfig, build
from vaekit.parallel import available_cores


def hybrid_384() -> torch.nn.Module:
    """The table's row itself, so that the two cannot drift apart."""
    torch.manual_seed(0)
    options = VAEKIT["vaekit-hybrid-384"]
    spec = DataSpec("levels", (1, 28, 28), levels=2)
    config = ModelConfig.for_data(
        spec, "bernoulli", options["arch"], None, options["hidden"], layers=options["layers"],
        layer_norm=options["layer_norm"],
    )  # fmt: skip
    model = build(config).eval()
    with torch.no_grad():  # its output and posterior layers start at zero: random weights everywhere instead
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1024, help="images to estimate (default 1024: four batches)")
    parser.add_argument("--k", type=int, default=300, help="importance samples per image")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()

    cores = available_cores()
    gflops = matmul_gflops()
    model = hybrid_384()
    x = (torch.rand(args.items, 1, 28, 28, generator=torch.Generator().manual_seed(1)) < 0.3).float()

    def estimate(workers: int) -> dict:
        return negative_log_likelihood(model, x, args.k, progress=False, workers=workers)

    one, alone = timed(lambda: estimate(1), args.repeats)
    several, shared = timed(lambda: estimate(cores), args.repeats)
    if abs(alone["nll"] - shared["nll"]) > 1e-6 * abs(alone["nll"]):
        raise SystemExit(f"the figures differ: {alone['nll']} alone, {shared['nll']} on {cores} processes")
    result = {
        "cpu": cpu_name(),
        "cores": cores,
        "matmul_gflops": gflops,
        "items": args.items,
        "k": args.k,
        "one_process_seconds": one,
        "worker_processes_seconds": several,
        "speedup": one / several,
        "nll": alone["nll"],
    }
    print_figures(
        [
            ("CPU", f"{result['cpu']}, {cores} cores, torch {torch.__version__}"),
            ("fp32 matmul (same run)", f"{gflops:.0f} GFLOP/s"),
            ("work", f"{args.items} images x k={args.k}, medians of {args.repeats}"),
            (f"one process, {torch.get_num_threads()} threads", f"{one:.2f} s"),
            (f"{cores} processes, 1 thread each", f"{several:.2f} s ({one / several:.2f}x)"),
        ]
    )
    write_json(args.json, result)


if __name__ == "__main__":
    main()
