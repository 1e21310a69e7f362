"""A uint8 memory-mapped cache: a source is decoded once, then read from disk page by page.

Image folders and IDX files are decoded into an .npy file in the cache folder ($VAEKIT_CACHE, else
~/.cache/vaekit/arrays), keyed by the source's path, size and modification time and by how it was
read. Batches then index the map, so a data set larger than memory trains without being loaded whole.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vaekit._atomic import atomic_path

FORMAT_VERSION = 1


def cache_dir() -> Path:
    if os.environ.get("VAEKIT_CACHE"):
        return Path(os.environ["VAEKIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vaekit" / "arrays"


def fingerprint(path: Path) -> list:
    """What identifies a file's or a folder's content cheaply: names, sizes and modification times."""
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def _path(key: object) -> Path:
    digest = hashlib.sha256(json.dumps([FORMAT_VERSION, key], sort_keys=True).encode()).hexdigest()[:32]
    return cache_dir() / f"{digest}.npy"


def lookup(key: object) -> np.ndarray | None:
    """The array stored under `key`, memory-mapped, or None."""
    path = _path(key)
    return open_map(path) if path.is_file() else None


def store(key: object, array: np.ndarray) -> np.ndarray:
    """Keep `array` under `key`; returns it memory-mapped from the cache."""

    def fill(out: np.ndarray) -> None:
        out[...] = array

    return cached(key, array.shape, array.dtype, fill)


def cached(key: object, shape: tuple[int, ...], dtype: np.dtype, fill: Callable[[np.ndarray], None]) -> np.ndarray:
    """The array stored under `key`, memory-mapped; built first by `fill(out)` into a map on disk if missing."""
    path = _path(key)
    if not path.is_file():
        with atomic_path(path) as tmp:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            fill(out)
            out.flush()
            del out
    return open_map(path)


def open_map(path: Path) -> np.ndarray:
    """An .npy file mapped copy-on-write: nothing is read until used, and nothing is ever written back."""
    return np.load(path, mmap_mode="c", allow_pickle=False)


def take_rows(x: np.ndarray, rows: np.ndarray, key: object, chunk: int = 65536) -> np.ndarray:
    """x[rows] of a memory-mapped x, written chunk by chunk to a cached map rather than into memory."""

    def fill(out: np.ndarray) -> None:
        for start in range(0, len(rows), chunk):
            out[start : start + chunk] = x[rows[start : start + chunk]]

    return cached(key, (len(rows), *x.shape[1:]), x.dtype, fill)
