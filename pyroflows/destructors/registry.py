"""The destructor registry: ``build(name, features, **options)`` and ``available()``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .base import Destructor

__all__ = ["available", "build", "register"]

_DESTRUCTORS: dict[str, Callable[..., Destructor]] = {}


def register(name: str) -> Callable[[Callable[..., Destructor]], Callable[..., Destructor]]:
    """Decorator adding ``factory(features, **options) -> Destructor`` under ``name``."""

    def decorator(factory: Callable[..., Destructor]) -> Callable[..., Destructor]:
        if name in _DESTRUCTORS:
            raise ValueError(f"a destructor named {name!r} is already registered")
        _DESTRUCTORS[name] = factory
        return factory

    return decorator


def available() -> list[str]:
    """Names of the registered destructors, sorted."""
    return sorted(_DESTRUCTORS)


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
    try:
        factory = _DESTRUCTORS[name]
    except KeyError:
        raise ValueError(f"unknown destructor {name!r}; available: {', '.join(available())}") from None
    if not isinstance(features, int) or isinstance(features, bool) or features < 1:
        raise ValueError(f"features must be a positive integer, got {features!r}")
    accepted = list(inspect.signature(factory).parameters)[1:]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"destructor {name!r} got unknown options {unknown}; its options are {accepted}")
    return factory(features, **options)
