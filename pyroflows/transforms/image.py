r"""Bijections of images: the event is a :math:`(C, H, W)` array rather than a vector.

An :class:`ImageBijection` is a :class:`~pyroflows.transforms.Bijection` whose inputs have
shape ``(..., *base_shape)`` and outputs ``(..., *shape)`` (``shape`` is the data side,
``base_shape`` the noise side; they differ for a squeeze). Its ``features`` is the number of
values :math:`C H W`, and every log-determinant is summed over the three event dimensions, so
it has the batch shape ``(...)``. :class:`ImageCompose` chains image bijections whose shapes
meet. Shapes are static: nothing in a forward or inverse pass depends on tensor values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.distributions import Transform, constraints

from ..checks import check_context
from .base import Bijection, Compose, ConditionedBijection, Inverse

__all__ = ["ConditionedImageBijection", "ImageBijection", "ImageCompose", "ImageInverse", "check_image", "check_shape", "checkerboard_mask"]


def check_shape(shape: Sequence[int], what: str = "shape") -> tuple[int, int, int]:
    """Return ``shape`` as a ``(C, H, W)`` tuple of positive integers, or raise ValueError."""
    try:
        values = tuple(shape)
    except TypeError:
        raise ValueError(f"{what} must be a (C, H, W) tuple of positive integers, got {shape!r}") from None
    if len(values) != 3 or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
        raise ValueError(f"{what} must be a (C, H, W) tuple of positive integers, got {shape!r}")
    return values  # type: ignore[return-value]


def check_image(x: Tensor, shape: tuple[int, int, int], what: str = "input") -> None:
    """Raise when ``x`` is not a tensor of shape ``(..., *shape)``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 3 or tuple(x.shape[-3:]) != tuple(shape):
        raise ValueError(f"{what} has shape {tuple(x.shape)}; expected (..., {', '.join(map(str, shape))})")


def checkerboard_mask(height: int, width: int, parity: int = 0) -> Tensor:
    r"""Boolean ``(height, width)`` checkerboard, ``True`` where :math:`(i + j + \text{parity})`
    is even (RealNVP's spatial mask: ``True`` pixels pass unchanged and condition the others).

    Example:
        >>> checkerboard_mask(2, 3).int()
        tensor([[1, 0, 1],
                [0, 1, 0]], dtype=torch.int32)
    """
    i = torch.arange(height).unsqueeze(1)
    j = torch.arange(width).unsqueeze(0)
    return (i + j + parity) % 2 == 0


class _ImageProtocol:
    """The parts of the torch ``Transform`` protocol that differ for a 3-D event."""

    domain = constraints.independent(constraints.real, 3)
    codomain = constraints.independent(constraints.real, 3)
    shape: tuple[int, int, int]
    base_shape: tuple[int, int, int]

    def _call(self, z: Tensor) -> Tensor:
        check_image(z, self.base_shape)
        check_context(None, self.context_features)  # type: ignore[attr-defined]
        return self.call_and_ladj(z)[0]  # type: ignore[attr-defined]

    def _inverse(self, x: Tensor) -> Tensor:
        check_image(x, self.shape)
        check_context(None, self.context_features)  # type: ignore[attr-defined]
        return self.inverse_and_ladj(x)[0]  # type: ignore[attr-defined]

    def forward_shape(self, shape: torch.Size) -> torch.Size:
        return torch.Size(tuple(shape)[:-3] + self.shape)

    def inverse_shape(self, shape: torch.Size) -> torch.Size:
        return torch.Size(tuple(shape)[:-3] + self.base_shape)

    @property
    def inv(self) -> Transform:
        """The inverse, an :class:`ImageInverse` (its parameters stay registered)."""
        return ImageInverse(self)  # type: ignore[arg-type]

    def condition(self, context: Tensor | None) -> Transform:
        """Bind a context vector; returns a :class:`ConditionedImageBijection` (itself when
        unconditional), so image flows also work in ``dist.ConditionalTransformedDistribution``."""
        if self.context_features == 0:  # type: ignore[attr-defined]
            return self  # type: ignore[return-value]
        check_context(context, self.context_features)  # type: ignore[attr-defined]
        return ConditionedImageBijection(self, context)  # type: ignore[arg-type]


