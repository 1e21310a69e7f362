"""The foundation's figures: `vaekit train` on digits and on Fashion-MNIST, from the command line.

Each training runs as its own process (as a user runs it), repeated; medians are printed with the
machine's fp32 matmul peak measured in the same run, for context across CPUs.

    python benchmarks/train_figures.py --repeats 3 --json train_figures.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import cpu_name, matmul_gflops, write_json


def train_once(args: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "vaekit", "train", "--quiet", "--out", str(out), *args])
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"vaekit train {' '.join(args)} failed")
        with open(out / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        metrics = out / "test.json"  # the source's test split, unseen in training
        subprocess.run([sys.executable, "-m", "vaekit", "evaluate", str(out), "--no-probe", "-o", str(metrics)],
                       check=True, capture_output=True)  # fmt: skip
        test = json.loads(metrics.read_text())
    best = min(rows, key=lambda r: float(r["heldout_neg_elbo"]))
    return {
        "wall_seconds": wall,
        "training_seconds": float(rows[-1]["seconds"]),
        "epochs": int(rows[-1]["epoch"]),
        "best_epoch": int(best["epoch"]),
        "heldout_neg_elbo": float(best["heldout_neg_elbo"]),
        "heldout_bits_per_dim": float(best["heldout_bits_per_dim"]),
        "test_neg_elbo": test["neg_elbo"],
        "test_bits_per_dim": test["bits_per_dim"],
        "peak_rss_mib": usage.ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--skip-fashion", action="store_true", help="only digits (no Fashion-MNIST installed)")
    args = parser.parse_args()
    cases = {"digits (default)": []}
    if not args.skip_fashion:
        cases["fashion-mnist (default)"] = ["--data", "fashion-mnist"]
    result = {
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "matmul_gflops": matmul_gflops(),
        "cases": {},
    }
    for name, case_args in cases.items():
        runs = [train_once(case_args) for _ in range(args.repeats)]
        result["cases"][name] = {key: statistics.median(r[key] for r in runs) for key in runs[0]} | {"runs": runs}
    print(f"fp32 matmul peak: {result['matmul_gflops']:.0f} GFLOP/s on {result['threads']} threads")
    columns = ("wall s", 8), ("train s", 9), ("epochs", 8), ("held-out", 10), ("test", 10), ("bits/dim", 10)
    print(f"{'case':<26}" + "".join(f"{name:>{width}}" for name, width in columns) + f"{'RSS MiB':>9}")
    for name, c in result["cases"].items():
        print(
            f"{name:<26}{c['wall_seconds']:>8.1f}{c['training_seconds']:>9.1f}{c['epochs']:>8.0f}"
            f"{c['heldout_neg_elbo']:>10.2f}{c['test_neg_elbo']:>10.2f}{c['test_bits_per_dim']:>10.4f}"
            f"{c['peak_rss_mib']:>9.0f}"
        )
    print(f"(medians of {args.repeats} runs)")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
