"""Learning curves: log-likelihood per epoch of a fit, or per layer of a deep destructor."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .layout import pyplot

__all__ = ["plot_loglik_curve"]


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
        _, ax = pyplot().subplots(figsize=(4.5, 3.2), layout="constrained")
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