class ImageBijection(_ImageProtocol, Bijection):
    r"""Base class of the image bijections :math:`x = T(z; c)`, :math:`z` of shape
    ``base_shape`` and :math:`x` of shape ``shape``.

    Args:
        shape: the data-side event shape :math:`(C, H, W)`.
        context: size of a conditioning vector (``0``: unconditional).
        base_shape: the noise-side event shape (default ``shape``); same number of values.

    Subclasses implement ``call_and_ladj(z, context)`` and ``inverse_and_ladj(x, context)``
    with log-determinants of shape ``z.shape[:-3]`` (broadcast with the context's batch).
    """

    def __init__(self, shape: Sequence[int], context: int = 0,
                 base_shape: Sequence[int] | None = None) -> None:
        shape = check_shape(shape)
        base_shape = shape if base_shape is None else check_shape(base_shape, "base_shape")
        if math.prod(shape) != math.prod(base_shape):
            raise ValueError(f"shape {shape} and base_shape {base_shape} hold different numbers of values")
        super().__init__(math.prod(shape), context)
        self.shape = shape
        self.base_shape = base_shape

    def extra_repr(self) -> str:
        text = f"shape={self.shape}"
        if self.base_shape != self.shape:
            text += f", base_shape={self.base_shape}"
        if self.context_features:
            text += f", context={self.context_features}"
        return text


class ImageCompose(_ImageProtocol, Compose):
    """A chain of image bijections, listed from the base side to the data side; each part's
    ``shape`` must be the next part's ``base_shape``.

    Example:
        >>> from pyroflows.transforms import Squeeze
        >>> t = ImageCompose([Squeeze((1, 4, 4))])
        >>> t.base_shape, t.shape
        ((4, 2, 2), (1, 4, 4))
    """

    def __init__(self, parts: Sequence[Bijection]) -> None:
        parts = list(parts)
        for p in parts:
            if not hasattr(p, "shape") or not hasattr(p, "base_shape"):
                raise TypeError(f"ImageCompose takes image bijections, got {type(p).__name__}")
        for a, b in zip(parts[:-1], parts[1:]):
            if a.shape != b.base_shape:
                raise ValueError(f"{type(a).__name__} outputs shape {a.shape} but the next part, "
                                 f"{type(b).__name__}, takes {b.base_shape}")
        super().__init__(parts)
        self.shape = parts[-1].shape
        self.base_shape = parts[0].base_shape

    def extra_repr(self) -> str:
        return f"shape={self.shape}, base_shape={self.base_shape}"


class ImageInverse(_ImageProtocol, Inverse):
    """The inverse of an image bijection: directions and shapes swapped, log-dets negated."""

    def __init__(self, bijection: Bijection) -> None:
        super().__init__(bijection)
        self.shape = bijection.base_shape  # type: ignore[attr-defined]
        self.base_shape = bijection.shape  # type: ignore[attr-defined]

    @property
    def inv(self) -> Transform:
        return self.bijection


class ConditionedImageBijection(ConditionedBijection):
    """An image bijection bound to one context: a parameter-free Transform with 3-D events."""

    domain = constraints.independent(constraints.real, 3)
    codomain = constraints.independent(constraints.real, 3)

    def _call(self, z: Tensor) -> Tensor:
        check_image(z, self.bijection.base_shape)  # type: ignore[attr-defined]
        return self.call_and_ladj(z)[0]

    def _inverse(self, x: Tensor) -> Tensor:
        check_image(x, self.bijection.shape)  # type: ignore[attr-defined]
        return self.inverse_and_ladj(x)[0]

    def forward_shape(self, shape: torch.Size) -> torch.Size:
        return torch.Size(tuple(shape)[:-3] + self.bijection.shape)  # type: ignore[attr-defined]

    def inverse_shape(self, shape: torch.Size) -> torch.Size:
        return torch.Size(tuple(shape)[:-3] + self.bijection.base_shape)  # type: ignore[attr-defined]
