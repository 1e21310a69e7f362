"""Moving through the latent space: interpolation (lerp/slerp), traversals, attribute vectors."""

from __future__ import annotations

import torch

from vaekit.errors import OptionError
from vaekit.models import LatentVariableModel


def lerp(z0: torch.Tensor, z1: torch.Tensor, steps: int) -> torch.Tensor:
    t = torch.linspace(0, 1, steps, dtype=z0.dtype).unsqueeze(-1)
    return (1 - t) * z0 + t * z1


def slerp(z0: torch.Tensor, z1: torch.Tensor, steps: int) -> torch.Tensor:
    """Spherical interpolation: keeps the norm typical of the Gaussian prior along the path."""
    t = torch.linspace(0, 1, steps, dtype=z0.dtype).unsqueeze(-1)
    cos = torch.dot(z0, z1) / (z0.norm() * z1.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if omega.abs() < 1e-6:  # (nearly) parallel: slerp reduces to lerp
        return lerp(z0, z1, steps)
    return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)


@torch.no_grad()
def interpolate(
    model: LatentVariableModel,
    x0: torch.Tensor,
    x1: torch.Tensor,
    steps: int = 10,
    spherical: bool = False,
    y: int | None = None,
) -> torch.Tensor:
    """Decoded means along a path between the posterior means of two items (model space, one item each).

    A conditional model encodes both items and decodes the path under the one class `y`.
    """
    if steps < 2:
        raise OptionError(f"steps must be >= 2, got {steps}")
    z = model.encode(torch.stack([x0, x1]), _repeat(y, 2)).mean
    path = (slerp if spherical else lerp)(z[0], z[1], steps)
    return model.decode(path, _repeat(y, steps)).mean


def _repeat(y: int | None, n: int) -> torch.Tensor | None:
    return None if y is None else torch.full((n,), int(y), dtype=torch.long)


@torch.no_grad()
def traverse(
    model: LatentVariableModel,
    x: torch.Tensor,
    dims: list[int],
    extent: float = 3.0,
    steps: int = 9,
    y: int | None = None,
) -> torch.Tensor:
    """For each latent dimension in `dims`, vary it from -extent to +extent (prior stddevs), others fixed.

    Returns decoded means of shape (len(dims), steps, *item_shape).
    """
    bad = [d for d in dims if not 0 <= d < model.latent_dim]
    if bad:
        raise OptionError(
            f"latent dimension {bad[0]} is out of range: the model has {model.latent_dim} (0..{model.latent_dim - 1})"
        )
    if steps < 2 or extent <= 0:
        raise OptionError(f"a traversal needs steps >= 2 and range > 0, got steps={steps}, range={extent}")
    z = model.encode(x.unsqueeze(0), _repeat(y, 1)).mean[0]
    values = torch.linspace(-extent, extent, steps)
    grid = z.repeat(len(dims), steps, 1)
    for row, d in enumerate(dims):
        grid[row, :, d] = values
    return model.decode(grid.flatten(0, 1), _repeat(y, len(dims) * steps)).mean.view(len(dims), steps, *x.shape)


@torch.no_grad()
def attribute_vector(
    model: LatentVariableModel, x: torch.Tensor, has_attribute: torch.Tensor, y: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean latent of items with the attribute minus that of items without (White, 2016)."""
    if has_attribute.all() or not has_attribute.any():
        raise OptionError("an attribute vector needs items both with and without the attribute")
    z = model.encode(x, y).mean
    return z[has_attribute].mean(0) - z[~has_attribute].mean(0)
