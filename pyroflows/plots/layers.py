"""The layer-by-layer picture of a flow or destructor (Inouye & Ravikumar 2018, https://proceedings.mlr.press/v80/inouye18a.html, figure 1)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .evaluate import device_dtype
from .layout import as_points, axis_limits, new_axes, scatter, subset

__all__ = ["plot_layers"]


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

            def step(
                x: Tensor, c: Tensor | None, fn: Callable = fn, conditional: bool = conditional
            ) -> Tensor:
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
    everything = as_points(data, "data")
    if everything.shape[1] != 2:
        raise ValueError(f"plot_layers draws 2-D data; got {everything.shape[1]} features")
    index = subset(len(everything), max_points)
    points = everything[index]
    if isinstance(color_by, str):
        colours, cmap = _colours(points, color_by)
    else:
        values = np.asarray(color_by, dtype=np.float64).reshape(-1)
        if values.shape[0] != len(everything):
            raise ValueError(f"color_by has {values.shape[0]} values for {len(everything)} points")
        colours, cmap = values[index], "viridis"
    device, dtype = device_dtype(part for _, _, part in steps)
    x = torch.as_tensor(points, device=device, dtype=dtype)
    c = None
    if context is not None:
        c = torch.as_tensor(context).to(device=device, dtype=dtype)
        if c.dim() <= 1:
            c = c.reshape(1, -1).expand(len(points), -1)
        elif c.shape[0] == len(everything):
            c = c[torch.as_tensor(index, device=device)]
        else:
            raise ValueError(
                f"context must be one vector or one row per point, got {tuple(c.shape)}"
            )
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
    fig, axes = new_axes(ax, count, size=2.8, cols=cols or (count if count <= 5 else 4))
    for a, stage, title in zip(axes, stages, titles):
        scatter(a, stage, (0, 1), c=colours, cmap=cmap, alpha=0.8, s=2.5)
        (x0, x1), (y0, y1) = axis_limits(stage, pad=0.05, q=0.0025)
        a.set_xlim(x0, x1)
        a.set_ylim(y0, y1)
        a.set_title(title, fontsize=9)
        a.tick_params(labelsize=7)
    return fig
