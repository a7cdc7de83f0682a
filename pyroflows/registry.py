"""A small generic registry of named model factories, shared by :mod:`pyroflows.flows`,
:mod:`pyroflows.density` and :mod:`pyroflows.destructors`.

A factory is ``factory(features, context=0, **options)`` (or ``factory(features, **options)``
for a registry built with ``conditional=False``); :meth:`Registry.checked` looks it up,
validates ``features`` and ``context`` and rejects unknown options before anything is built,
so every registry reports bad input the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["Registry"]

from .checks import check_count, check_options

T = TypeVar("T", bound=Callable[..., Any])


class Registry(Generic[T]):
    """Factories by name.

    Args:
        kind: what the factories build, for messages (``"flow"``, ``"density model"``).
        conditional: whether factories take a ``context`` size as their second argument.

    Example:
        >>> models = Registry("model")
        >>> @models.register("double")
        ... def double(features, context=0, scale=2):
        ...     return scale * features
        >>> models.available(), models.checked("double", 3, 0, {"scale": 3})(3, 0, scale=3)
        (['double'], 9)
    """

    def __init__(self, kind: str, conditional: bool = True) -> None:
        self.kind = kind
        self.conditional = conditional
        self._factories: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding ``factory(features, context=0, **options)`` under ``name``."""

        def decorator(factory: T) -> T:
            if name in self._factories:
                raise ValueError(f"a {self.kind} named {name!r} is already registered")
            self._factories[name] = factory
            return factory

        return decorator

    def available(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._factories)

    def get(self, name: str) -> T:
        """The factory registered under ``name``; ValueError listing the names otherwise."""
        try:
            return self._factories[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; available: {', '.join(self.available())}"
            ) from None

    def checked(self, name: str, features: int, context: int, options: dict[str, Any]) -> T:
        """:meth:`get`, after checking ``features >= 1``, ``context >= 0`` (ValueError) and
        that every option is a keyword of the factory beyond its positional size arguments
        (TypeError)."""
        factory = self.get(name)
        check_count("features", features, 1)
        check_count("context", context, 0)
        check_options(self.kind, name, factory, options, 2 if self.conditional else 1)
        return factory
