"""A folder of images (PNG/JPEG/...), grey or RGB, optionally one sub-folder per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

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


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()
        return image
    except (UnidentifiedImageError, OSError, ValueError) as e:
        reason = "not an image" if isinstance(e, UnidentifiedImageError) else f"unreadable image ({e})"
        raise DataError(f"{path}: {reason}") from None


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey images scaled to 8 bits (PIL's own conversion would clip them at 255)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        wide = np.asarray(image, dtype=np.int64)
        return Image.fromarray((wide >> 8 if wide.max() > 255 else wide).clip(0, 255).astype(np.uint8))
    return image


def read_folder(
    folder: Path, size: tuple[int, int] | None = None, channels: int | None = None
) -> tuple[np.ndarray, list[str] | None]:
    """Images as uint8 (N, C, H, W) and each one's sub-folder name as its label (or None).

    `size` is (height, width); without it every image must have the same size. `channels` is 1 or 3;
    without it the folder is grey when every image is grey, RGB otherwise.
    """
    files, labels = _image_files(folder)
    if not files:
        raise DataError(f"{folder}: the folder holds no image files")
    images = [_eight_bit(_open(p)) for p in files]
    if channels is None:
        channels = 1 if all(im.mode in ("1", "L", "I", "I;16", "F") for im in images) else 3
    mode = "L" if channels == 1 else "RGB"
    if size is None:
        sizes = {im.size for im in images}
        if len(sizes) > 1:
            (w1, h1), (w2, h2) = sorted(sizes)[:2]
            first = next(p for p, im in zip(files, images, strict=True) if im.size == (w1, h1))
            other = next(p for p, im in zip(files, images, strict=True) if im.size == (w2, h2))
            raise DataError(
                f"{folder}: images have mixed sizes ({first.name} is {h1}x{w1}, {other.name} is {h2}x{w2}); "
                "give one size with --size HxW"
            )
    arrays = []
    for im in images:
        im = im.convert(mode)
        if size is not None and im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        a = np.asarray(im, dtype=np.uint8)
        arrays.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
    return np.stack(arrays), labels
