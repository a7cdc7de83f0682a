"""The flow registry: presets by paper name, ``build``, ``available``, ``save`` and ``load``."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core import Flow
from ..registry import Registry
from ..transforms import ElementwiseAffine

__all__ = ["available", "build", "check_transforms", "kind", "load", "register", "save"]

_PRESETS: Registry[Callable[..., Flow]] = Registry("flow")
#: The names of the image presets (event shape (C, H, W)); every other preset is a vector one.
_IMAGE_PRESETS: set[str] = set()
KINDS = ("vector", "image")
FORMAT = "pyroflows-flow/1"


def register(name: str, kind: str = "vector") -> Callable[[Callable[..., Flow]], Callable[..., Flow]]:
    """Decorator adding a preset ``preset(features, context=0, **options) -> Flow`` under ``name``.

    ``kind="vector"`` (default): ``features`` is an int, the event shape ``(features,)``.
    ``kind="image"``: ``features`` is a ``(C, H, W)`` tuple, the event shape of the flow.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    add = _PRESETS.register(name)

    def decorator(preset: Callable[..., Flow]) -> Callable[..., Flow]:
        add(preset)
        if kind == "image":
            _IMAGE_PRESETS.add(name)
        return preset

    return decorator


def kind(name: str) -> str:
    """``"image"`` for a preset whose ``features`` is a ``(C, H, W)`` shape, else ``"vector"``."""
    _PRESETS.get(name)  # ValueError for an unknown name
    return "image" if name in _IMAGE_PRESETS else "vector"


def check_transforms(transforms: int) -> None:
    """The presets' shared check of their ``transforms`` option (number of layers)."""
    if not isinstance(transforms, int) or isinstance(transforms, bool) or transforms < 1:
        raise ValueError(f"transforms must be a positive integer, got {transforms!r}")


def available(kind: str | None = None) -> list[str]:
    """Names of the registered flow presets, sorted; only those of one ``kind`` (``"vector"``
    or ``"image"``) when given."""
    if kind is None:
        return _PRESETS.available()
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS} or None, got {kind!r}")
    return [n for n in _PRESETS.available() if (n in _IMAGE_PRESETS) == (kind == "image")]


def preset(name: str) -> Callable[..., Flow]:
    """The preset function registered under ``name`` (its docstring documents the options)."""
    return _PRESETS.get(name)


def build(
    name: str,
    features: int | tuple[int, int, int],
    context: int = 0,
    standardize: Tensor | np.ndarray | None = None,
    **options: Any,
) -> Flow:
    """Build the preset ``name`` for ``features``-dimensional data.

    Args:
        name: a registry name (see :func:`available`), e.g. ``"nsf"``, ``"maf"``.
        features: data dimension :math:`d`; for an image preset (``available("image")``:
            ``"glow"``, ``"realnvp-image"``) the event shape ``(C, H, W)``.
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
    if name in _IMAGE_PRESETS:
        return _build_image(name, features, context, standardize, options)
    make = _PRESETS.checked(name, features, context, options)
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


def _build_image(name: str, features: Any, context: int, standardize: Any, options: dict[str, Any]) -> Flow:
    valid = (isinstance(features, (tuple, list)) and len(features) == 3
             and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in features))
    if not valid:
        raise ValueError(f"{name!r} is an image flow: features must be its event shape (C, H, W), a tuple "
                         f"of 3 positive integers, got {features!r}")
    if standardize is not None:
        raise ValueError(f"standardize is for vector presets; {name!r} is an image flow (use ActNorm, "
                         "which its preset already has, or preprocess the images)")
    shape = tuple(features)
    make = _PRESETS.checked(name, math.prod(shape), context, options)
    flow = make(shape, context, **options)
    flow.config = {"name": name, "features": shape, "context": context, "standardize": False,
                   "options": dict(options)}
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
