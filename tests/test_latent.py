"""Latent-space tools: interpolation paths, traversals, attribute vectors."""

import pytest
import torch

from vaekit import latent
from vaekit.errors import OptionError


def test_lerp_and_slerp_paths():
    z0, z1 = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0])
    straight, round_ = latent.lerp(z0, z1, 5), latent.slerp(z0, z1, 5)
    for path in (straight, round_):
        assert torch.allclose(path[0], z0) and torch.allclose(path[-1], z1, atol=1e-6)
    assert torch.allclose(round_.norm(dim=1), torch.full((5,), 3.0), atol=1e-5)  # stays on the sphere
    assert straight[2].norm() < 2.2  # a straight line cuts inside it
    assert torch.allclose(latent.slerp(z0, 2 * z0, 3), latent.lerp(z0, 2 * z0, 3))  # parallel: no division by 0


def test_traverse_varies_one_dimension_at_a_time(tiny_run):
    model = tiny_run.model
    x = model.prepare(torch.zeros(1, 1, 8, 8))[0]
    grid = latent.traverse(model, x, [0, 2], extent=2.0, steps=3)
    assert grid.shape == (2, 3, 1, 8, 8)
    with pytest.raises(OptionError, match="latent dimension 7 is out of range"):
        latent.traverse(model, x, [7])


def test_attribute_vector_is_the_difference_of_class_means(tiny_run):
    model = tiny_run.model
    x = model.prepare(torch.randint(0, 17, (10, 1, 8, 8), generator=torch.Generator().manual_seed(0)))
    has = torch.tensor([True] * 4 + [False] * 6)
    z = model.encode(x).mean
    expected = z[:4].mean(0) - z[4:].mean(0)
    assert torch.allclose(latent.attribute_vector(model, x, has), expected)
    with pytest.raises(OptionError, match="both with and without"):
        latent.attribute_vector(model, x, torch.ones(10, dtype=torch.bool))
