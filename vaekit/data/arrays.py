"""NumPy (.npy/.npz) and CSV arrays: images stored as integer levels, or tabular features."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import numpy as np

from vaekit.errors import DataError


def read_array(path: Path, label: str | None = None) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """The items (N, ...), labels (or None) and column names (CSV with a header) of an .npy, .npz or .csv file."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _read_csv(path, label)
    try:  # an .npy is memory-mapped: nothing is read until used
        loaded = np.load(path, allow_pickle=False, mmap_mode="c" if suffix == ".npy" else None)
    except ValueError as e:
        if "allow_pickle" in str(e) or "Python objects" in str(e):
            # NumPy treats anything without its magic bytes as a pickle
            raise DataError(
                f"{path}: not a NumPy array file (or one of Python objects, which vaekit never unpickles)"
            ) from None
        raise DataError(f"{path}: not a readable NumPy file ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable NumPy file ({e})") from None
    if suffix == ".npz":
        with loaded:
            keys = list(loaded.keys())
            if not keys:
                raise DataError(f"{path}: the .npz file holds no arrays")
            x_key = next((k for k in ("x", "X", "data", "images", "features") if k in keys), keys[0])
            y_key = label or next((k for k in ("y", "labels", "targets") if k in keys), None)
            if label is not None and label not in keys:
                raise DataError(f"{path}: no array named {label!r} (has {', '.join(keys)})")
            try:
                x = loaded[x_key]
                y = None if y_key is None else loaded[y_key]
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
                raise DataError(f"{path}: a corrupt array inside the .npz file ({e})") from None
    else:
        x, y = loaded, None
        if label is not None:
            raise DataError(f"{path}: --label names a column of a .csv or an array of an .npz, not of an .npy")
    return _check(path, x), (None if y is None else _check_labels(path, y, len(x))), None


def _read_csv(path: Path, label: str | None) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r]
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read CSV ({e.strerror or e})") from None
    if not rows:
        raise DataError(f"{path}: the CSV file is empty")
    header = None if _all_numeric(rows[0]) else [h.strip() for h in rows[0]]
    body = rows[1:] if header else rows
    if not body:
        raise DataError(f"{path}: the CSV file has a header but no rows")
    names = header or [str(i) for i in range(len(rows[0]))]
    for i, row in enumerate(body):
        if len(row) != len(names):
            raise DataError(f"{path}: row {i + 1 + bool(header)} has {len(row)} fields, expected {len(names)}")
    label_col = None
    if label is not None:
        if label not in names:
            raise DataError(f"{path}: no column named {label!r} (columns: {', '.join(names)})")
        label_col = names.index(label)
    columns = list(zip(*body, strict=True))
    features = []
    for j, column in enumerate(columns):
        if j == label_col:
            continue
        try:
            features.append([float(v) for v in column])
        except ValueError:
            bad = next(v for v in column if not _is_number(v))
            raise DataError(f"{path}: column {names[j]!r} is not numeric (value {bad!r})") from None
    x = np.asarray(features, dtype=np.float64).T
    y = None if label_col is None else np.asarray([v.strip() for v in columns[label_col]])
    feature_names = [n for j, n in enumerate(names) if j != label_col] if header else None
    return _check(path, x), y, feature_names


def _is_number(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _all_numeric(row: list[str]) -> bool:
    return all(_is_number(v) for v in row)


def _check(path: Path, x: np.ndarray) -> np.ndarray:
    if x.dtype.kind not in "biuf":
        raise DataError(f"{path}: array has dtype {x.dtype}; vaekit needs numbers")
    if x.ndim >= 2 and x.shape[0] == 0:
        raise DataError(f"{path}: holds no items (shape {x.shape})")
    if x.ndim < 2:
        raise DataError(f"{path}: expected an array of shape (items, ...), got shape {x.shape}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = np.argwhere(~np.isfinite(x))[0]
        raise DataError(f"{path}: value {x[tuple(bad)]} (NaN/inf) at item {bad[0]}")
    return x


def _check_labels(path: Path, y: np.ndarray, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,) or y.dtype.kind not in "biuU":
        raise DataError(f"{path}: labels must be {n} integers or strings, got dtype {y.dtype} and shape {y.shape}")
    return y
