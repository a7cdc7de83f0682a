"""What the flow presets share: passing their ``**options`` on to the classes they build, and
stacking ``transforms`` layers with a permutation (or any fixed layer) between them.

A preset keeps only its own options (the number of layers, how they alternate, choices that
select classes) and declares where the rest go with :func:`passes_options_to`; each option is
then documented once, in the class that takes it, and
:func:`pyroflows.checks.check_options` still rejects a typo at build time.

Example:
    >>> from pyroflows.transforms import AffineMap, Coupling
    >>> @passes_options_to(Coupling, AffineMap, fixed=("map",))
    ... def preset(features: int, context: int = 0, **options: Any) -> list[dict[str, Any]]:
    ...     return split_options(preset, options)
    >>> preset(4, hidden=(8,), log_scale_bound=2.0)
    [{'hidden': (8,)}, {'log_scale_bound': 2.0}]
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

from ..checks import check_count, check_options
from ..transforms import Bijection

__all__ = ["passes_options_to", "split_options", "stack"]

P = TypeVar("P", bound=Callable[..., Any])


def passes_options_to(
    *classes: Callable[..., Any], fixed: Collection[str] = ()
) -> Callable[[P], P]:
    """Decorator declaring that a preset passes its ``**options`` to ``classes`` (in that order).

    Sets ``preset.passes_options_to`` (read by :func:`~pyroflows.checks.check_options`, so
    the classes' keywords are the preset's options) and ``preset.fixed_options``: keywords of
    those classes that the preset sets itself (a coupling's ``mask``, a layer's ``map``), which
    :func:`split_options` refuses with a TypeError rather than letting them clash.
    """
    if not classes or not all(callable(c) for c in classes):
        raise TypeError(f"passes_options_to takes one or more classes, got {classes!r}")

    def decorator(preset: P) -> P:
        preset.passes_options_to = classes  # type: ignore[attr-defined]
        preset.fixed_options = tuple(fixed)  # type: ignore[attr-defined]
        return preset

    return decorator


def split_options(preset: Callable[..., Any], options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Split a preset's ``options`` among its ``passes_options_to`` classes: one dict per class,
    in their order, each option going to the first class whose constructor takes it (so a
    name two classes share, like ``hidden``, goes to the first).

    Raises:
        TypeError: for an option none of the classes takes (listing the valid ones, as
            :func:`~pyroflows.checks.check_options` words it), or one the preset sets itself.
    """
    check_options("flow preset", preset.__name__, preset, dict(options))
    fixed = sorted(set(options) & set(getattr(preset, "fixed_options", ())))
    if fixed:
        raise TypeError(f"flow preset {preset.__name__!r} sets {fixed} itself; not options")
    targets: tuple[Callable[..., Any], ...] = preset.passes_options_to  # type: ignore[attr-defined]
    parts: list[dict[str, Any]] = [{} for _ in targets]
    for name, value in options.items():
        for part, target in zip(parts, targets, strict=True):
            if name in inspect.signature(target).parameters:
                part[name] = value
                break
    return parts


def stack(
    transforms: int,
    layer: Callable[[int], Bijection],
    between: Callable[[int], Bijection] | None = None,
) -> list[Bijection]:
    """``transforms`` layers ``layer(0), ..., layer(transforms - 1)``, with ``between(i)``
    (a permutation, a rotation, an ActNorm) placed before each ``layer(i)`` but the first.

    Raises ValueError naming ``transforms`` unless it is an integer >= 1.

    Example:
        >>> from pyroflows.transforms import Planar, Reverse
        >>> len(stack(3, lambda i: Planar(2), between=lambda i: Reverse(2)))
        5
    """
    check_count("transforms", transforms, 1)
    layers: list[Bijection] = []
    for i in range(transforms):
        if i and between is not None:
            layers.append(between(i))
        layers.append(layer(i))
    return layers
