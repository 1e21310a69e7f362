"""Lossless compression of a test set: vaekit's bits-back coding against the classic codecs, in one run.

The data are a source's test images as integer levels (8-bit, or digits' 17 levels), or with
--binarize a fixed binarisation of them (seed 0). vaekit codes them with a trained model (--run, or a
model trained here with the defaults: a discretised logistic for levels, a Bernoulli model on
dynamically binarised data for --binarize); gzip, bz2 and lzma (standard library, strongest settings)
code the same values one byte each, and PNG and WebP (lossless, Pillow) code them as one grid image
(1-bit PNG for binary data). The model's own -ELBO on the same data is what bits-back coding should
reach. Every figure is bits per value (per pixel); the round trip is checked bit for bit.

Speed: vaekit codes on --workers processes (default: every core), then encodes once more in one
process on one thread, the baseline, which must give the very same bytes.

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
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import cpu_name, write_json
from PIL import Image

import vaekit
from vaekit import data
from vaekit.codec import container
from vaekit.codec.parallel import available_cores
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

    start = time.perf_counter()
    blob = container.compress(model, values, workers=args.workers)
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    back = container.decompress(model, blob, workers=args.workers)
    decode_s = time.perf_counter() - start
    start = time.perf_counter()
    same_bytes = container.compress(model, values, workers=1) == blob
    one_thread_s = time.perf_counter() - start
    exact = bool(np.array_equal(back, values) and back.dtype == values.dtype and same_bytes)

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
        "workers": args.workers,
        "shards": len(container.read_header(blob)["shards"]),
        "encode_images_per_s": len(values) / encode_s,
        "decode_images_per_s": len(values) / decode_s,
        "encode_images_per_s_one_thread": len(values) / one_thread_s,
        "same_bytes_on_one_thread": same_bytes,
    }
    print(f"{result['data']}; CPU: {cpu_name()}, torch {torch.__version__}")
    print(f"{'codec':<22}{'bits/dim':>10}")
    for name, value in sorted(bpd.items(), key=lambda kv: kv[1]):
        print(f"{name:<22}{value:>10.4f}")
    print(f"{'vaekit (bits-back)':<22}{ours:>10.4f}")
    print(f"{'model -ELBO':<22}{elbo_bpd:>10.4f}")
    print(
        f"vaekit is {100 * result['above_neg_elbo']:.2f}% above the model's -ELBO and "
        f"{100 * result['smaller_than_best_classic']:.1f}% smaller than {best_classic}; round trip exact: {exact}; "
        f"encode {result['encode_images_per_s']:.0f} images/s, decode {result['decode_images_per_s']:.0f} images/s "
        f"on {args.workers} processes ({result['shards']} shards); encode on one thread "
        f"{result['encode_images_per_s_one_thread']:.0f} images/s, same bytes: {same_bytes}"
    )
    write_json(args.json, result)


if __name__ == "__main__":
    main()
