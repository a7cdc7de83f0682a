"""The destructors' view of the one registry (:data:`pyroflows.registry.REGISTRY`, family
``"destructor"``): ``register``, ``build(name, features, **options)`` and ``available()``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..registry import REGISTRY
from .base import Destructor

__all__ = ["available", "build", "register"]


def register(name: str) -> Callable[[Callable[..., Destructor]], Callable[..., Destructor]]:
    """Decorator adding ``factory(features, **options) -> Destructor`` (usually the class
    itself) under ``name``."""
    return REGISTRY.register(name, "destructor")


def available(kind: str | None = None) -> list[str]:
    """Names of the registered destructors, sorted (all are of kind ``"vector"``)."""
    return REGISTRY.available("destructor", kind)


def build(name: str, features: int, **options: Any) -> Destructor:
    """Build an (unfitted) destructor by name; call ``.fit(data)`` on the result.

    Args:
        name: a registry name (see :func:`available`), e.g. ``"copula"``, ``"mixture"``.
        features: data dimension.
        **options: the class's keyword arguments (see its docstring).

    Example:
        >>> import torch
        >>> d = build("gaussian", 2).fit(torch.randn(100, 2))
        >>> d.sample(3).shape
        torch.Size([3, 2])
    """
    return REGISTRY.build(name, "destructor", features, **options)
