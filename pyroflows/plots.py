"""Matplotlib figures for flows and destructors: densities, samples, layer-by-layer pictures and
learning curves.

Every function takes an optional ``ax`` (or a sequence of axes) to draw into and returns the
Axes (one panel) or the Figure (several panels). Nothing here calls ``plt.show()`` or picks a
backend, so the functions work the same in notebooks, scripts and headless runs (``Agg``).
Flows are evaluated under ``torch.no_grad()`` on their own device and dtype, in chunks.

Example:
    >>> import pyroflows, pyroflows.plots
    >>> flow = pyroflows.flows.build("nsf", 2, transforms=1, hidden=(8,))
    >>> ax = pyroflows.plots.plot_density(flow, bounds=(-3, 3, -3, 3), resolution=50)
    >>> ax.images[0].get_array().shape
    (50, 50)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["plot_density", "plot_layers", "plot_loglik_curve", "plot_samples"]

_CHUNK = 16384
Bounds = Sequence[float] | Sequence[Sequence[float]]


# -- helpers -----------------------------------------------------------------------------------


def _pyplot():  # noqa: ANN202
    import matplotlib.pyplot as plt

    return plt


def _device_dtype(modules: Iterable[Any]) -> tuple[torch.device, torch.dtype]:
    for module in modules:
        if isinstance(module, nn.Module):
            for tensor in [*module.parameters(), *module.buffers()]:
                if tensor.is_floating_point():
                    return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def _numpy(x: Any, name: str, columns: int | None = None) -> np.ndarray:
    array = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 2 or (columns is not None and array.shape[1] != columns):
        want = f"(n, {columns})" if columns is not None else "(n, features)"
        raise ValueError(f"{name} must have shape {want}, got {array.shape}")
    return array


def _subset(total: int, n: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of a fixed random subset of at most ``n`` of ``total`` items."""
    if n is None or total <= n:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, n, replace=False))


def _subsample(array: np.ndarray, n: int | None, seed: int = 0) -> np.ndarray:
    return array[_subset(len(array), n, seed)]


def _limits(points: np.ndarray, pad: float = 0.1, q: float = 0.005) -> tuple[tuple[float, float], ...]:
    """Axis limits covering the central ``1 - 2q`` of each column, padded by ``pad``."""
    finite = points[np.isfinite(points).all(1)]
    if len(finite) == 0:
        return tuple((-1.0, 1.0) for _ in range(points.shape[1]))
    low, high = np.quantile(finite, [q, 1 - q], axis=0)
    span = np.maximum(high - low, 1e-6 * np.maximum(1.0, np.abs(high)))
    return tuple((float(a - pad * s), float(b + pad * s)) for a, b, s in zip(low, high, span))


def _bounds(bounds: Bounds) -> tuple[tuple[float, float], tuple[float, float]]:
    flat = np.asarray(bounds, dtype=np.float64).reshape(-1)
    if flat.shape != (4,) or not np.isfinite(flat).all() or flat[0] >= flat[1] or flat[2] >= flat[3]:
        raise ValueError(
            f"bounds must be (xmin, xmax, ymin, ymax) or ((xmin, xmax), (ymin, ymax)) with "
            f"min < max, got {bounds!r}"
        )
    return (float(flat[0]), float(flat[1])), (float(flat[2]), float(flat[3]))


def _context(context: Any, flow: nn.Module, device: torch.device, dtype: torch.dtype) -> Tensor | None:
    """One context vector for a conditional flow, as a (1, c) tensor."""
    wanted = getattr(flow, "context_features", 0)
    if not wanted:
        if context is not None:
            raise ValueError("this flow takes no context (it was built with context=0)")
        return None
    if context is None:
        raise ValueError(f"this flow is conditional: pass one context of {wanted} values")
    c = torch.as_tensor(context, device=device, dtype=dtype).reshape(-1)
    if c.shape[0] != wanted:
        raise ValueError(f"context must hold {wanted} values, got shape {tuple(torch.as_tensor(context).shape)}")
    return c[None]


@torch.no_grad()
def _sample(flow: nn.Module, n: int, context: Any, seed: int | None) -> np.ndarray:
    device, dtype = _device_dtype([flow])
    c = _context(context, flow, device, dtype)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        distribution = flow(c)
        chunks = []
        for start in range(0, n, _CHUNK):
            x = distribution.sample((min(_CHUNK, n - start),))
            chunks.append(x.reshape(x.shape[0], -1))
    return torch.cat(chunks).double().cpu().numpy()


