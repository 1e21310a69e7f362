"""Test NLL of pilot runs on the first N Fashion-MNIST test images, for comparing short trainings.

    python benchmarks/pilot_nll.py 1000 1000 RUN_A RUN_B
    python benchmarks/paired_nll.py RUN_A RUN_B

Each run's per-image estimates go to RUN/test-nll-kK.safetensors (an estimate cut short goes on from it),
with the table's binarisation of the test images, so that `paired_nll.py` can compare two runs image by
image. A pilot's figures come from these two commands (benchmarks/likelihood-notes.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import table_test_images

import vaekit
from vaekit.evaluate import negative_log_likelihood


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", type=int, help="how many test images, from the first")
    parser.add_argument("k", type=int, help="importance samples per image")
    parser.add_argument("runs", nargs="+", type=Path, help="run folders written by vaekit train")
    args = parser.parse_args()
    for run in args.runs:
        model = vaekit.load(run)
        model.eval()
        x = table_test_images(model, "fashion-mnist")[: args.images]
        start = time.perf_counter()
        with torch.no_grad():
            nll = negative_log_likelihood(
                model, x, args.k, progress=False, checkpoint=run / f"test-nll-k{args.k}.safetensors", workers=None
            )
        print(run, nll, f"{time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":  # the estimate's workers import this file
    main()
