"""What the benchmarks share: the machine's fp32 matmul peak, the CPU's name, Fashion-MNIST or a stand-in,
the likelihood table's test images, and writing their figures."""

from __future__ import annotations

import json
import platform
import statistics
import time

import torch

from vaekit import data
from vaekit._atomic import write_text
from vaekit.errors import DataError
from vaekit.models import LatentVariableModel
from vaekit.trainer import EVAL_SEED


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def matmul_gflops(n: int = 1024, repeats: int = 7) -> float:
    """Median fp32 matmul rate of this machine with torch's threads, in GFLOP/s."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        rates.append(2 * n**3 * 10 / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def fashion_mnist_or_random() -> tuple[data.Dataset, data.Dataset, str]:
    """(train, test, description): the real data where installed, else random 8-bit images of its shape."""
    try:
        train, test = data.load("fashion-mnist", "train"), data.load("fashion-mnist", "test")
        return train, test, "Fashion-MNIST (60,000 train / 10,000 test)"
    except DataError:
        gen = torch.Generator().manual_seed(0)
        spec = data.DataSpec("levels", (1, 28, 28), levels=256)

        def fake(n: int) -> data.Dataset:
            return data.Dataset(torch.randint(0, 256, (n, 1, 28, 28), generator=gen, dtype=torch.uint8), spec)

        return fake(60_000), fake(10_000), "RANDOM 8-bit images (Fashion-MNIST is not installed)"


def table_test_images(model: LatentVariableModel, source: str) -> torch.Tensor:
    """The test set in `model`'s space, binarised (where it binarises) by one draw of seed EVAL_SEED: the same
    images for every row of the likelihood table and every pilot, so that `paired_nll.py` compares them image by
    image."""
    test = data.load(source, "test", spec=model.spec)
    return model.prepare(test.x, torch.Generator().manual_seed(EVAL_SEED))


def timed(fn, repeats: int) -> tuple[float, object]:
    """The median seconds of `repeats` calls of fn, and the last call's result."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def print_figures(rows: list[tuple[str, str]]) -> None:
    """(name, value) rows as a two-column table."""
    width = max(len(name) for name, _ in rows) + 2
    for name, value in rows:
        print(f"{name:<{width}}{value}")


def write_json(path: str | None, result: dict) -> None:
    """The figures as JSON, where a path was given (written whole or not at all)."""
    if path:
        write_text(path, json.dumps(result, indent=2) + "\n")
