"""The conventions every bijection follows: the support of an event of a given rank, image
event shapes, and how a chain's fast direction follows from its parts'."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from functools import cache

from torch.distributions import constraints

from ..checks import check_shape

__all__ = ["check_image_shape", "fast_direction_of", "real_events", "swap_direction"]


@cache
def real_events(event_dim: int) -> constraints.Constraint:
    """The support :math:`\\mathbb{R}^{\\text{event shape}}` of an event of ``event_dim``
    dimensions, ``constraints.independent(constraints.real, event_dim)`` (one shared object per
    rank; for vectors it equals ``constraints.real_vector``)."""
    return constraints.independent(constraints.real, event_dim)


def check_image_shape(shape: object, what: str = "shape") -> tuple[int, int, int]:
    """Return ``shape`` as a ``(C, H, W)`` tuple of positive integers, or raise ValueError.

    Example:
        >>> check_image_shape([1, 28, 28])
        (1, 28, 28)
    """
    message = f"{what} must be a (C, H, W) tuple of positive integers, got {shape!r}"
    try:
        values = check_shape(shape, what)  # type: ignore[arg-type]
    except ValueError:
        raise ValueError(message) from None
    if len(values) != 3 or not isinstance(shape, Sequence):
        raise ValueError(message)
    return values  # type: ignore[return-value]


def swap_direction(direction: str) -> str:
    """The fast direction of the inverse map: ``"forward"`` and ``"inverse"`` trade places."""
    return {"forward": "inverse", "inverse": "forward"}.get(direction, "both")


def fast_direction_of(directions: Iterable[str]) -> str:
    """The ``fast_direction`` of parts applied in turn, from the parts' own.

    A direction of the whole is a single pass when it is one in every part: ``"both"`` when
    every part says ``"both"``, ``"forward"`` (``"inverse"``) when every part is fast that way,
    and ``"both"``, when no direction is fast in all of them (each direction is then exact
    but slow in some part).

    Example:
        >>> fast_direction_of(["both", "forward"]), fast_direction_of(["forward", "inverse"])
        ('forward', 'both')
    """
    directions = set(directions)
    forward = directions <= {"both", "forward"}
    inverse = directions <= {"both", "inverse"}
    if forward and not inverse:
        return "forward"
    if inverse and not forward:
        return "inverse"
    return "both"
