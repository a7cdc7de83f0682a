"""The one registry of named model factories: flows, density models and destructors.

Every entry has a ``family`` (``"flow"``, ``"density"``, ``"destructor"``) and a ``kind``
that follows from the rank of its event shape (``"vector"``: ``(D,)``, ``"image"``:
``(C, H, W)``). Entries are added with one decorator, :meth:`Registry.register`, which the
families' ``register`` functions (:func:`pyroflows.flows.register`, ...) only pre-fill with
their family. :meth:`Registry.build` checks the event shape, the context size and the options
before anything is built, so every family reports bad input the same way, and records how the
model was built in ``model.config``.

A factory is ``factory(features, context=0, **options)``, where ``features`` is an int for a
vector entry and a ``(C, H, W)`` tuple for an image entry; destructor factories take no
context, ``factory(features, **options)``.

Example:
    >>> models = Registry()
    >>> @models.register("double", "density")
    ... def double(features, context=0, scale=2):
    ...     return scale * features
    >>> models.available("density"), models.entry("double", "density").kind
    (['double'], 'vector')
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .checks import check_choice, check_count, check_options, check_shape

__all__ = ["FAMILIES", "KINDS", "REGISTRY", "Entry", "Registry"]

#: The model families and the word each uses in messages.
FAMILIES = {"flow": "flow", "density": "density model", "destructor": "destructor"}
#: Kinds by event rank.
KINDS = {1: "vector", 3: "image"}

Factory = Callable[..., Any]


@dataclass(frozen=True)
class Entry:
    """One registered factory.

    Attributes:
        name: the registry name (lower-case paper name).
        family: ``"flow"``, ``"density"`` or ``"destructor"``.
        factory: ``factory(features, context=0, **options)`` (no ``context`` for destructors).
        event_dims: rank of the event shape the factory builds (1: vectors, 3: images).
    """

    name: str
    family: str
    factory: Factory
    event_dims: int = 1

    @property
    def kind(self) -> str:
        """``"vector"`` or ``"image"``, from the rank of the event shape."""
        return KINDS[self.event_dims]

    @property
    def conditional(self) -> bool:
        """Whether the factory takes a context size (every family but destructors)."""
        return self.family != "destructor"

    def event_shape(self, features: object) -> tuple[int, ...]:
        """``features`` checked against this entry's kind: ``(d,)`` from an int ``d`` for a
        vector entry, a ``(C, H, W)`` tuple for an image entry; ValueError otherwise."""
        if self.event_dims == 1:
            return (check_count("features", features, 1),)
        what = FAMILIES[self.family].split()[0]
        message = (
            f"{self.name!r} is an image {what}: features must be its event shape (C, H, W), "
            f"a tuple of 3 positive integers, got {features!r}"
        )
        if not isinstance(features, tuple | list):
            raise ValueError(message)
        try:
            shape = check_shape(features, "features")
        except ValueError:
            raise ValueError(message) from None
        if len(shape) != self.event_dims:
            raise ValueError(message)
        return shape


class Registry:
    """Entries by family and name (see the module docstring).

    Example:
        >>> import pyroflows
        >>> "glow" in REGISTRY.available("flow", kind="image")
        True
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], Entry] = {}

    def register(self, name: str, family: str, event_dims: int = 1) -> Callable[[Factory], Factory]:
        """Decorator adding ``factory`` under ``(family, name)``.

        Args:
            name: the registry name.
            family: ``"flow"``, ``"density"`` or ``"destructor"``.
            event_dims: rank of the models' event shape: ``1`` (vectors, ``features`` an int)
                or ``3`` (images, ``features`` a ``(C, H, W)`` tuple).
        """
        check_choice("family", family, tuple(FAMILIES))
        check_choice("event_dims", event_dims, tuple(KINDS))

        def decorator(factory: Factory) -> Factory:
            if (family, name) in self._entries:
                raise ValueError(f"a {FAMILIES[family]} named {name!r} is already registered")
            self._entries[family, name] = Entry(name, family, factory, event_dims)
            return factory

        return decorator

    def available(self, family: str | None = None, kind: str | None = None) -> list[str]:
        """The registered names, sorted; only those of one ``family`` and/or ``kind``
        (``"vector"`` or ``"image"``) when given."""
        if family is not None:
            check_choice("family", family, tuple(FAMILIES))
        if kind is not None:
            check_choice("kind", kind, tuple(KINDS.values()))
        return sorted(e.name for e in self.entries(family) if kind in (None, e.kind))

    def entries(self, family: str | None = None) -> list[Entry]:
        """The entries, sorted by family and name; only one ``family``'s when given."""
        return [e for key, e in sorted(self._entries.items()) if family in (None, e.family)]

    def entry(self, name: str, family: str) -> Entry:
        """The entry ``name`` of ``family``; ValueError listing the family's names otherwise."""
        try:
            return self._entries[family, name]
        except KeyError:
            raise ValueError(
                f"unknown {FAMILIES[family]} {name!r}; available: "
                f"{', '.join(self.available(family))}"
            ) from None

    def build(self, name: str, family: str, features: Any, context: int = 0, **options: Any) -> Any:
        """Check the arguments and build the entry ``name`` of ``family``.

        Checks (before anything is built): ``features`` against the entry's kind and
        ``context >= 0`` (ValueError; a destructor takes no context), and that every option is
        a keyword of the factory (TypeError). The model's ``config`` records
        ``{"name", "features", "context", "options"}``.

        Example:
            >>> import pyroflows
            >>> REGISTRY.build("made", "density", 3, hidden=(8,)).event_shape
            torch.Size([3])
        """
        entry = self.entry(name, family)
        shape = entry.event_shape(features)
        context = check_count("context", context, 0)
        if context and not entry.conditional:
            raise ValueError(f"a {FAMILIES[family]} takes no context, got context={context}")
        sizes = 2 if entry.conditional else 1
        check_options(FAMILIES[family], name, entry.factory, options, sizes)
        size = shape[0] if entry.event_dims == 1 else shape
        model = (
            entry.factory(size, context, **options)
            if entry.conditional
            else entry.factory(size, **options)
        )
        config_features = operator.index(features) if entry.event_dims == 1 else shape
        model.config = {
            "name": name,
            "features": config_features,
            "context": context,
            "options": {key: _plain(value) for key, value in options.items()},
        }
        return model


def _plain(value: Any) -> Any:
    """``value`` with NumPy scalars made Python numbers (inside tuples and lists too), so a
    saved config loads under ``torch.load(weights_only=True)``."""
    if isinstance(value, tuple | list):
        return type(value)(_plain(v) for v in value)
    item = getattr(value, "item", None)
    if type(value).__module__ == "numpy" and callable(item):
        return item()
    return value


#: The registry every family registers into (``pyroflows.flows``, ``pyroflows.density``,
#: ``pyroflows.destructors`` are views of it).
REGISTRY = Registry()
