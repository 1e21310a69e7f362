"""The one Dataset type and the data spec that tells every command how to read values."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from vaekit.errors import DataError

MAX_LEVELS = 1 << 16
MAX_DIM = 1 << 24  # values per item: far beyond any image vaekit trains on, far below an allocation to fear


def is_integer(v: Any) -> bool:
    """An int read from JSON, not a bool (which Python counts as one)."""
    return isinstance(v, int) and not isinstance(v, bool)


def _is_finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive_ints(values: Any, name: str, most: int) -> tuple[int, ...]:
    if not (isinstance(values, list) and 1 <= len(values) <= most and all(is_integer(v) and v >= 1 for v in values)):
        raise ValueError(f"{name} must be 1 to {most} integers >= 1, got {values!r}")
    if math.prod(values) > MAX_DIM:
        raise ValueError(f"{name} {values} holds more than {MAX_DIM} values")
    return tuple(values)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """How stored values map to what the model sees; recorded in a run's config.json.

    kind "levels": integers 0..levels-1 (8-bit images have 256 levels, `digits` 17).
    kind "real": real-valued features, standardised with the per-feature `mean` and `std`.
    `features` names the columns of a table (read by name from new CSV files); `classes` names the
    labels, so that new data's labels map to the same integers.
    """

    kind: str
    shape: tuple[int, ...]
    levels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    features: tuple[str, ...] | None = None
    classes: tuple[str, ...] | None = None

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    @property
    def is_image(self) -> bool:
        return self.kind == "levels" and len(self.shape) == 3

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSpec:
        """The spec a config file records; ValueError names the first field that is not a valid one."""
        if not isinstance(d, dict):
            raise ValueError("spec must be a mapping")
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"spec has an unknown field {sorted(unknown)[0]!r}")
        kind, shape = d.get("kind"), _positive_ints(d.get("shape"), "spec.shape", most=3)
        if kind not in ("levels", "real"):
            raise ValueError(f"spec.kind must be levels or real, got {kind!r}")
        dim = math.prod(shape)
        levels = d.get("levels")
        if kind == "levels" and not (is_integer(levels) and 2 <= levels <= MAX_LEVELS):
            raise ValueError(f"spec.levels must be an integer in 2..{MAX_LEVELS}, got {levels!r}")
        if kind == "real":
            levels = None
            for key in ("mean", "std"):
                values = d.get(key)
                if not (isinstance(values, list) and len(values) == dim and all(_is_finite(v) for v in values)):
                    raise ValueError(f"spec.{key} must be {dim} finite numbers")
            if min(d["std"]) <= 0:
                raise ValueError("spec.std must be > 0")
        names = {}
        for key in ("features", "classes"):
            values = d.get(key)
            if values is not None and not (isinstance(values, list) and all(isinstance(v, str) for v in values)):
                raise ValueError(f"spec.{key} must be a list of names")
            names[key] = None if values is None else tuple(values)
        real = {k: tuple(map(float, d[k])) if kind == "real" else None for k in ("mean", "std")}
        return cls(kind=kind, shape=shape, levels=levels, **real, **names)

    def to_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space values to [0, 1] for display (real data: a per-item min-max view)."""
        if self.kind == "levels":
            return (x / (self.levels - 1)).clamp(0, 1)
        lo = x.amin(dim=tuple(range(1, x.dim())), keepdim=True)
        hi = x.amax(dim=tuple(range(1, x.dim())), keepdim=True)
        return (x - lo) / (hi - lo).clamp_min(1e-8)

    def to_data_units(self, x: torch.Tensor) -> torch.Tensor:
        """Model-space values back to the units of the source (levels stay levels; real data is de-standardised)."""
        if self.kind == "real":
            return x * torch.tensor(self.std) + torch.tensor(self.mean)
        return x


@dataclasses.dataclass
class Dataset:
    """A tensor of items, optional integer labels, and the spec that says how to read the values.

    `x` holds levels as an integer tensor (uint8 where they fit) or real values already standardised.
    """

    x: torch.Tensor
    spec: DataSpec
    labels: torch.Tensor | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if tuple(self.x.shape[1:]) != self.spec.shape:
            raise DataError(f"{self.source}: items have shape {tuple(self.x.shape[1:])}, expected {self.spec.shape}")
        if self.labels is not None and len(self.labels) != len(self.x):
            raise DataError(f"{self.source}: {len(self.labels)} labels for {len(self.x)} items")

    def __len__(self) -> int:
        return len(self.x)

    @property
    def label_names(self) -> list[str] | None:
        return None if self.spec.classes is None else list(self.spec.classes)

    def subset(self, index: torch.Tensor | np.ndarray | slice) -> Dataset:
        labels = None if self.labels is None else self.labels[index]
        return Dataset(self.x[index], self.spec, labels, self.source)

    def item(self, index: int) -> torch.Tensor:
        if not -len(self) <= index < len(self):
            raise DataError(f"index {index} is out of range: {self.source} has {len(self)} items (0..{len(self) - 1})")
        return self.x[index]
