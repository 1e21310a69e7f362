"""Lossless compression of a test set: vaekit's bits-back coding against the classic codecs, in one run.

The data are a source's test images as integer levels (8-bit, or digits' 17 levels), or with
--binarize a fixed binarisation of them (seed 0). vaekit codes them with a trained model (--run, or a
model trained here with the defaults: a discretised logistic for levels, a Bernoulli model on
dynamically binarised data for --binarize); gzip, bz2 and lzma (standard library, strongest settings)
code the same values one byte each, and PNG and WebP (lossless, Pillow) code them as one grid image
(1-bit PNG for binary data). The model's own -ELBO on the same data is what bits-back coding should
reach. Every figure is bits per value (per pixel); the round trip is checked bit for bit.

Speed: vaekit encodes and decodes on --workers processes (default: every core), then encodes in one
process on one thread, the baseline, which must give the very same bytes; all --repeats times, and
the speeds are medians.

    python benchmarks/compression.py --data digits
    python benchmarks/compression.py --data fashion-mnist --binarize --run runs/fm-binary
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import io
import lzma
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import cpu_name, write_json
from PIL import Image
from tqdm.auto import tqdm

import vaekit
from vaekit import data
from vaekit.codec import container
from vaekit.parallel import available_cores
from vaekit.trainer import evaluate_elbo


def mosaic(images: np.ndarray) -> np.ndarray:
    """Images (n, H, W) as one near-square grid (WebP takes at most 16,383 pixels a side); the last row
    is padded with zeros, a few values that the bits per value do not count."""
    n, height, width = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * cols, height, width), dtype=images.dtype)
    grid[:n] = images
    return grid.reshape(rows, cols, height, width).transpose(0, 2, 1, 3).reshape(rows * height, cols * width)


def classic_codecs(values: np.ndarray, binary: bool) -> dict[str, int]:
    """Compressed sizes in bytes of the values (items, H, W) by the standard library's and Pillow's codecs."""
    raw = np.ascontiguousarray(values, dtype=np.uint8)
    sizes = {
        "gzip -9": len(gzip.compress(raw.tobytes(), 9)),
        "bz2 -9": len(bz2.compress(raw.tobytes(), 9)),
        "lzma -9e": len(lzma.compress(raw.tobytes(), preset=9 | lzma.PRESET_EXTREME)),
    }
    image = Image.fromarray(mosaic(raw) * 255).convert("1") if binary else Image.fromarray(mosaic(raw), mode="L")
    images = {"PNG": dict(format="PNG", optimize=True), "WebP": dict(format="WEBP", lossless=True, method=6)}
    for name, options in images.items():
        buffer = io.BytesIO()
        image.save(buffer, **options)
        sizes[name] = buffer.tell()
    return sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--binarize", action="store_true", help="a fixed binarisation (seed 0) and a Bernoulli model")
    parser.add_argument("--run", help="a trained run to code with (default: train one here with the defaults)")
    parser.add_argument("--items", type=int, help="code only the first N test images")
    parser.add_argument("--workers", type=int, default=available_cores(), help="coding processes")
    parser.add_argument("--repeats", type=int, default=3, help="times to code; speeds are medians")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        if args.run:
            model = vaekit.load(args.run)
        else:
            options = dict(binarize="dynamic") if args.binarize else {}
            model = vaekit.train(args.data, Path(tmp) / "run", quiet=True, **options).model
        model.eval()
        test = data.load(args.data, "test", spec=model.spec)
        levels = test.x[: args.items] if args.items else test.x
        if args.binarize:
            values = model.prepare(levels, torch.Generator().manual_seed(0)).to(torch.uint8).numpy()
        else:
            values = levels.numpy()
    x = torch.as_tensor(values.astype(np.float32))
    neg_elbo = evaluate_elbo(model, x, generator=torch.Generator().manual_seed(0))["neg_elbo"]
    dims = values.size

    blob, seconds = None, {"encode": [], "decode": [], "encode_one": []}
    exact = True
    for _ in tqdm(range(args.repeats), desc="coding", disable=args.repeats == 1):
        start = time.perf_counter()
        coded = container.compress(model, values, workers=args.workers)
        seconds["encode"].append(time.perf_counter() - start)
        start = time.perf_counter()
        back = container.decompress(model, coded, workers=args.workers)
        seconds["decode"].append(time.perf_counter() - start)
        start = time.perf_counter()
        one = container.compress(model, values, workers=1)
        seconds["encode_one"].append(time.perf_counter() - start)
        blob = blob or coded
        exact &= bool(coded == blob == one and np.array_equal(back, values) and back.dtype == values.dtype)
    encode_s, decode_s, one_s = (statistics.median(seconds[key]) for key in ("encode", "decode", "encode_one"))
    shards = len(container.read_header(blob)["shards"])

    sizes = classic_codecs(values.reshape(len(values), *model.spec.shape[-2:]), args.binarize)
    best_classic = min(sizes, key=sizes.get)
    bpd = {name: 8 * size / dims for name, size in sizes.items()}
    ours = 8 * len(blob) / dims
    elbo_bpd = neg_elbo * len(values) / dims / math.log(2)
    result = {
        "cpu": cpu_name(),
        "data": f"{args.data} test, {len(values)} images" + (", binarised (seed 0)" if args.binarize else ""),
        "model": args.run or "trained here with the defaults",
        "vaekit_bits_per_dim": ours,
        "model_neg_elbo_bits_per_dim": elbo_bpd,
        "above_neg_elbo": ours / elbo_bpd - 1,
        "classic_bits_per_dim": bpd,
        "best_classic": best_classic,
        "smaller_than_best_classic": 1 - ours / bpd[best_classic],
        "round_trip_exact": exact,
        "shards": shards,
        "workers": min(args.workers, shards),  # as many as there are shards, at most
        "repeats": args.repeats,
        "encode_images_per_s": len(values) / encode_s,
        "decode_images_per_s": len(values) / decode_s,
        "encode_images_per_s_one_thread": len(values) / one_s,
        "encode_speedup": one_s / encode_s,
    }
    print(f"{result['data']}; CPU: {cpu_name()}, torch {torch.__version__}")
    print(f"{'codec':<22}{'bits/dim':>10}")
    for name, value in sorted(bpd.items(), key=lambda kv: kv[1]):
        print(f"{name:<22}{value:>10.4f}")
    print(f"{'vaekit (bits-back)':<22}{ours:>10.4f}")
    print(f"{'model -ELBO':<22}{elbo_bpd:>10.4f}")
    print(
        f"vaekit is {100 * result['above_neg_elbo']:.2f}% above the model's -ELBO and "
        f"{100 * result['smaller_than_best_classic']:.1f}% smaller than {best_classic}; round trip exact and the "
        f"same bytes in every repeat and on one thread: {exact}"
    )
    print(
        f"medians of {args.repeats}: encode {result['encode_images_per_s']:.0f} images/s, decode "
        f"{result['decode_images_per_s']:.0f} images/s on {result['workers']} processes ({shards} shards); "
        f"encode in one process on one thread {result['encode_images_per_s_one_thread']:.0f} images/s: "
        f"{result['encode_speedup']:.2f}x"
    )
    write_json(args.json, result)


if __name__ == "__main__":
    main()
