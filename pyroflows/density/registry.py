"""The density models' view of the one registry (:data:`pyroflows.registry.REGISTRY`, family
``"density"``): ``register``, ``build(name, features, context=0, **options)`` and
``available(kind=None)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..registry import REGISTRY

__all__ = ["available", "build", "preset", "register"]


def register(name: str, event_dims: int = 1) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding ``factory(features, context=0, **options)`` under ``name``
    (``event_dims=3`` for an image model, whose ``features`` is a ``(C, H, W)`` tuple)."""
    return REGISTRY.register(name, "density", event_dims)


def available(kind: str | None = None) -> list[str]:
    """Names of the registered density models, sorted; only one ``kind``'s (``"vector"`` or
    ``"image"``) when given."""
    return REGISTRY.available("density", kind)


def preset(name: str) -> Callable[..., Any]:
    """The factory registered under ``name`` (its docstring documents the options)."""
    return REGISTRY.entry(name, "density").factory


def build(name: str, features: int | tuple[int, int, int], context: int = 0, **options: Any) -> Any:
    """Build the density model ``name`` for ``features``-dimensional data.

    Args:
        name: a registry name (see :func:`available`): ``"made"``, ``"made-mog"``,
            ``"made-bernoulli"``, ``"nade"``, ``"rnade"``; ``"pixelcnn"`` (images).
        features: data dimension :math:`d`; for an image model the event shape ``(C, H, W)``.
        context: size of the conditioning vector; ``0`` for an unconditional model.
        **options: the model's options (its factory's keywords, e.g. ``hidden``, ``order``,
            ``components``); an unknown one raises TypeError.

    Returns:
        An ``nn.Module`` meeting :class:`~pyroflows.protocol.DensityModel` (an
        :class:`~pyroflows.density.AutoregressiveModel`, or a
        :class:`~pyroflows.density.PixelCNN`); ``model(context)`` is a Pyro distribution.
        ``model.config`` records how it was built.

    Example:
        >>> model = build("made-mog", 2, components=3, hidden=(16,))
        >>> model().sample((4,)).shape
        torch.Size([4, 2])
    """
    return REGISTRY.build(name, "density", features, context, **options)
