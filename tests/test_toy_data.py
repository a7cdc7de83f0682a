"""Toy 2-D data: shapes, seeding, and known-answer checks of the distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from pyroflows.data import TOY_DATASETS, checkerboard, circles, eight_gaussians, moons, toy


@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_shape_dtype_and_finite(name):
    x = toy(name, 1000, seed=3)
    assert x.shape == (1000, 2)
    assert x.dtype == torch.get_default_dtype()
    assert torch.isfinite(x).all()


@pytest.mark.parametrize("name", sorted(TOY_DATASETS))
def test_seed_reproducibility(name):
    make = TOY_DATASETS[name]
    assert torch.equal(make(500, seed=7), make(500, seed=7))
    assert torch.equal(toy(name, 500, seed=7), make(500, seed=7))
    assert not torch.equal(make(500, seed=7), make(500, seed=8))
    # A torch.Generator works as a seed, and the global RNG is neither used nor changed.
    state = torch.random.get_rng_state()
    assert torch.equal(make(500, torch.Generator().manual_seed(7)), make(500, seed=7))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown toy data set 'swissroll'"):
        toy("swissroll", 10)
    for n in (0, -1, 2.5):
        with pytest.raises(ValueError, match="positive integer"):
            moons(n)


def test_checkerboard_is_uniform_on_eight_of_sixteen_squares():
    n = 40_000
    x = checkerboard(n, seed=0).double().numpy()
    assert np.all(np.abs(x) <= 4)
    cells = np.floor((x + 4) / 2).astype(int).clip(0, 3)  # 4 x 4 squares of side 2
    counts = np.zeros((4, 4), dtype=int)
    np.add.at(counts, (cells[:, 0], cells[:, 1]), 1)
    occupied = counts > 0
    assert occupied.sum() == 8
    # The occupied squares form a checkerboard: neighbours never both occupied.
    i, j = np.indices((4, 4))
    parity = (i + j) % 2
    assert np.all(occupied == (parity == parity[occupied][0]))
    # Uniform over the 8 squares (chi-square), and uniform inside each one.
    assert stats.chisquare(counts[occupied]).pvalue > 1e-3
    within = (x + 4) / 2 - cells
    assert stats.kstest(within.ravel(), "uniform").pvalue > 1e-3


def test_eight_gaussians_component_means_and_spread():
    n, radius, std = 32_000, 2.0, 0.2
    x = eight_gaussians(n, seed=1, radius=radius, std=std).double().numpy()
    angles = np.arange(8) * 2 * math.pi / 8
    centres = radius * np.stack([np.cos(angles), np.sin(angles)], 1)
    label = np.argmin(((x[:, None, :] - centres[None]) ** 2).sum(-1), 1)
    counts = np.bincount(label, minlength=8)
    assert stats.chisquare(counts).pvalue > 1e-3
    for k in range(8):
        points = x[label == k]
        standard_error = std / math.sqrt(len(points))
        np.testing.assert_allclose(points.mean(0), centres[k], atol=5 * standard_error)
        np.testing.assert_allclose(points.std(0), std, rtol=0.05)


def test_moons_and_circles_geometry():
    x = moons(20_000, seed=2).double().numpy()
    np.testing.assert_allclose(x.mean(0), [0.0, 0.0], atol=0.03)  # centred by construction
    r = np.hypot(*circles(20_000, seed=2).double().numpy().T)
    inner = np.abs(r - 1) < 0.4
    outer = np.abs(r - 2) < 0.4
    assert np.all(inner | outer)
    assert abs(inner.mean() - 0.5) < 0.02
