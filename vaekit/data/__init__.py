"""Where data comes from: built-in sets, IDX files, image folders, .npy/.npz/.csv arrays.

Every source becomes one `Dataset`: a tensor of integer levels (images) or standardised features
(tabular), optional labels, and a `DataSpec`. Given the spec of a trained model, a source is read
exactly as the model's training data was (same shape, channels, levels, scaling, columns, classes).

Splits: "train" and "test" are a source's own (digits, MNIST-family); "all" is everything; "fit" and
"heldout" are the two parts of a training run: a seeded fraction of "train" (or of "all" where
there is no own split) is held out for early stopping, so the test split stays unseen.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from vaekit.data import arrays, cache, idx, images
from vaekit.data.dataset import MAX_LEVELS, Dataset, DataSpec
from vaekit.errors import DataError

__all__ = ["NAMED_SOURCES", "SPLITS", "DataSpec", "Dataset", "has_own_split", "load", "load_for_training"]

NAMED_SOURCES = ("digits", "mnist", "fashion-mnist")
SPLITS = ("train", "test", "all", "fit", "heldout", "auto")
FASHION_CLASSES = (
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
)
DIGIT_CLASSES = tuple(str(i) for i in range(10))
DIGITS_TEST_SIZE = 300


class _Raw(NamedTuple):
    """A source as read, before conversion: items, label values, and what the source says of them."""

    x: np.ndarray
    labels: np.ndarray | None  # label values: class indices where `classes` is given, else any values
    classes: tuple[str, ...] | None = None  # fixed class names of a named set
    features: list[str] | None = None  # column names of a CSV with a header
    source_levels: int | None = None  # levels the source's integers are on (256 for 8-bit image files)


def has_own_split(source: str) -> bool:
    """Whether the source comes with its own train/test split (digits, MNIST-family, IDX directories)."""
    if source in NAMED_SOURCES:
        return True
    path = Path(source)
    return path.is_dir() and idx.is_idx_dir(path)


def load(
    source: str,
    split: str = "all",
    *,
    spec: DataSpec | None = None,
    heldout: tuple[float, int] | None = None,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    size: tuple[int, int] | None = None,
    label: str | None = None,
) -> Dataset:
    """Read a data source.

    source: "digits", "mnist", "fashion-mnist", a directory of IDX files or images, or an
      .npy/.npz/.csv/IDX file.
    split: "train", "test", "all", "fit", "heldout" (see the module's doc), or "auto": the test split
      where the source has one, else the held-out part where `heldout` is given, else all.
    spec: a trained model's DataSpec to conform to. heldout: (fraction, seed) of a training run.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use {', '.join(SPLITS)}")
    own_split = has_own_split(source)
    if split == "auto":
        split = "test" if own_split else "heldout" if heldout is not None else "all"
    if split in ("train", "test") and not own_split:
        raise DataError(f"{source}: has no {split} split of its own; use all (or heldout, for a run's data)")
    if split in ("fit", "heldout") and heldout is None:
        raise DataError(f"the {split} split needs the held-out fraction and seed of a run")
    base = split if split in ("train", "test") else "train" if own_split else "all"
    raw = _read(source, base, data_dir, download, size, label, spec)
    if split in ("fit", "heldout"):
        fit_rows, heldout_rows = _split_rows(len(raw.x), *heldout, source)
        raw = _take(raw, fit_rows if split == "fit" else heldout_rows)
    return _to_dataset(raw, source, spec)


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
    """(fit, held-out): a seeded `heldout_fraction` of the training data is held out for early stopping.

    Tabular features are standardised with statistics of the fit part only.
    """
    base = "train" if has_own_split(source) else "all"
    raw = _read(source, base, data_dir, download, size, label, None)
    fit_rows, heldout_rows = _split_rows(len(raw.x), heldout_fraction, seed, source)
    spec = _infer_spec(raw, source, standardise_rows=fit_rows.numpy())
    return _to_dataset(_take(raw, fit_rows), source, spec), _to_dataset(_take(raw, heldout_rows), source, spec)


def _split_rows(n: int, fraction: float, seed: int, source: str) -> tuple[torch.Tensor, torch.Tensor]:
    if n < 2:
        raise DataError(f"{source}: {n} item(s) is too few to hold any out")
    n_held = min(n - 1, max(1, round(n * fraction)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_held:].sort().values, order[:n_held].sort().values


def _take(raw: _Raw, rows: torch.Tensor) -> _Raw:
    """The given rows; of a memory-mapped source, copied to the cache rather than into memory."""
    rows = rows.numpy()
    x = raw.x
    if isinstance(x, np.memmap) and x.filename is not None:
        key = ["rows", cache.fingerprint(Path(x.filename)), hashlib.sha256(rows.tobytes()).hexdigest()]
        x = cache.take_rows(x, rows, key)
    else:
        x = x[rows]
    return raw._replace(x=x, labels=None if raw.labels is None else raw.labels[rows])


def _read(source, split, data_dir, download, size, label, spec) -> _Raw:
    if spec is not None and spec.is_image and size is None:
        size = spec.shape[1:]
    channels = spec.shape[0] if spec is not None and spec.is_image else None
    if source == "digits":
        return _digits(split)
    if source in ("mnist", "fashion-mnist"):
        x, y = _idx_dir(idx.locate(source, data_dir, download), split)
        return _Raw(x, y, FASHION_CLASSES if source == "fashion-mnist" else DIGIT_CLASSES, source_levels=256)
    path = Path(source)
    if not path.exists():
        raise DataError(f"{source}: no such file or directory (named sets: {', '.join(NAMED_SOURCES)})")
    if path.is_dir():
        if idx.is_idx_dir(path):
            return _Raw(*_idx_dir(path, split), source_levels=256)
        x, names = images.read_folder(path, size, channels)
        return _Raw(x, None if names is None else np.asarray(names), source_levels=256)
    if idx.is_idx_file(path):
        x = idx.read_idx(path)
        return _Raw(x[:, None] if x.ndim == 3 else x, None, source_levels=256 if x.dtype == np.uint8 else None)
    if path.suffix.lower() in (".npy", ".npz", ".csv"):
        x, y, features = arrays.read_array(path, label)
        return _Raw(x, y, features=features)  # integers in arrays are levels as they stand
    raise DataError(f"{source}: unknown kind of file (vaekit reads .npy, .npz, .csv, IDX files and folders)")


def _digits(split: str) -> _Raw:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.uint8)[:, None]  # values 0..16
    order = np.random.default_rng(0).permutation(len(x))  # a fixed split, the same for every run
    keep = {"train": order[:-DIGITS_TEST_SIZE], "test": order[-DIGITS_TEST_SIZE:], "all": np.arange(len(x))}[split]
    return _Raw(x[keep], bunch.target[keep].astype(np.int64), DIGIT_CLASSES, source_levels=17)


def _idx_dir(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    parts = [idx.read_split(directory, s) for s in (["train", "test"] if split == "all" else [split])]
    x = np.concatenate([p[0] for p in parts])
    ys = [p[1] for p in parts]
    return x, (None if any(v is None for v in ys) else np.concatenate(ys).astype(np.int64))


def _infer_spec(raw: _Raw, source: str, standardise_rows: np.ndarray | None = None) -> DataSpec:
    """The spec a source implies; tables are standardised with the statistics of `standardise_rows` (or all)."""
    classes = raw.classes
    if classes is None and raw.labels is not None:
        values = np.unique(raw.labels)
        numeric = values.dtype.kind in "iu"
        classes = tuple(str(v) for v in (values if numeric else sorted(values.tolist())))
    x = raw.x
    if x.ndim == 2:
        features = tuple(raw.features) if raw.features else None
        rows = x if standardise_rows is None else x[standardise_rows]
        with np.errstate(over="ignore", invalid="ignore"):  # checked below, and named
            mean, std = rows.mean(0, dtype=np.float64), np.maximum(rows.std(0, dtype=np.float64), 1e-6)
        if not (np.isfinite(mean).all() and np.isfinite(std).all()):
            column = int(np.flatnonzero(~(np.isfinite(mean) & np.isfinite(std)))[0])
            name = raw.features[column] if raw.features else column
            raise DataError(
                f"{source}: column {name!r} holds values too large to standardise (about 1e308); rescale it"
            )
        mean, std = tuple(mean.tolist()), tuple(std.tolist())
        return DataSpec("real", (x.shape[1],), mean=mean, std=std, features=features, classes=classes)
    x = _channels_first(x, source)
    if raw.source_levels is not None or x.dtype == np.uint8 or x.dtype.kind == "f":
        levels = raw.source_levels or 256
    else:
        if x.min() < 0:
            raise DataError(f"{source}: integer images must hold levels >= 0, found {x.min()}")
        levels = max(2, int(x.max()) + 1)
        if levels > MAX_LEVELS:
            raise DataError(
                f"{source}: integer images hold values up to {x.max()}; vaekit models at most {MAX_LEVELS} "
                "levels (16 bits): rescale them, or store them as floats in [0, 1]"
            )
    return DataSpec("levels", tuple(x.shape[1:]), levels=levels, classes=classes)


def _to_dataset(raw: _Raw, source: str, spec: DataSpec | None) -> Dataset:
    if spec is None:
        spec = _infer_spec(raw, source)
    labels = _label_indices(raw, spec, source)
    if spec.kind == "levels":
        return Dataset(torch.from_numpy(_as_levels(raw, spec, source)), spec, labels, source)
    x = _select_features(raw, spec, source)
    x = (x - np.asarray(spec.mean)) / np.asarray(spec.std)
    return Dataset(torch.from_numpy(x.astype(np.float32)), spec, labels, source)


def _label_indices(raw: _Raw, spec: DataSpec, source: str) -> torch.Tensor | None:
    """Labels as indices into the spec's classes (so a run and new data agree on what 3 means)."""
    if raw.labels is None or spec.classes is None:
        return None
    if raw.classes is not None and raw.classes == spec.classes:
        return torch.from_numpy(raw.labels.astype(np.int64))
    index = {name: i for i, name in enumerate(spec.classes)}
    values = [str(v) for v in raw.labels.tolist()]
    unknown = next((v for v in values if v not in index), None)
    if unknown is not None:
        raise DataError(f"{source}: label {unknown!r} is not one of the model's classes ({', '.join(spec.classes)})")
    return torch.tensor([index[v] for v in values], dtype=torch.int64)


def _select_features(raw: _Raw, spec: DataSpec, source: str) -> np.ndarray:
    """Table columns in the spec's order: by name where both have names, else by position."""
    x = raw.x
    if x.ndim != 2:
        raise DataError(f"{source}: expected a table (rows, features), got an array of shape {x.shape}")
    if spec.features is not None and raw.features is not None:
        missing = [f for f in spec.features if f not in raw.features]
        if missing:
            raise DataError(f"{source}: no column {missing[0]!r}, which the model was trained on")
        return x[:, [raw.features.index(f) for f in spec.features]]
    if x.shape[1:] != spec.shape:
        raise DataError(f"{source}: rows have {x.shape[1]} features, the model expects {spec.dim}")
    return x


def _channels_first(x: np.ndarray, source: str) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        return x.transpose(0, 3, 1, 2)
    if x.ndim == 4:
        return x
    raise DataError(f"{source}: expected items of shape (H, W) or (C, H, W), got array of shape {x.shape}")


def _as_levels(raw: _Raw, spec: DataSpec, source: str) -> np.ndarray:
    """Integer levels 0..spec.levels-1 in the spec's shape.

    Image files (8-bit) are requantised to the spec's levels; integers in arrays are taken as levels.
    """
    x = _channels_first(raw.x, source)
    if tuple(x.shape[1:]) != spec.shape:
        raise DataError(f"{source}: items have shape {tuple(x.shape[1:])}, the model expects {spec.shape}")
    if x.dtype.kind == "f":
        if not np.isfinite(x).all():
            raise DataError(f"{source}: images hold NaN or inf at item {np.argwhere(~np.isfinite(x))[0][0]}")
        if x.min() < 0 or x.max() > 1:
            raise DataError(f"{source}: float images must lie in [0, 1], found [{x.min():g}, {x.max():g}]")
        x = np.rint(x * (spec.levels - 1))
    elif raw.source_levels is not None and raw.source_levels != spec.levels:
        x = np.rint(x.astype(np.float64) * (spec.levels - 1) / (raw.source_levels - 1))
    dtype = np.uint8 if spec.levels <= 256 else np.int32
    if x.dtype == dtype and spec.levels == 256:
        return x  # every uint8 value is a valid level: no scan, no copy
    if x.min() < 0 or x.max() >= spec.levels:
        raise DataError(f"{source}: values must be integer levels 0..{spec.levels - 1}, found {x.min():g}..{x.max():g}")
    return x.astype(dtype, copy=False)
