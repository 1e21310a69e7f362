"""Training-step time of the likelihood table's models, against the first one named, in one run.

Each model is built with its table recipe (`likelihood_table.VAEKIT`) and stepped by vaekit's own trainer
(`Trainer._step`: dynamic binarisation, autocast at the precision `auto` chooses, the backward pass, the
gradient norm for the skip threshold, fused Adam) on batches of 28x28 images. The models take turns, a few
steps each, round after round, so that the machine's drift within the run falls on all of them alike; each
figure is the median over all rounds. The machine's fp32 matmul rate is measured in the same run.

    python benchmarks/step_speed.py --models vaekit-hybrid-256,vaekit-hybrid-256-patches --json steps.json
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import cpu_name, matmul_gflops, print_figures, write_json
from likelihood_table import VAEKIT

from vaekit.data import DataSpec
from vaekit.models import ModelConfig, build
from vaekit.trainer import TrainConfig, Trainer

TRAINING_FIELDS = {field.name for field in dataclasses.fields(TrainConfig)}
SPEC = DataSpec("levels", (1, 28, 28), levels=256)  # Fashion-MNIST's shape; the pixels' values do not matter here


def trainer_for(name: str, run_dir: Path, batch_size: int) -> Trainer:
    options = dict(VAEKIT[name], batch_size=batch_size)
    training = {key: value for key, value in options.items() if key in TRAINING_FIELDS}
    shape = {key: value for key, value in options.items() if key not in TRAINING_FIELDS}
    torch.manual_seed(0)
    model = build(ModelConfig.for_data(SPEC, "bernoulli", **shape))
    return Trainer(model, TrainConfig(binarize="dynamic", patience=None, **training), run_dir, quiet=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models", default="vaekit-hybrid-256,vaekit-hybrid-256-patches", help="table rows; the first is the baseline"
    )
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--steps", type=int, default=5, help="steps of each model per round")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    names = args.models.split(",")
    for name in names:
        if name not in VAEKIT:
            raise SystemExit(f"unknown model {name!r}: choose from {', '.join(VAEKIT)}")

    gflops = matmul_gflops()
    images = torch.randint(0, 256, (4096, *SPEC.shape), dtype=torch.uint8)
    times: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {name: trainer_for(name, Path(tmp) / name, args.batch_size) for name in names}
        batches = torch.randperm(len(images)).split(args.batch_size)

        def step(name: str, i: int) -> None:
            trainers[name]._step(images, None, batches[i % len(batches)], beta=1.0)

        for name in names:  # warm-up: oneDNN's first calls pick their kernels
            for i in range(3):
                step(name, i)
        for _ in range(args.rounds):
            for name in names:
                for i in range(args.steps):
                    start = time.perf_counter()
                    step(name, i)
                    times[name].append(time.perf_counter() - start)
        precision = {name: trainers[name].resolved["precision"] for name in names}

    baseline = statistics.median(times[names[0]])
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "matmul_gflops": gflops,
        "batch_size": args.batch_size,
        "steps_per_model": args.rounds * args.steps,
        "models": {
            name: {
                "median_step_ms": 1e3 * statistics.median(times[name]),
                "time_against_baseline": statistics.median(times[name]) / baseline,
                "precision": precision[name],
            }
            for name in names
        },
    }
    rows = [("CPU", f"{result['cpu']}, {result['threads']} threads"), ("fp32 matmul", f"{gflops:.0f} GFLOP/s")]
    for name, figures in result["models"].items():
        rows.append(
            (name, f"{figures['median_step_ms']:.1f} ms a step ({figures['precision']}), "
                   f"{figures['time_against_baseline']:.2f} times {names[0]}'s")
        )  # fmt: skip
    print_figures(rows)
    write_json(args.json, result)


if __name__ == "__main__":
    main()
