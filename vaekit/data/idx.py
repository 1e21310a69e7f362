"""MNIST-family IDX files: reading, finding them on disk, and downloading them for users who are online."""

from __future__ import annotations

import gzip
import os
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from vaekit._atomic import atomic_path
from vaekit.data import cache
from vaekit.errors import DataError

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_DTYPES = tuple(np.dtype(v).newbyteorder("=") for v in _IDX_DTYPES.values())  # what an IDX file can hold

SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# Public mirrors; tests point these at file:// URLs of files they wrote themselves.
DOWNLOAD_URLS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}
SYSTEM_DIR = Path("/usr/share/datasets")


def is_idx_file(path: str | os.PathLike) -> bool:
    """Whether a name is that of an IDX file, as the MNIST family names them (train-images-idx3-ubyte[.gz])
    or by the .idx suffix."""
    name = Path(path).name.lower().removesuffix(".gz")
    return ("idx" in name and "ubyte" in name) or name.endswith(".idx")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a NumPy array, checking its header against its size."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: IDX header is truncated")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{path}: IDX header says shape {shape} ({expected} bytes) but the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write an array as an IDX file (gzipped when the name ends in .gz)."""
    codes = dict(zip(IDX_DTYPES, _IDX_DTYPES, strict=True))
    array = np.asarray(array)
    code = codes[array.dtype.newbyteorder("=")]
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    with atomic_path(path) as tmp:
        if str(path).endswith(".gz"):
            with gzip.open(tmp, "wb") as f:
                f.write(payload)
        else:
            tmp.write_bytes(payload)


def _cached_images(path: Path) -> np.ndarray:
    """An IDX file decoded (and decompressed) once into the memory-mapped cache."""
    key = ["idx", cache.fingerprint(path)]
    hit = cache.lookup(key)
    return hit if hit is not None else cache.store(key, read_idx(path))


def find_split_file(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (directory / name).is_file():
            return directory / name
    return None


def is_idx_dir(directory: Path) -> bool:
    return any(find_split_file(directory, images) for images, _ in SPLIT_FILES.values())


def read_split(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Images (N, 1, H, W) and labels (or None) of one split of an IDX directory."""
    images_stem, labels_stem = SPLIT_FILES[split]
    images_path = find_split_file(directory, images_stem)
    if images_path is None:
        raise DataError(f"{directory}: no {images_stem}[.gz] for the {split} split")
    images = _cached_images(images_path)
    if images.ndim != 3:
        raise DataError(f"{images_path}: expected a 3-D array of images, got shape {images.shape}")
    labels_path = find_split_file(directory, labels_stem)
    labels = None if labels_path is None else read_idx(labels_path)
    if labels is not None and labels.shape != (len(images),):
        raise DataError(f"{labels_path}: {labels.shape[0]} labels for {len(images)} images in {images_path}")
    return images[:, None], labels


def candidate_dirs(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    """Where a named IDX data set is looked for, in order."""
    dirs = []
    if data_dir is not None:
        dirs += [Path(data_dir) / name, Path(data_dir)]
    if os.environ.get("VAEKIT_DATA"):
        dirs += [Path(os.environ["VAEKIT_DATA"]) / name, Path(os.environ["VAEKIT_DATA"])]
    dirs += [download_dir(name, None), SYSTEM_DIR / name]
    return dirs


def download_dir(name: str, data_dir: str | os.PathLike | None) -> Path:
    if data_dir is not None:
        return Path(data_dir) / name
    if os.environ.get("VAEKIT_DATA"):
        return Path(os.environ["VAEKIT_DATA"]) / name
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vaekit" / name


def locate(name: str, data_dir: str | os.PathLike | None, download: bool) -> Path:
    """The directory that holds the named data set, downloading it first when asked to."""
    if download:
        target = download_dir(name, data_dir)
        if not is_idx_dir(target):
            fetch(name, target)
        return target
    for directory in candidate_dirs(name, data_dir):
        if directory.is_dir() and is_idx_dir(directory):
            return directory
    looked = ", ".join(str(d) for d in candidate_dirs(name, data_dir))
    hint = "apt-get install dataset-fashion-mnist, " if name == "fashion-mnist" else ""
    raise DataError(
        f"{name} not found; looked in {looked}. Get it with {hint}--download (needs the internet), "
        f"or put its IDX files in --data-dir or $VAEKIT_DATA"
    )


def fetch(name: str, target: Path) -> None:
    """Download the four IDX files of `name` into `target`, each written atomically."""
    base = DOWNLOAD_URLS[name]
    for stems in SPLIT_FILES.values():
        for stem in stems:
            url = base + stem + ".gz"
            try:
                with urllib.request.urlopen(url, timeout=60) as response, atomic_path(target / (stem + ".gz")) as tmp:
                    tmp.write_bytes(response.read())
            except OSError as e:
                raise DataError(f"could not download {url}: {e}") from None
