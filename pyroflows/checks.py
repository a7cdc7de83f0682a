"""Argument checks shared by every layer: the one place that says what a valid count, choice,
flag, width list, event shape or context is, and words the error.

These are the ground floor of the package (they import nothing from it), so conditioners,
transforms, models and inference all validate the same way and with the same messages.

Example:
    >>> check_count("bins", 8, 2)
    8
    >>> check_choice("order", "random", ("default", "random"))
    'random'
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "as_data",
    "check_choice",
    "check_context",
    "check_count",
    "check_event",
    "check_features",
    "check_flag",
    "check_hidden",
    "check_options",
    "check_shape",
]


def check_count(what: str, value: object, low: int = 1) -> int:
    """Return ``value`` as an ``int`` if it is an integer (Python or NumPy, not a bool) of at
    least ``low``; raise ValueError naming ``what`` otherwise."""
    if not _is_count(value, low):
        raise ValueError(f"{what} must be an integer >= {low}, got {value!r}")
    return operator.index(value)  # type: ignore[arg-type]


def check_choice(what: str, value: object, choices: Collection[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``; raise ValueError listing them otherwise."""
    if not isinstance(value, str | int | float | None) or value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_flag(what: str, value: object) -> bool:
    """Return ``value`` if it is a ``bool``; raise TypeError otherwise (``0``/``"no"`` are not
    flags: they are usually a misplaced positional argument)."""
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be True or False, got {value!r}")
    return value


def check_options(kind: str, name: str, factory: Callable[..., Any], options: dict[str, Any],
                  sizes: int = 2) -> None:
    """Raise TypeError naming the options that are not keywords of ``factory`` beyond its
    first ``sizes`` (positional size) arguments, and listing the ones it takes."""
    accepted = list(inspect.signature(factory).parameters)[sizes:]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"{kind} {name!r} got unknown options {unknown}; its options are {accepted}")


def check_hidden(hidden: Sequence[int], what: str = "widths") -> tuple[int, ...]:
    """Validate a non-empty sequence of positive hidden sizes (``what`` names them in the
    message: widths, channel counts); TypeError for a bare number, ValueError otherwise."""
    if isinstance(hidden, int | str) or not isinstance(hidden, Sequence):
        raise TypeError(f"hidden must be a sequence of {what}, e.g. (64, 64), got {hidden!r}")
    values = tuple(hidden)
    if not values or not all(_is_count(h, 1) for h in values):
        raise ValueError(f"hidden must be a non-empty tuple of positive {what}, got {values!r}")
    return tuple(operator.index(h) for h in values)


def check_shape(shape: Sequence[int] | int, what: str = "shape") -> tuple[int, ...]:
    """An event shape as a tuple of positive integers: an integer ``d`` gives ``(d,)``, a
    sequence such as ``(C, H, W)`` is kept. ValueError otherwise."""
    if _is_count(shape, 1):
        return (operator.index(shape),)  # type: ignore[arg-type]
    if isinstance(shape, Sequence) and shape and all(_is_count(v, 1) for v in shape):
        return tuple(operator.index(v) for v in shape)
    raise ValueError(f"{what} must be a positive integer or a tuple of them, got {shape!r}")


def _is_count(value: object, low: int) -> bool:
    if isinstance(value, bool):
        return False
    try:
        return operator.index(value) >= low  # type: ignore[arg-type]
    except TypeError:
        return False


def check_event(x: object, shape: Sequence[int], what: str = "input") -> None:
    """Raise TypeError when ``x`` is not a tensor, ValueError when it does not end in the
    event ``shape`` (``(d,)`` for vectors, ``(C, H, W)`` for images)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    shape = tuple(shape)
    if x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape):]) != shape:
        if len(shape) == 1:
            raise ValueError(
                f"{what} has shape {tuple(x.shape)}; expected a last dimension of {shape[0]} features"
            )
        raise ValueError(f"{what} has shape {tuple(x.shape)}; expected (..., {', '.join(map(str, shape))})")


def check_features(x: object, features: int, what: str = "input") -> None:
    """Raise a ValueError when ``x`` is not a tensor whose last dimension is ``features``."""
    check_event(x, (features,), what)


def check_context(context: Tensor | None, context_features: int) -> None:
    """Raise a ValueError when a context is missing, unexpected or mis-shaped."""
    if context_features == 0:
        if context is not None:
            raise ValueError("this transform takes no context (it was built with context=0)")
        return
    if context is None:
        raise ValueError(
            f"this transform is conditional on a context of {context_features} features; "
            "pass one (flow(context) or transform.condition(context))"
        )
    check_features(context, context_features, "context")


def as_data(
    value: Any, name: str, columns: int | None, rows: int | None, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Check and convert an array-like to a (rows, columns) tensor on ``device``/``dtype``.

    Raises ValueError naming ``name`` for a wrong shape, NaN or infinite values.
    """
    if isinstance(value, Tensor):
        tensor = value.detach()
    else:
        try:
            tensor = torch.as_tensor(np.asarray(value, dtype=np.float64))
        except (TypeError, ValueError) as error:
            raise TypeError(f"{name} must be a tensor or an array of numbers: {error}") from None
    if columns is not None and (tensor.dim() != 2 or tensor.shape[1] != columns):
        raise ValueError(f"{name} must have shape (n, {columns}), got {tuple(tensor.shape)}")
    if rows is not None and tensor.shape[0] != rows:
        raise ValueError(f"{name} has {tensor.shape[0]} rows but the data has {rows}")
    if not tensor.is_floating_point():
        tensor = tensor.double()
    bad = ~torch.isfinite(tensor)
    if bad.any():
        where = bad.reshape(bad.shape[0], -1).any(1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"{name} has NaN or infinite values (rows {where}, ...)")
    return tensor.to(device=device, dtype=dtype)
