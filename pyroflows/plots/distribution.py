"""Pictures of a 2-D flow's distribution: its density on a grid and its samples next to data."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .evaluate import context_vector, device_dtype, log_prob_in_chunks, sample_flow
from .layout import Bounds, as_points, axis_limits, check_bounds, new_axes, pyplot, scatter, subset

__all__ = ["plot_density", "plot_samples"]


@torch.no_grad()
def plot_density(
    flow: nn.Module,
    data: Any = None,
    bounds: Bounds | None = None,
    resolution: int = 200,
    context: Any = None,
    ax: Any = None,
    cmap: str = "viridis",
    log: bool = False,
    max_points: int = 2000,
) -> Any:
    r"""Heat map of a 2-D flow's density :math:`p(x)` (or :math:`\log p(x)`) on a grid.

    Args:
        flow: a two-feature :class:`~pyroflows.Flow` (anything whose ``flow(context)`` has a
            ``log_prob``).
        data: optional points (n, 2) drawn on top (at most ``max_points`` of them).
        bounds: ``(xmin, xmax, ymin, ymax)``; default: the 0.5%-99.5% quantiles of ``data``
            (or of 2000 flow samples) padded by 10%.
        resolution: grid points per axis.
        context: one context vector for a conditional flow.
        ax: axes to draw into (default: a new figure).
        cmap: colour map.
        log: show :math:`\log p` instead of :math:`p` (clipped 12 nats below its maximum).
        max_points: most data points drawn.

    Returns:
        The Axes; its image holds the density grid (``ax.images[0].get_array()``, rows along y).
    """
    if getattr(flow, "features", 2) != 2:
        raise ValueError(f"plot_density draws 2-D flows; this one has {flow.features} features")
    if not isinstance(resolution, int) or resolution < 2:
        raise ValueError(f"resolution must be an integer >= 2, got {resolution!r}")
    device, dtype = device_dtype([flow])
    points = None if data is None else as_points(data, "data", 2)
    if bounds is None:
        reference = points if points is not None else sample_flow(flow, 2000, context, seed=0)
        (x0, x1), (y0, y1) = axis_limits(reference)
    else:
        (x0, x1), (y0, y1) = check_bounds(bounds)
    xs = torch.linspace(x0, x1, resolution, device=device, dtype=torch.float64)
    ys = torch.linspace(y0, y1, resolution, device=device, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2).to(dtype)
    c = context_vector(context, flow, device, dtype)
    log_prob = log_prob_in_chunks(flow(c), grid).reshape(resolution, resolution).numpy()
    if log:
        finite = log_prob[np.isfinite(log_prob)]
        top = finite.max() if finite.size else 0.0
        image = np.clip(np.nan_to_num(log_prob, nan=top - 12, neginf=top - 12), top - 12, top)
    else:
        image = np.nan_to_num(np.exp(log_prob), nan=0.0, posinf=0.0)
    if ax is None:
        _, ax = pyplot().subplots(figsize=(4.5, 4), layout="constrained")
    ax.imshow(
        image,
        origin="lower",
        extent=(x0, x1, y0, y1),
        aspect="auto",
        cmap=cmap,
        interpolation="nearest",
    )
    if points is not None:
        scatter(ax, points[subset(len(points), max_points)], (0, 1), s=1.5, c="white", alpha=0.35)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_title("log density" if log else "density")
    return ax


def plot_samples(
    flow: nn.Module,
    n: int = 2000,
    data: Any = None,
    context: Any = None,
    ax: Any = None,
    seed: int | None = 0,
    dims: Sequence[int] = (0, 1),
) -> Any:
    """Samples of a flow next to data, as scatter plots of two coordinates.

    With ``data`` and no ``ax``: a new figure with two panels (data, samples) sharing their
    limits. With one Axes: samples (and data, in grey) drawn together on it. With two Axes:
    data on the first, samples on the second.

    Args:
        flow: a :class:`~pyroflows.Flow`.
        n: number of samples.
        data: optional reference points (m, features).
        context: one context vector for a conditional flow.
        ax: an Axes, a pair of Axes, or ``None``.
        seed: seed of the samples (``None``: torch's global RNG); the global RNG is untouched.
        dims: the two coordinates drawn.

    Returns:
        The Figure.
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    features = getattr(flow, "features", 2)
    dims = tuple(dims)
    if len(dims) != 2 or not all(0 <= d < features for d in dims):
        raise ValueError(f"dims must be two coordinates in [0, {features}), got {dims}")
    samples = sample_flow(flow, n, context, seed)
    points = None if data is None else as_points(data, "data", features)
    together = ax is not None and not isinstance(ax, (Sequence, np.ndarray))
    panels = 1 if together or points is None else 2
    fig, axes = new_axes(ax, panels, size=3.6)
    limits = axis_limits(np.concatenate([samples, points]) if points is not None else samples)
    if panels == 2:
        scatter(axes[0], points, dims, c="C0")
        axes[0].set_title(f"data ({len(points)})")
    elif points is not None:
        scatter(axes[0], points, dims, c="0.6", label="data")
    scatter(axes[-1], samples, dims, c="C1", label="samples" if points is not None else None)
    axes[-1].set_title(f"samples ({n})")
    if panels == 1 and points is not None:
        axes[0].legend(markerscale=5, loc="upper right")
    for a in axes:
        a.set_xlim(*limits[dims[0]])
        a.set_ylim(*limits[dims[1]])
    return fig
