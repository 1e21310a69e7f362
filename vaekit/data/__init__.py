"""Where data comes from: built-in sets, IDX files, image folders, .npy/.npz/.csv arrays.

Every source becomes one `Dataset`: a tensor of integer levels (images) or standardised features
(tabular), optional labels, and a `DataSpec`. Given the spec of a trained model, a source is read
exactly as the model's training data was (same shape, channels, levels, scaling).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from vaekit.data import arrays, idx, images
from vaekit.data.dataset import Dataset, DataSpec
from vaekit.errors import DataError

__all__ = ["NAMED_SOURCES", "DataSpec", "Dataset", "load", "load_for_training"]

NAMED_SOURCES = ("digits", "mnist", "fashion-mnist")
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
DIGITS_TEST_SIZE = 300


def load(
    source: str,
    split: str = "all",
    *,
    spec: DataSpec | None = None,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    size: tuple[int, int] | None = None,
    label: str | None = None,
) -> Dataset:
    """Read a data source.

    source: "digits", "mnist", "fashion-mnist", a directory of IDX files or images, or an
      .npy/.npz/.csv/IDX file. split: "train", "test" or "all" ("train"/"test" only where the source
      has its own split), or "auto" (the test split where there is one, else all).
    spec: a trained model's DataSpec to conform to.
    """
    if split not in ("train", "test", "all", "auto"):
        raise DataError(f"unknown split {split!r}: use train, test, all or auto")
    if split == "auto":
        has_split = _read(source, split, data_dir, download, size, label, spec, probe=True)[3]
        split = "test" if has_split else "all"
    x, y, names, has_split = _read(source, split, data_dir, download, size, label, spec)
    if split != "all" and not has_split:
        raise DataError(f"{source}: has no {split} split of its own; use --split all")
    return _to_dataset(x, y, names, source, spec)


def load_for_training(
    source: str,
    *,
    heldout_fraction: float = 0.1,
    seed: int = 0,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    size: tuple[int, int] | None = None,
    label: str | None = None,
) -> tuple[Dataset, Dataset]:
    """(train, held-out): the source's own split where it has one, else a seeded random hold-out.

    Tabular features are standardised with statistics of the training part only.
    """
    kwargs = dict(data_dir=data_dir, download=download, size=size, label=label)
    _, _, _, has_split = _read(source, "train", **kwargs, spec=None, probe=True)
    if has_split:
        train = load(source, "train", **kwargs)
        heldout = load(source, "test", spec=train.spec, **kwargs)
        return train, heldout
    x, y, names, _ = _read(source, "all", **kwargs, spec=None)
    full = _to_dataset(x, y, names, source, None, standardise=False)
    train, heldout = full.split(heldout_fraction, seed)
    if full.spec.kind == "real":
        spec = _fit_standardisation(train)
        train, heldout = _standardise(train, spec), _standardise(heldout, spec)
    return train, heldout


def _read(source, split, data_dir, download, size, label, spec, probe=False):
    """(items, labels, class names, has its own split) as NumPy arrays, before conversion."""
    if spec is not None and spec.is_image and size is None:
        size = spec.shape[1:]
    channels = spec.shape[0] if spec is not None and spec.is_image else None
    if source == "digits":
        return (None, None, None, True) if probe else _digits(split)
    if source in ("mnist", "fashion-mnist"):
        directory = idx.locate(source, data_dir, download)
        names = FASHION_CLASSES if source == "fashion-mnist" else [str(i) for i in range(10)]
        return (None, None, None, True) if probe else (*_idx_dir(directory, split), names, True)
    path = Path(source)
    if not path.exists():
        raise DataError(f"{source}: no such file or directory (named sets: {', '.join(NAMED_SOURCES)})")
    if path.is_dir():
        if idx.is_idx_dir(path):
            return (None, None, None, True) if probe else (*_idx_dir(path, split), None, True)
        if probe:
            return None, None, None, False
        return (*images.read_folder(path, size, channels), False)
    if probe:
        return None, None, None, False
    if "idx" in path.name and "ubyte" in path.name:
        x = idx.read_idx(path)
        return (x[:, None] if x.ndim == 3 else x), None, None, False
    if path.suffix.lower() in (".npy", ".npz", ".csv"):
        return (*arrays.read_array(path, label), None, False)
    raise DataError(f"{source}: unknown kind of file (vaekit reads .npy, .npz, .csv, IDX files and folders)")


def _digits(split):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.uint8)[:, None]  # values 0..16
    y = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))  # fixed split, the same for every run
    keep = {"train": order[:-DIGITS_TEST_SIZE], "test": order[-DIGITS_TEST_SIZE:], "all": np.arange(len(x))}[split]
    return x[keep], y[keep], [str(i) for i in range(10)], True


def _idx_dir(directory: Path, split: str):
    parts = [idx.read_split(directory, s) for s in (["train", "test"] if split == "all" else [split])]
    x = np.concatenate([p[0] for p in parts])
    ys = [p[1] for p in parts]
    y = None if any(v is None for v in ys) else np.concatenate(ys)
    return x, y


def _to_dataset(x, y, names, source, spec, standardise=True) -> Dataset:
    labels = None if y is None else torch.from_numpy(np.asarray(y, dtype=np.int64))
    if spec is None:
        spec = _infer_spec(x, source, source_levels=17 if source == "digits" else None)
    if spec.kind == "levels":
        values = _as_levels(x, spec, source)
        return Dataset(torch.from_numpy(values), spec, labels, source, names)
    if x.ndim != 2 or x.shape[1:] != spec.shape:
        raise DataError(f"{source}: expected tabular data with {spec.dim} features per row, got shape {x.shape}")
    ds = Dataset(torch.from_numpy(x.astype(np.float32)), spec, labels, source, names)
    return _standardise(ds, spec) if standardise and spec.mean is not None else ds


def _infer_spec(x: np.ndarray, source: str, source_levels: int | None) -> DataSpec:
    if x.ndim == 2:
        return DataSpec("real", (x.shape[1],))
    x = _channels_first(x, source)
    if source_levels is not None:
        levels = source_levels
    elif x.dtype == np.uint8 or x.dtype.kind == "f":
        levels = 256
    else:
        if x.min() < 0:
            raise DataError(f"{source}: integer images must hold levels >= 0, found {x.min()}")
        levels = max(2, int(x.max()) + 1)
    return DataSpec("levels", tuple(x.shape[1:]), levels=levels)


def _channels_first(x: np.ndarray, source: str) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        return x.transpose(0, 3, 1, 2)
    if x.ndim == 4:
        return x
    raise DataError(f"{source}: expected items of shape (H, W) or (C, H, W), got array of shape {x.shape}")


def _as_levels(x: np.ndarray, spec: DataSpec, source: str) -> np.ndarray:
    """Integer levels 0..spec.levels-1 in the spec's shape; 8-bit images are requantised to fewer levels."""
    x = _channels_first(x, source)
    if tuple(x.shape[1:]) != spec.shape:
        raise DataError(f"{source}: items have shape {tuple(x.shape[1:])}, the model expects {spec.shape}")
    if x.dtype.kind == "f":
        if x.min() < 0 or x.max() > 1:
            raise DataError(f"{source}: float images must lie in [0, 1], found [{x.min():g}, {x.max():g}]")
        x = np.rint(x * (spec.levels - 1))
    elif x.dtype == np.uint8 and spec.levels != 256 and x.max() >= spec.levels:
        x = np.rint(x.astype(np.float64) * (spec.levels - 1) / 255)
    if x.min() < 0 or x.max() >= spec.levels:
        raise DataError(f"{source}: values must be integer levels 0..{spec.levels - 1}, found {x.min():g}..{x.max():g}")
    return x.astype(np.uint8 if spec.levels <= 256 else np.int32)


def _fit_standardisation(ds: Dataset) -> DataSpec:
    mean = ds.x.double().mean(0)
    std = ds.x.double().std(0).clamp_min(1e-6)
    return DataSpec("real", ds.spec.shape, mean=tuple(mean.tolist()), std=tuple(std.tolist()))


def _standardise(ds: Dataset, spec: DataSpec) -> Dataset:
    x = (ds.x.double() - torch.tensor(spec.mean, dtype=torch.float64)) / torch.tensor(spec.std, dtype=torch.float64)
    return Dataset(x.float(), spec, ds.labels, ds.source, ds.label_names)
