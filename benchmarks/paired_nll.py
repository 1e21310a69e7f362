"""Two rows of the likelihood table compared image by image, over the test images both have done.

`likelihood_table.py --runs DIR` keeps each row's per-image estimates of log p(x) in
DIR/NAME/test-nll-kK.safetensors, saved as its evaluation goes. Two rows score the same test images (one
fixed binarisation), so their difference can be read image by image, and read before an evaluation ends:
its standard error over the images done is far smaller than either NLL's, because the images that are
hard for one model are hard for the other.

    python benchmarks/paired_nll.py runs/pair/vaekit-hybrid-384 runs/pair/pythae-iwae

Prints each row's mean NLL over the common images, the mean difference (first minus second) with its
standard error over those images, and the importance-sampling standard error of that difference; and
each row's median effective sample size of its importance weights (out of k).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import safetensors
import torch

from vaekit.importance import effective_sample_size


def per_image(folder: Path) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The done images' -log p(x) and importance-sampling variances, and the file's name."""
    files = sorted(folder.glob("test-nll-k*.safetensors"))
    if len(files) != 1:
        raise SystemExit(f"{folder}: expected one test-nll-k*.safetensors file, found {len(files)}")
    with safetensors.safe_open(str(files[0]), "pt") as f:
        done = int((f.metadata() or {})["done"])
        log_px, variance = f.get_tensor("log_px"), f.get_tensor("variance")
    return -log_px[:done], variance[:done], files[0].name


def compare(first: Path, second: Path) -> dict[str, float]:
    nll_a, var_a, name_a = per_image(first)
    nll_b, var_b, name_b = per_image(second)
    if name_a != name_b:
        raise SystemExit(f"the rows used different k: {name_a} and {name_b}")
    n = min(len(nll_a), len(nll_b))
    if n < 2:
        raise SystemExit(f"only {n} image(s) done by both rows")
    diff = nll_a[:n] - nll_b[:n]
    k = int(name_a.removeprefix("test-nll-k").removesuffix(".safetensors"))
    return {
        "images": n,
        "nll_first": float(nll_a[:n].mean()),
        "nll_second": float(nll_b[:n].mean()),
        "difference": float(diff.mean()),
        "difference_stderr_over_images": float(diff.std() / math.sqrt(n)),
        "difference_stderr_sampling": float((var_a[:n] + var_b[:n]).sum().sqrt() / n),
        "k": k,
        "ess_first": float(effective_sample_size(var_a[:n], k).median()),
        "ess_second": float(effective_sample_size(var_b[:n], k).median()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("first", type=Path, help="a row's run folder (DIR/NAME)")
    parser.add_argument("second", type=Path, help="another row's run folder")
    args = parser.parse_args()
    r = compare(args.first, args.second)
    print(f"{r['images']} test images done by both")
    for which, folder in (("first", args.first), ("second", args.second)):
        ess = f"median effective sample size {r['ess_' + which]:.0f} of {r['k']}"
        print(f"  {folder.name}: NLL {r['nll_' + which]:.3f}, {ess}")
    print(
        f"  difference {r['difference']:+.3f} nats, standard error {r['difference_stderr_over_images']:.3f} over "
        f"these images, {r['difference_stderr_sampling']:.4f} from the importance sampling"
    )


if __name__ == "__main__":
    main()
