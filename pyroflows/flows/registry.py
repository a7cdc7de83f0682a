"""The flow registry: presets by paper name, ``build``, ``available``, ``save`` and ``load``,
as a view of the one registry (:data:`pyroflows.registry.REGISTRY`, family ``"flow"``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core import Flow
from ..registry import KINDS, REGISTRY
from ..transforms import ElementwiseAffine

__all__ = ["available", "build", "check_transforms", "kind", "load", "preset", "register", "save"]

FORMAT = "pyroflows-flow/1"


def register(
    name: str, event_dims: int = 1
) -> Callable[[Callable[..., Flow]], Callable[..., Flow]]:
    """Decorator adding a flow preset ``preset(features, context=0, **options) -> Flow`` under
    ``name`` (:meth:`pyroflows.registry.Registry.register` with ``family="flow"``).

    ``event_dims=1`` (default): a vector preset, ``features`` an int, event shape
    ``(features,)``. ``event_dims=3``: an image preset, ``features`` a ``(C, H, W)`` tuple.
    """
    return REGISTRY.register(name, "flow", event_dims)


def kind(name: str) -> str:
    """``"image"`` for a preset whose ``features`` is a ``(C, H, W)`` shape, else ``"vector"``."""
    return REGISTRY.entry(name, "flow").kind


def check_transforms(transforms: int) -> None:
    """The presets' shared check of their ``transforms`` option (number of layers)."""
    if not isinstance(transforms, int) or isinstance(transforms, bool) or transforms < 1:
        raise ValueError(f"transforms must be a positive integer, got {transforms!r}")


def available(kind: str | None = None) -> list[str]:
    """Names of the registered flow presets, sorted; only those of one ``kind`` (``"vector"``
    or ``"image"``) when given."""
    if kind is not None and kind not in KINDS.values():
        raise ValueError(f"kind must be one of {tuple(KINDS.values())} or None, got {kind!r}")
    return REGISTRY.available("flow", kind)


def preset(name: str) -> Callable[..., Flow]:
    """The preset function registered under ``name`` (its docstring documents the options)."""
    return REGISTRY.entry(name, "flow").factory


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
            end, so a flow fitted to raw, badly scaled data sees zero mean and unit variance
            (vector presets only).
        **options: preset options. Shared names: ``transforms`` (number of layers), ``hidden``
            (conditioner widths), ``bins`` (spline bins), ``bound`` (spline half-width).

    Returns:
        A :class:`~pyroflows.Flow` whose ``config`` records how it was built (for :func:`save`).

    Example:
        >>> flow = build("nsf", features=2, transforms=2, hidden=(32, 32))
        >>> flow().sample((4,)).shape
        torch.Size([4, 2])
    """
    layer = None
    if standardize is not None:
        if kind(name) == "image":
            raise ValueError(
                f"standardize is for vector presets; {name!r} is an image flow (use "
                "ActNorm, which its preset already has, or preprocess the images)"
            )
        data = torch.as_tensor(
            np.asarray(standardize) if not isinstance(standardize, Tensor) else standardize
        )
        if data.dim() != 2 or data.shape[1] != features:
            raise ValueError(
                f"standardize data must have shape (n, {features}), got {tuple(data.shape)}"
            )
    flow = REGISTRY.build(name, "flow", features, context, **options)
    config = flow.config
    if standardize is not None:
        layer = ElementwiseAffine.from_data(data.double(), trainable=False)
        flow = Flow([*flow.transforms, layer], flow.base)
    flow.config = {
        "name": name,
        "features": config["features"],
        "context": config["context"],
        "standardize": layer is not None,
        "options": config["options"],
    }
    return flow


def save(flow: Flow, path: str | os.PathLike) -> None:
    """Save a flow built by :func:`build` (its config and parameters) to ``path``."""
    if not isinstance(flow, Flow) or flow.config is None:
        raise ValueError("save() takes a Flow made by pyroflows.flows.build (it needs flow.config)")
    torch.save({"format": FORMAT, "config": flow.config, "state_dict": flow.state_dict()}, path)


def load(path: str | os.PathLike, map_location: str | torch.device | None = "cpu") -> Flow:
    """Load a flow saved by :func:`save`; parameters keep the dtype they were saved in and lie
    on ``map_location`` (``None``: the device they were saved from).

    Raises ValueError naming the file when it is not a pyroflows model file, or when its
    config or parameters do not rebuild a model (a damaged or edited file).
    """
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        # torch's first line says what failed; its further advice is about pickles, not us.
        reason = (
            str(error).split(": Weights only")[0].splitlines()[0]
            if str(error)
            else type(error).__name__
        )
        raise ValueError(
            f"cannot read a pyroflows model from {os.fspath(path)!r}: not a file written by "
            f"pyroflows.flows.save ({reason})"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{os.fspath(path)!r} is not a pyroflows model file")
    try:
        config, state = payload["config"], payload["state_dict"]
        flow = build(config["name"], config["features"], config["context"], **config["options"])
        if config["standardize"]:
            flow = Flow(
                [*flow.transforms, ElementwiseAffine(config["features"], trainable=False)],
                flow.base,
            )
        # The parameters' device and dtype are the file's (after map_location): copying
        # into the freshly built flow alone would leave it on the CPU in the default dtype.
        floating = [v for v in state.values() if v.is_floating_point()]
        if floating:
            flow = flow.to(floating[0].device, floating[0].dtype)
        flow.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as error:
        detail = f"missing entry {error}" if isinstance(error, KeyError) else str(error)
        raise ValueError(
            f"{os.fspath(path)!r} is a pyroflows model file whose model cannot be rebuilt "
            f"({type(error).__name__}: {detail.splitlines()[0] if detail else ''})"
        ) from error
    flow.config = config
    return flow
