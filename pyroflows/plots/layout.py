"""Axes, axis limits and point arrays for the figures: what every plotting function shares.

Nothing here picks a backend or calls ``plt.show()``; pyplot is imported only when a new figure
is asked for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

__all__ = [
    "Bounds",
    "as_points",
    "axis_limits",
    "check_bounds",
    "new_axes",
    "pyplot",
    "scatter",
    "subset",
]

Bounds = Sequence[float] | Sequence[Sequence[float]]


def pyplot():  # noqa: ANN201
    """``matplotlib.pyplot``, imported on first use."""
    import matplotlib.pyplot as plt

    return plt


def as_points(x: Any, name: str, columns: int | None = None) -> np.ndarray:
    """``x`` (a tensor or array-like) as a float64 array (n, columns); ValueError naming ``name``
    when it has another shape."""
    array = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 2 or (columns is not None and array.shape[1] != columns):
        want = f"(n, {columns})" if columns is not None else "(n, features)"
        raise ValueError(f"{name} must have shape {want}, got {array.shape}")
    return array


def subset(total: int, n: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of a fixed random subset of at most ``n`` of ``total`` items.

    Example:
        >>> subset(5, None).tolist(), len(subset(1000, 10))
        ([0, 1, 2, 3, 4], 10)
    """
    if n is None or total <= n:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, n, replace=False))


def axis_limits(
    points: np.ndarray, pad: float = 0.1, q: float = 0.005
) -> tuple[tuple[float, float], ...]:
    """Axis limits, one ``(low, high)`` per column of ``points`` (n, d), covering the central
    ``1 - 2q`` of each column, padded by ``pad`` times its span."""
    finite = points[np.isfinite(points).all(1)]
    if len(finite) == 0:
        return tuple((-1.0, 1.0) for _ in range(points.shape[1]))
    low, high = np.quantile(finite, [q, 1 - q], axis=0)
    span = np.maximum(high - low, 1e-6 * np.maximum(1.0, np.abs(high)))
    return tuple((float(a - pad * s), float(b + pad * s)) for a, b, s in zip(low, high, span))


def check_bounds(bounds: Bounds) -> tuple[tuple[float, float], tuple[float, float]]:
    """``((xmin, xmax), (ymin, ymax))`` from either accepted spelling; ValueError otherwise."""
    flat = np.asarray(bounds, dtype=np.float64).reshape(-1)
    if (
        flat.shape != (4,)
        or not np.isfinite(flat).all()
        or flat[0] >= flat[1]
        or flat[2] >= flat[3]
    ):
        raise ValueError(
            f"bounds must be (xmin, xmax, ymin, ymax) or ((xmin, xmax), (ymin, ymax)) with "
            f"min < max, got {bounds!r}"
        )
    return (float(flat[0]), float(flat[1])), (float(flat[2]), float(flat[3]))


def new_axes(ax: Any, count: int, size: float = 3.2, cols: int | None = None):  # noqa: ANN201
    """``(figure, count axes)``: the given ones (one Axes or a sequence), or a new figure's."""
    if ax is not None:
        axes = list(np.ravel(ax)) if isinstance(ax, (Sequence, np.ndarray)) else [ax]
        if len(axes) < count:
            raise ValueError(f"this figure needs {count} axes, got {len(axes)}")
        return axes[0].figure, axes[:count]
    cols = min(count, cols or count)
    rows = math.ceil(count / cols)
    fig, grid = pyplot().subplots(
        rows, cols, figsize=(size * cols, size * rows), squeeze=False, layout="constrained"
    )
    grid = list(grid.ravel())
    for extra in grid[count:]:
        fig.delaxes(extra)
    return fig, grid[:count]


def scatter(ax: Any, points: np.ndarray, dims: Sequence[int], **kwargs: Any) -> None:
    """Small rasterised dots of columns ``dims`` of ``points``; ``kwargs`` override the style."""
    options = {"s": 2, "alpha": 0.5, "linewidths": 0, "rasterized": True}
    options.update(kwargs)
    ax.scatter(points[:, dims[0]], points[:, dims[1]], **options)