def _new_axes(ax: Any, count: int, size: float = 3.2, cols: int | None = None):  # noqa: ANN202
    """``count`` axes: the given ones (one Axes or a sequence), or a new figure's."""
    if ax is not None:
        axes = list(np.ravel(ax)) if isinstance(ax, (Sequence, np.ndarray)) else [ax]
        if len(axes) < count:
            raise ValueError(f"this figure needs {count} axes, got {len(axes)}")
        return axes[0].figure, axes[:count]
    cols = min(count, cols or count)
    rows = math.ceil(count / cols)
    fig, grid = _pyplot().subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False,
                                   layout="constrained")
    grid = list(grid.ravel())
    for extra in grid[count:]:
        fig.delaxes(extra)
    return fig, grid[:count]


def _scatter(ax: Any, points: np.ndarray, dims: Sequence[int], **kwargs: Any) -> None:
    options = {"s": 2, "alpha": 0.5, "linewidths": 0, "rasterized": True}
    options.update(kwargs)
    ax.scatter(points[:, dims[0]], points[:, dims[1]], **options)


# -- public figures ------------------------------------------------------------------------------


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
    device, dtype = _device_dtype([flow])
    points = None if data is None else _numpy(data, "data", 2)
    if bounds is None:
        reference = points if points is not None else _sample(flow, 2000, context, seed=0)
        (x0, x1), (y0, y1) = _limits(reference)
    else:
        (x0, x1), (y0, y1) = _bounds(bounds)
    xs = torch.linspace(x0, x1, resolution, device=device, dtype=torch.float64)
    ys = torch.linspace(y0, y1, resolution, device=device, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1).reshape(-1, 2).to(dtype)
    c = _context(context, flow, device, dtype)
    distribution = flow(c)
    log_prob = torch.cat([distribution.log_prob(chunk) for chunk in grid.split(_CHUNK)])
    log_prob = log_prob.double().reshape(resolution, resolution).cpu().numpy()
    if log:
        finite = log_prob[np.isfinite(log_prob)]
        top = finite.max() if finite.size else 0.0
        image = np.clip(np.nan_to_num(log_prob, nan=top - 12, neginf=top - 12), top - 12, top)
    else:
        image = np.nan_to_num(np.exp(log_prob), nan=0.0, posinf=0.0)
    if ax is None:
        _, ax = _pyplot().subplots(figsize=(4.5, 4), layout="constrained")
    ax.imshow(image, origin="lower", extent=(x0, x1, y0, y1), aspect="auto", cmap=cmap,
              interpolation="nearest")
    if points is not None:
        _scatter(ax, _subsample(points, max_points), (0, 1), s=1.5, c="white", alpha=0.35)
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
    samples = _sample(flow, n, context, seed)
    points = None if data is None else _numpy(data, "data", features)
    together = ax is not None and not isinstance(ax, (Sequence, np.ndarray))
    panels = 1 if together or points is None else 2
    fig, axes = _new_axes(ax, panels, size=3.6)
    limits = _limits(np.concatenate([samples, points]) if points is not None else samples)
    if panels == 2:
        _scatter(axes[0], points, dims, c="C0")
        axes[0].set_title(f"data ({len(points)})")
    elif points is not None:
        _scatter(axes[0], points, dims, c="0.6", label="data")
    _scatter(axes[-1], samples, dims, c="C1", label="samples" if points is not None else None)
    axes[-1].set_title(f"samples ({n})")
    if panels == 1 and points is not None:
        axes[0].legend(markerscale=5, loc="upper right")
    for a in axes:
        a.set_xlim(*limits[dims[0]])
        a.set_ylim(*limits[dims[1]])
    return fig


def _colours(points: np.ndarray, color_by: str) -> tuple[np.ndarray, str]:
    centred = points - np.median(points, axis=0)
    if color_by == "angle":
        return np.arctan2(centred[:, 1], centred[:, 0]), "hsv"
    if color_by == "radius":
        return np.argsort(np.argsort(np.hypot(centred[:, 0], centred[:, 1]))), "viridis"
    if color_by in ("x", "y"):
        return np.argsort(np.argsort(points[:, "xy".index(color_by)])), "viridis"
    raise ValueError(f"color_by must be 'angle', 'radius', 'x', 'y' or an array, got {color_by!r}")


