"""Training on data larger than one wants in memory: a generated .npy of several GB, memory-mapped.

Compares, each in its own process, vaekit's training speed (examples/s, default recipe, one epoch)
on 60,000 in-memory images with the same model on a multi-GB memory-mapped array, and prints each
process's peak resident memory (VmHWM) and its anonymous part (RssAnon: memory the process owns, as
opposed to file pages the kernel can drop at will).

    python benchmarks/large_data.py --gigabytes 3 --json large_data.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import write_json

ITEM = (28, 28)


def memory() -> dict[str, float]:
    fields = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
                fields[name] = int(value.split()[0]) / 1024  # MiB
    return fields


def generate(path: Path, gigabytes: float) -> int:
    n = int(gigabytes * 1e9) // (ITEM[0] * ITEM[1])
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, *ITEM))
    rng = np.random.default_rng(0)
    for start in range(0, n, 200_000):
        stop = min(n, start + 200_000)
        out[start:stop] = rng.integers(0, 256, (stop - start, *ITEM), dtype=np.uint8)
    out.flush()
    return n


def child(source: str, cache: str) -> None:
    """Train one epoch in this process and print examples/s and memory as JSON."""
    import os

    os.environ["VAEKIT_CACHE"] = cache
    import torch

    from vaekit import data
    from vaekit.models import VAE, ModelConfig
    from vaekit.trainer import TrainConfig, Trainer

    start = time.perf_counter()
    if source == "memory":
        spec = data.DataSpec("levels", (1, *ITEM), levels=256)
        gen = torch.Generator().manual_seed(0)
        fit = data.Dataset(torch.randint(0, 256, (60_000, 1, *ITEM), generator=gen, dtype=torch.uint8), spec)
        heldout = data.Dataset(torch.randint(0, 256, (600, 1, *ITEM), generator=gen, dtype=torch.uint8), spec)
    else:
        fit, heldout = data.load_for_training(source, heldout_fraction=0.0002)
    load_seconds = time.perf_counter() - start
    torch.manual_seed(0)
    model = VAE(ModelConfig.for_data(fit.spec, "bernoulli", "mlp", 20, (400,)))
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(model, TrainConfig(binarize="dynamic", epochs=1, patience=None), run_dir, quiet=True)
        trainer.fit(fit, heldout)
    seconds = trainer.metrics[-1]["seconds"]
    print(json.dumps({"items": len(fit), "load_seconds": load_seconds, "train_seconds": seconds,
                      "examples_per_s": len(fit) / seconds, **memory()}))  # fmt: skip


def run_child(source: str, cache: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", source, "--cache", cache], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gigabytes", type=float, default=3.0)
    parser.add_argument("--dir", help="where to write the generated array (default: a temporary folder)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.cache)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        big = Path(tmp) / "big.npy"
        n = generate(big, args.gigabytes)
        print(f"generated {big}: {n:,} images of 28x28, {big.stat().st_size / 2**30:.2f} GiB")
        result = {"gigabytes": big.stat().st_size / 1e9}
        for name, source in (("in_memory_60k", "memory"), ("memory_mapped", str(big))):
            result[name] = figures = run_child(source, str(Path(tmp) / "cache"))
            print(
                f"{name:<16}{figures['items']:>10,} items  {figures['examples_per_s']:>8,.0f} examples/s  "
                f"load {figures['load_seconds']:.1f} s  peak RSS {figures['VmHWM']:,.0f} MiB  "
                f"anonymous {figures['RssAnon']:,.0f} MiB  file-backed {figures['RssFile']:,.0f} MiB"
            )
        result["speed_ratio"] = result["memory_mapped"]["examples_per_s"] / result["in_memory_60k"]["examples_per_s"]
        print(f"memory-mapped / in-memory speed: {result['speed_ratio']:.2f}")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
