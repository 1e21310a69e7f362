"""A folder of images (PNG/JPEG/...), grey or RGB, optionally one sub-folder per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from vaekit.data import cache
from vaekit.errors import DataError


def _image_files(folder: Path) -> tuple[list[Path], list[str] | None]:
    """The image files, and the name of each one's sub-folder (its class) where there are sub-folders."""
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    subdirs = [p for p in entries if p.is_dir()]
    if not subdirs:
        return [p for p in entries if p.is_file()], None
    files, labels = [], []
    for sub in subdirs:
        members = sorted(p for p in sub.iterdir() if p.is_file() and not p.name.startswith("."))
        files += members
        labels += [sub.name] * len(members)
    return files, labels


def _header(path: Path) -> tuple[str, tuple[int, int]]:
    """An image's mode and (width, height), from its header alone."""
    try:
        with Image.open(path) as image:
            return image.mode, image.size
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image, or a damaged one (no image format recognises it)") from None
    except OSError as e:
        raise DataError(f"{path}: unreadable image ({e})") from None


def _decode(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return _eight_bit(image)
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from None


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey images scaled to 8 bits (PIL's own conversion would clip them at 255)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(image, dtype=np.int64)
        return Image.fromarray((wide >> 8 if wide.max() > 255 else wide).clip(0, 255).astype(np.uint8))
    return image


def read_folder(
    folder: Path, size: tuple[int, int] | None = None, channels: int | None = None
) -> tuple[np.ndarray, list[str] | None]:
    """Images as uint8 (N, C, H, W), memory-mapped from the cache, and each one's sub-folder name as
    its label (or None). Decoded once; later reads of the same unchanged folder come from the cache.

    `size` is (height, width); without it every image must have the same size. `channels` is 1 or 3;
    without it the folder is grey when every image is grey, RGB otherwise.
    """
    files, labels = _image_files(folder)
    if not files:
        raise DataError(f"{folder}: the folder holds no image files")
    headers = [_header(p) for p in files]
    if channels is None:
        channels = 1 if all(mode in ("1", "L", "I", "I;16", "F") for mode, _ in headers) else 3
    if size is None:
        sizes = sorted({wh for _, wh in headers})
        if len(sizes) > 1:
            (w1, h1), (w2, h2) = sizes[:2]
            first = next(p for p, (_, wh) in zip(files, headers, strict=True) if wh == (w1, h1))
            other = next(p for p, (_, wh) in zip(files, headers, strict=True) if wh == (w2, h2))
            raise DataError(
                f"{folder}: images have mixed sizes ({first.name} is {h1}x{w1}, {other.name} is {h2}x{w2}); "
                "give one size with --size HxW"
            )
        size = (sizes[0][1], sizes[0][0])
    mode = "L" if channels == 1 else "RGB"

    def fill(out: np.ndarray) -> None:
        for i, path in enumerate(tqdm(files, desc="decoding images", unit="image", leave=False, disable=None)):
            image = _decode(path).convert(mode)
            if image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            a = np.asarray(image, dtype=np.uint8)
            out[i] = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)

    key = ["image-folder", cache.fingerprint(folder), list(size), channels]
    return cache.cached(key, (len(files), channels, *size), np.dtype(np.uint8), fill), labels
