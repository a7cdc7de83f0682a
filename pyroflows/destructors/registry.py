"""The destructor registry: ``build(name, features, **options)`` and ``available()``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..registry import Registry
from .base import Destructor

__all__ = ["available", "build", "register"]

_DESTRUCTORS: Registry[Callable[..., Destructor]] = Registry("destructor", conditional=False)


def register(name: str) -> Callable[[Callable[..., Destructor]], Callable[..., Destructor]]:
    """Decorator adding ``factory(features, **options) -> Destructor`` under ``name``."""
    return _DESTRUCTORS.register(name)


def available() -> list[str]:
    """Names of the registered destructors, sorted."""
    return _DESTRUCTORS.available()


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
    return _DESTRUCTORS.checked(name, features, 0, options)(features, **options)
