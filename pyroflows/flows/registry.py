"""The flow registry: presets by paper name, ``build``, ``available``, ``save`` and ``load``."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core import Flow
from ..transforms import ElementwiseAffine

__all__ = ["available", "build", "check_transforms", "load", "register", "save"]

_PRESETS: dict[str, Callable[..., Flow]] = {}
FORMAT = "pyroflows-flow/1"


def register(name: str) -> Callable[[Callable[..., Flow]], Callable[..., Flow]]:
    """Decorator adding a preset ``preset(features, context=0, **options) -> Flow`` under ``name``."""

    def decorator(preset: Callable[..., Flow]) -> Callable[..., Flow]:
        if name in _PRESETS:
            raise ValueError(f"a flow named {name!r} is already registered")
        _PRESETS[name] = preset
        return preset

    return decorator


def check_transforms(transforms: int) -> None:
    """The presets' shared check of their ``transforms`` option (number of layers)."""
    if not isinstance(transforms, int) or isinstance(transforms, bool) or transforms < 1:
        raise ValueError(f"transforms must be a positive integer, got {transforms!r}")


def available() -> list[str]:
    """Names of the registered flow presets, sorted."""
    return sorted(_PRESETS)


def preset(name: str) -> Callable[..., Flow]:
    """The preset function registered under ``name`` (its docstring documents the options)."""
    try:
        return _PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown flow {name!r}; available: {', '.join(available())}") from None


def build(
    name: str,
    features: int,
    context: int = 0,
    standardize: Tensor | np.ndarray | None = None,
    **options: Any,
) -> Flow:
    """Build the preset ``name`` for ``features``-dimensional data.

    Args:
        name: a registry name (see :func:`available`), e.g. ``"nsf"``, ``"maf"``.
        features: data dimension :math:`d`.
        context: size of the conditioning vector; ``0`` for an unconditional flow.
        standardize: optional data (n, d); appends a fixed standardisation layer at the data
            end, so a flow fitted to raw, badly scaled data sees zero mean and unit variance.
        **options: preset options. Shared names: ``transforms`` (number of layers), ``hidden``
            (conditioner widths), ``bins`` (spline bins), ``bound`` (spline half-width).

    Returns:
        A :class:`~pyroflows.Flow` whose ``config`` records how it was built (for :func:`save`).

    Example:
        >>> flow = build("nsf", features=2, transforms=2, hidden=(32, 32))
        >>> flow().sample((4,)).shape
        torch.Size([4, 2])
    """
    make = preset(name)
    for what, value, low in (("features", features, 1), ("context", context, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{what} must be an integer >= {low}, got {value!r}")
    accepted = list(inspect.signature(make).parameters)[2:]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"flow {name!r} got unknown options {unknown}; its options are {accepted}")
    layers = None
    if standardize is not None:
        data = torch.as_tensor(np.asarray(standardize) if not isinstance(standardize, Tensor) else standardize)
        if data.dim() != 2 or data.shape[1] != features:
            raise ValueError(f"standardize data must have shape (n, {features}), got {tuple(data.shape)}")
        layers = ElementwiseAffine.from_data(data.double(), trainable=False)
    flow = make(features, context, **options)
    if layers is not None:
        flow = Flow([*flow.transforms, layers], flow.base)
    flow.config = {
        "name": name,
        "features": features,
        "context": context,
        "standardize": layers is not None,
        "options": dict(options),
    }
    return flow


def save(flow: Flow, path: str | os.PathLike) -> None:
    """Save a flow built by :func:`build` (its config and parameters) to ``path``."""
    if not isinstance(flow, Flow) or flow.config is None:
        raise ValueError("save() takes a Flow made by pyroflows.flows.build (it needs flow.config)")
    torch.save({"format": FORMAT, "config": flow.config, "state_dict": flow.state_dict()}, path)


def load(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> Flow:
    """Load a flow saved by :func:`save`; parameters keep the dtype they were saved in."""
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        # torch's first line says what failed; its further advice is about pickles, not us.
        reason = str(error).split(": Weights only")[0].splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(
            f"cannot read a pyroflows model from {os.fspath(path)!r}: not a file written by "
            f"pyroflows.flows.save ({reason})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not a pyroflows model file")
    config = payload["config"]
    flow = build(config["name"], config["features"], config["context"], **config["options"])
    if config["standardize"]:
        flow = Flow([*flow.transforms, ElementwiseAffine(config["features"], trainable=False)], flow.base)
    dtypes = [v.dtype for v in payload["state_dict"].values() if v.is_floating_point()]
    if dtypes:
        flow = flow.to(dtypes[0])
    flow.load_state_dict(payload["state_dict"])
    flow.config = config
    return flow