def _steps(transforms: Any, direction: str) -> list[tuple[str, Callable[..., Tensor], Any]]:
    """(name, function of (x, context), the object) for each layer, in data->base order."""
    if direction not in ("inverse", "forward"):
        raise ValueError(f"direction must be 'inverse' or 'forward', got {direction!r}")
    for attribute in ("transforms", "parts", "layers"):  # a Flow, a Compose, a deep destructor
        inner = getattr(transforms, attribute, None)
        if isinstance(transforms, nn.Module) and isinstance(inner, (nn.ModuleList, list, tuple)):
            transforms = inner
            break
    parts = list(transforms) if isinstance(transforms, Iterable) else [transforms]
    if not parts:
        raise ValueError("plot_layers needs at least one transform")
    if direction == "inverse":
        parts = parts[::-1]
    method = "inverse_and_ladj" if direction == "inverse" else "call_and_ladj"
    steps = []
    for part in parts:
        name = type(part).__name__
        if hasattr(part, method):
            fn = getattr(part, method)
            conditional = getattr(part, "context_features", 0) > 0

            def step(x: Tensor, c: Tensor | None, fn: Callable = fn, conditional: bool = conditional) -> Tensor:
                return (fn(x, c) if conditional else fn(x))[0]

        elif direction == "inverse" and hasattr(part, "inv"):

            def step(x: Tensor, c: Tensor | None, part: Any = part) -> Tensor:
                return part.inv(x)

        elif direction == "forward" and callable(part):

            def step(x: Tensor, c: Tensor | None, part: Any = part) -> Tensor:
                return part(x)

        else:
            raise TypeError(
                f"{name} has no {method} (nor {'inv' if direction == 'inverse' else '__call__'}); "
                "plot_layers takes Bijections or callables mapping data towards the base"
            )
        steps.append((name, step, part))
    return steps


@torch.no_grad()
def plot_layers(
    transforms: Any,
    data: Any,
    direction: str = "inverse",
    context: Any = None,
    color_by: str | np.ndarray = "angle",
    titles: Sequence[str] | None = None,
    cols: int | None = None,
    max_points: int | None = 3000,
    ax: Any = None,
) -> Any:
    """The layer-by-layer picture of a flow or destructor: 2-D data before and after each layer,
    mapped from the data side towards the base (or the unit cube).

    Each point keeps its colour in every panel (by default the angle of the point around the
    data's median, on a cyclic colour map), so one can follow where each part of the data
    goes, as in the density-destructor figures of Inouye & Ravikumar (2018).

    Args:
        transforms: the layers. With ``direction="inverse"`` (flows): a
            :class:`~pyroflows.Flow`, a ``Compose``, or a sequence of
            :class:`~pyroflows.transforms.Bijection` listed **base side first** (as
            ``flow.transforms``); each is applied with ``inverse_and_ladj`` (or ``.inv``),
            starting from the data end. With ``direction="forward"`` (destructors): a sequence
            listed **data side first**, each applied with ``call_and_ladj`` when it has one,
            else called as a function ``x -> y``.
        data: points (n, 2).
        direction: ``"inverse"`` or ``"forward"``, as above.
        context: one context vector (c,) shared by all points, or one per point (n, c), for
            conditional layers.
        color_by: ``"angle"``, ``"radius"``, ``"x"``, ``"y"`` (ranks in the original data) or
            an array of n values.
        titles: one title per panel (layers + 1); default: ``data``, then the layer classes.
        cols: panels per row (default: all in one row up to 5, else rows of 4).
        max_points: at most this many points are drawn (a fixed random subset).
        ax: a sequence of (layers + 1) axes to draw into.

    Returns:
        The Figure; panel ``k`` holds the points after ``k`` layers (``collections[0]``).
    """
    steps = _steps(transforms, direction)
    everything = _numpy(data, "data")
    if everything.shape[1] != 2:
        raise ValueError(f"plot_layers draws 2-D data; got {everything.shape[1]} features")
    index = _subset(len(everything), max_points)
    points = everything[index]
    if isinstance(color_by, str):
        colours, cmap = _colours(points, color_by)
    else:
        values = np.asarray(color_by, dtype=np.float64).reshape(-1)
        if values.shape[0] != len(everything):
            raise ValueError(f"color_by has {values.shape[0]} values for {len(everything)} points")
        colours, cmap = values[index], "viridis"
    device, dtype = _device_dtype(part for _, _, part in steps)
    x = torch.as_tensor(points, device=device, dtype=dtype)
    c = None
    if context is not None:
        c = torch.as_tensor(context).to(device=device, dtype=dtype)
        if c.dim() <= 1:
            c = c.reshape(1, -1).expand(len(points), -1)
        elif c.shape[0] == len(everything):
            c = c[torch.as_tensor(index, device=device)]
        else:
            raise ValueError(f"context must be one vector or one row per point, got {tuple(c.shape)}")
    stages = [points]
    for name, step, _ in steps:
        try:
            x = step(x, c)
        except Exception as error:
            raise RuntimeError(f"layer {len(stages)} ({name}) failed: {error}") from error
        stages.append(x.double().cpu().numpy().reshape(len(points), -1))
    count = len(stages)
    if titles is None:
        titles = ["data"] + [f"{k}: {name}" for k, (name, _, _) in enumerate(steps, 1)]
    elif len(titles) != count:
        raise ValueError(f"titles must have {count} entries (layers + 1), got {len(titles)}")
    fig, axes = _new_axes(ax, count, size=2.8, cols=cols or (count if count <= 5 else 4))
    for a, stage, title in zip(axes, stages, titles):
        _scatter(a, stage, (0, 1), c=colours, cmap=cmap, alpha=0.8, s=2.5)
        (x0, x1), (y0, y1) = _limits(stage, pad=0.05, q=0.0025)
        a.set_xlim(x0, x1)
        a.set_ylim(y0, y1)
        a.set_title(title, fontsize=9)
        a.tick_params(labelsize=7)
    return fig


