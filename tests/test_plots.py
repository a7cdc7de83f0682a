"""Figures: panels, contents and both directions of plot_layers (matplotlib's Agg backend)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from helpers import perturb

import pyroflows
from pyroflows import plots
from pyroflows.data import toy
from pyroflows.infer import FitResult
from pyroflows.transforms import ElementwiseAffine, Inverse

plt.switch_backend("Agg")


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def data() -> torch.Tensor:
    return toy("moons", 600, seed=0)


@pytest.fixture
def flow(data, device) -> pyroflows.Flow:
    torch.manual_seed(0)
    flow = pyroflows.flows.build("realnvp", 2, transforms=2, hidden=(8, 8), standardize=data)
    return perturb(flow, 0.05).to(device)


def offsets(ax) -> np.ndarray:  # noqa: ANN001
    return np.asarray(ax.collections[0].get_offsets())


def test_plot_density_is_a_normalised_density(flow):
    ax = plots.plot_density(flow, bounds=((-8, 8), (-6, 6)), resolution=241)
    image = np.asarray(ax.images[0].get_array())
    assert image.shape == (241, 241)
    assert np.all(image >= 0)
    cell = (16 / 240) * (12 / 240)
    assert image.sum() * cell == pytest.approx(1.0, abs=0.02)
    # Rows run along y: the pixel nearest a point holds that point's density.
    point = torch.tensor([[1.0, -0.5]])
    expected = flow().log_prob(point.to(next(flow.parameters()))).exp().item()
    row, col = (
        np.argmin(np.abs(np.linspace(-6, 6, 241) - -0.5)),
        np.argmin(np.abs(np.linspace(-8, 8, 241) - 1.0)),
    )
    assert image[row, col] == pytest.approx(expected, rel=0.05)


def test_plot_density_bounds_from_data_overlay_and_log(flow, data):
    fig, ax = plt.subplots()
    out = plots.plot_density(flow, data=data, resolution=20, ax=ax, log=True)
    assert out is ax and len(ax.images) == 1 and len(ax.collections) == 1
    x0, x1 = ax.get_xlim()
    assert x0 < float(data[:, 0].min()) + 0.5 and x1 > float(data[:, 0].max()) - 0.5
    assert np.isfinite(np.asarray(ax.images[0].get_array())).all()


def test_plot_density_without_data_or_bounds_uses_samples(flow):
    ax = plots.plot_density(flow, resolution=10)
    assert ax.images[0].get_array().shape == (10, 10)


def test_plot_density_errors(flow):
    with pytest.raises(ValueError, match="bounds"):
        plots.plot_density(flow, bounds=(1, 0, 0, 1))
    with pytest.raises(ValueError, match="takes no context"):
        plots.plot_density(flow, bounds=(0, 1, 0, 1), context=torch.zeros(1))
    with pytest.raises(ValueError, match="2-D flows"):
        plots.plot_density(pyroflows.flows.build("maf", 3, transforms=1, hidden=(4,)))


def test_plot_density_conditional(device):
    flow = pyroflows.flows.build("maf", 2, context=1, transforms=1, hidden=(8,)).to(device)
    ax = plots.plot_density(flow, bounds=(-3, 3, -3, 3), resolution=16, context=[0.5])
    assert ax.images[0].get_array().shape == (16, 16)
    with pytest.raises(ValueError, match="conditional"):
        plots.plot_density(flow, bounds=(-3, 3, -3, 3))


def test_plot_samples_panels(flow, data):
    fig = plots.plot_samples(flow, n=300, data=data)
    assert len(fig.axes) == 2
    assert offsets(fig.axes[0]).shape == (600, 2) and offsets(fig.axes[1]).shape == (300, 2)
    assert fig.axes[0].get_xlim() == fig.axes[1].get_xlim()
    # Seeded samples are reproducible and leave the global RNG alone.
    state = torch.random.get_rng_state()
    again = plots.plot_samples(flow, n=300, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    np.testing.assert_allclose(offsets(again.axes[0]), offsets(fig.axes[1]))
    # One axes: data and samples together.
    _, ax = plt.subplots()
    plots.plot_samples(flow, n=50, data=data, ax=ax)
    assert len(ax.collections) == 2


def test_plot_layers_inverse_follows_the_flow(flow, data):
    fig = plots.plot_layers(flow, data)
    assert len(fig.axes) == len(flow.transforms) + 1
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "data" and "ElementwiseAffine" in titles[1]  # data end first
    np.testing.assert_allclose(offsets(fig.axes[0]), data.double().numpy(), atol=1e-6)
    with torch.no_grad():
        z = flow.transform().inv(data.to(next(flow.parameters()))).double().cpu().numpy()
    np.testing.assert_allclose(offsets(fig.axes[-1]), z, atol=1e-5)
    # Colours are attached to points, identical in every panel.
    colours = [ax.collections[0].get_array() for ax in fig.axes]
    for c in colours[1:]:
        np.testing.assert_array_equal(c, colours[0])


def test_plot_layers_forward_for_destructor_like_layers(data):
    # Destructor-style layers listed data side first, mapping data forward to the unit square:
    # a Bijection's call_and_ladj, then plain callables.
    standardise = Inverse(ElementwiseAffine.from_data(data.double()))
    layers = [standardise, torch.special.ndtr, lambda u: u.clamp(0, 1)]
    fig = plots.plot_layers(layers, data, direction="forward", color_by="x", max_points=None)
    assert len(fig.axes) == 4
    u = offsets(fig.axes[-1])
    assert u.min() >= 0 and u.max() <= 1
    expected = torch.special.ndtr((data.double() - data.double().mean(0)) / data.double().std(0))
    np.testing.assert_allclose(u, expected.numpy(), atol=1e-5)


def test_plot_layers_subsets_options_and_errors(flow, data):
    fig = plots.plot_layers(
        list(flow.transforms), data, max_points=100, titles=list("abcd"), cols=2
    )
    assert len(fig.axes) == 4 and offsets(fig.axes[0]).shape == (100, 2)
    assert [ax.get_title() for ax in fig.axes] == list("abcd")
    _, axes = plt.subplots(1, 4)
    assert plots.plot_layers(flow, data, ax=axes, color_by=np.arange(600)) is axes[0].figure
    with pytest.raises(ValueError, match="direction"):
        plots.plot_layers(flow, data, direction="backward")
    with pytest.raises(ValueError, match="color_by"):
        plots.plot_layers(flow, data, color_by="hue")
    with pytest.raises(ValueError, match="titles"):
        plots.plot_layers(flow, data, titles=["a"])
    with pytest.raises(TypeError, match="call_and_ladj"):
        plots.plot_layers([object()], data, direction="forward")
    with pytest.raises(ValueError, match="2-D data"):
        plots.plot_layers(flow, torch.zeros(5, 3))


def test_plot_loglik_curve():
    history = [
        {"layer": k, "train_loglik": -3 + k / 2, "val_loglik": -3.1 + k / 3 - (k == 4)}
        for k in range(5)
    ]
    ax = plots.plot_loglik_curve(history)
    lines = ax.get_lines()
    assert [line.get_label() for line in lines[:2]] == ["train", "validation"]
    np.testing.assert_array_equal(lines[0].get_xdata(), np.arange(5))
    assert ax.get_xlabel() == "layer"
    best = lines[2]
    assert best.get_xdata()[0] == 3  # the best validation value, marked
    # A FitResult (epochs) and a history without validation.
    result = FitResult(
        history=[
            {"epoch": 1, "train_loglik": -2.0, "val_loglik": float("nan")},
            {"epoch": 2, "train_loglik": -1.0, "val_loglik": float("nan")},
        ]
    )
    ax = plots.plot_loglik_curve(result)
    assert [line.get_label() for line in ax.get_lines()] == ["train"]
    assert ax.get_xlabel() == "epoch"
    with pytest.raises(ValueError, match="non-empty"):
        plots.plot_loglik_curve([])
    with pytest.raises(ValueError, match="no finite"):
        plots.plot_loglik_curve([{"epoch": 1}])


def test_figures_save_with_agg(tmp_path, flow, data):
    fig = plots.plot_layers(flow, data)
    fig.savefig(tmp_path / "layers.png")
    assert (tmp_path / "layers.png").stat().st_size > 1000
