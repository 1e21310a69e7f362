"""The one Dataset type and the data spec that tells every command how to read values."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from vaekit.errors import DataError


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
        def tup(v):
            return None if v is None else tuple(v)

        return cls(
            kind=d["kind"],
            shape=tuple(d["shape"]),
            levels=d.get("levels"),
            **{k: tup(d.get(k)) for k in ("mean", "std", "features", "classes")},
        )

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