def plot_loglik_curve(history: Any, ax: Any = None) -> Any:
    """Train and validation log-likelihood per epoch (or per layer, for deep destructors).

    Args:
        history: a list of dicts with ``train_loglik`` and/or ``val_loglik`` and, for the x
            axis, ``epoch`` or ``layer`` (else the position in the list); or an object with
            such a ``history`` attribute (a :class:`~pyroflows.infer.FitResult`).
        ax: axes to draw into (default: a new figure).

    Returns:
        The Axes, with one line per quantity present (``train``, ``validation``) and a marker
        at the best validation value.

    Example:
        >>> ax = plot_loglik_curve([{"epoch": 1, "train_loglik": -2.0, "val_loglik": -2.1},
        ...                         {"epoch": 2, "train_loglik": -1.5, "val_loglik": -1.6}])
        >>> [line.get_label() for line in ax.get_lines()[:2]]
        ['train', 'validation']
    """
    rows = getattr(history, "history", history)
    rows = list(rows) if rows is not None else []
    if not rows or not all(isinstance(r, Mapping) for r in rows):
        raise ValueError("history must be a non-empty list of dicts (or a FitResult)")
    xkey = next((k for k in ("epoch", "layer") if all(k in r for r in rows)), None)
    xs = np.array([r[xkey] for r in rows] if xkey else np.arange(len(rows)), dtype=np.float64)
    series = {}
    for key, label in (("train_loglik", "train"), ("val_loglik", "validation")):
        ys = np.array([float(r.get(key, np.nan)) for r in rows])
        if np.isfinite(ys).any():
            series[label] = ys
    if not series:
        raise ValueError("history has no finite 'train_loglik' or 'val_loglik' values")
    if ax is None:
        _, ax = _pyplot().subplots(figsize=(4.5, 3.2), layout="constrained")
    marker = "o" if len(rows) <= 30 else None
    for label, ys in series.items():
        ax.plot(xs, ys, marker=marker, markersize=3, label=label)
    if "validation" in series:
        ys = series["validation"]
        best = int(np.nanargmax(ys))
        ax.plot([xs[best]], [ys[best]], "k*", markersize=9, label=f"best ({ys[best]:.3f})")
    ax.set_xlabel(xkey or "step")
    ax.set_ylabel("log-likelihood (nats / point)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax
