"""The density-model registry: ``build(name, features, context=0, **options)`` and
``available()``, in the style of :mod:`pyroflows.flows.registry`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..registry import Registry

__all__ = ["available", "build", "preset", "register"]

_MODELS: Registry[Callable[..., Any]] = Registry("density model")


def register(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator adding ``factory(features, context=0, **options) -> AutoregressiveModel``
    under ``name``."""
    return _MODELS.register(name)


def available() -> list[str]:
    """Names of the registered density models, sorted."""
    return _MODELS.available()


def preset(name: str) -> Callable[..., Any]:
    """The factory registered under ``name`` (its docstring documents the options)."""
    return _MODELS.get(name)


def build(name: str, features: int, context: int = 0, **options: Any) -> Any:
    """Build the density model ``name`` for ``features``-dimensional data.

    Args:
        name: a registry name (see :func:`available`): ``"made"``, ``"made-mog"``, ``"made-bernoulli"``,
            ``"nade"``, ``"rnade"``.
        features: data dimension :math:`d`.
        context: size of the conditioning vector; ``0`` for an unconditional model.
        **options: the model's options (its factory's keywords, e.g. ``hidden``, ``order``,
            ``components``); an unknown one raises TypeError.

    Returns:
        An :class:`~pyroflows.density.AutoregressiveModel` (an ``nn.Module``); ``model(context)``
        is a Pyro distribution. ``model.config`` records how it was built.

    Example:
        >>> model = build("made-mog", 2, components=3, hidden=(16,))
        >>> model().sample((4,)).shape
        torch.Size([4, 2])
    """
    make = _MODELS.checked(name, features, context, options)
    model = make(features, context, **options)
    model.config = {"name": name, "features": features, "context": context, "options": dict(options)}
    return model
