r"""The transform abstraction every pyroflows family builds on, for every event shape.

A :class:`Bijection` is a Pyro :class:`~pyro.distributions.TransformModule` (so it drops into
``dist.TransformedDistribution`` and Pyro autoguides) and a
:class:`~pyro.distributions.conditional.ConditionalTransform` (so it drops into
``dist.ConditionalTransformedDistribution``). Subclasses implement two methods,

* ``call_and_ladj(z, context) -> (x, log|det dx/dz|)``
* ``inverse_and_ladj(x, context) -> (z, log|det dz/dx|)``

and everything else (``T(z)``, ``T.inv(x)``, ``log_abs_det_jacobian``, conditioning,
composition, inversion, shape checks) is derived here, with no cache needed for correctness.

Conventions: the transform maps base ``z`` of event shape ``base_shape`` to data ``x`` of event
shape ``shape`` (vectors ``(D,)``; images ``(C, H, W)``; the two differ for a squeeze, and hold
the same number of values, ``features``). The log-determinant is summed over the event
dimensions, so it has the broadcast batch shape of the input and the context.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from pyro.distributions import TransformModule
from pyro.distributions.conditional import ConditionalTransform
from torch import Tensor, nn
from torch.distributions import Transform, constraints

from ..checks import (
    check_batch,
    check_context,
    check_count,
    check_event,
    check_finite,
    check_floating,
    check_shape,
    validates,
)
from .conventions import fast_direction_of, real_events, swap_direction

__all__ = ["Bijection", "Compose", "ConditionedBijection", "Inverse"]


def _event_shape(features: int | Sequence[int], what: str) -> tuple[int, ...]:
    """An int ``d`` is the vector shape ``(d,)`` (worded as a feature count when bad); a
    sequence is kept as an event shape."""
    if isinstance(features, Sequence) and not isinstance(features, str):
        return check_shape(features, what)
    return (check_count(what, features, 1),)


class Bijection(TransformModule, ConditionalTransform):
    r"""Base class of every pyroflows transform: an invertible map :math:`x = T(z; c)`.

    Args:
        features: the data-side event shape: an int :math:`d` for vectors (shape ``(d,)``) or
            a tuple such as :math:`(C, H, W)` for images.
        context: size of the conditioning vector :math:`c`; ``0`` for an unconditional
            transform.
        base_shape: the base-side event shape (default: the same); it must hold as many
            values (a squeeze maps :math:`(4C, H/2, W/2)` noise to :math:`(C, H, W)` data).

    Attributes: ``shape`` and ``base_shape`` (tuples), ``features`` (the number of values,
    :math:`\prod` shape), ``context_features``, ``domain``/``codomain``
    (:math:`\mathbb{R}` over ``len(base_shape)``/``len(shape)`` event dimensions).

    A conditional bijection is used through :meth:`condition`, which returns a plain
    :class:`~torch.distributions.Transform` bound to one context (a fresh object; the module
    itself is never mutated). An unconditional bijection's ``condition`` returns itself, so any
    pyroflows transform can sit inside ``dist.ConditionalTransformedDistribution``.

    Subclasses set :attr:`fast_direction` (``"both"``, ``"forward"`` i.e. sampling, or
    ``"inverse"`` i.e. density) and implement :meth:`call_and_ladj` and
    :meth:`inverse_and_ladj`, whose log-determinants have shape ``z.shape[:-len(shape)]``
    broadcast with the context's batch shape.

    Example:
        >>> from pyroflows.transforms import LULinear, Squeeze
        >>> LULinear(3).shape, Squeeze((1, 4, 4)).base_shape
        ((3,), (4, 2, 2))
    """

    bijective = True
    fast_direction: str = "both"

    def __init__(
        self,
        features: int | Sequence[int],
        context: int = 0,
        base_shape: Sequence[int] | None = None,
    ) -> None:
        shape = _event_shape(features, "features")
        base = shape if base_shape is None else check_shape(base_shape, "base_shape")
        if math.prod(shape) != math.prod(base):
            raise ValueError(
                f"shape {shape} and base_shape {base} hold different numbers of values"
            )
        context = check_count("context", context, 0)
        super().__init__(cache_size=0)
        self.shape = shape
        self.base_shape = base
        self.features = math.prod(shape)
        self.context_features = context

    # Properties rather than class attributes, because the rank follows the instance's shape;
    # a subclass with a narrower support (a destructor's unit cube) overrides them.
    @property
    def domain(self) -> constraints.Constraint:  # type: ignore[override]
        return real_events(len(self.base_shape))

    @property
    def codomain(self) -> constraints.Constraint:  # type: ignore[override]
        return real_events(len(self.shape))

    # -- what subclasses implement -------------------------------------------------------------

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Map base ``z`` to data ``x``; return ``(x, log|det dx/dz|)``."""
        raise NotImplementedError

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Map data ``x`` to base ``z``; return ``(z, log|det dz/dx|)``."""
        raise NotImplementedError

    # -- torch.distributions.Transform protocol (unconditional use) ------------------------------

    def _call(self, z: Tensor) -> Tensor:
        _check_input(z, self.base_shape)
        check_context(None, self.context_features)
        return self.call_and_ladj(z)[0]

    def _inverse(self, x: Tensor) -> Tensor:
        _check_input(x, self.shape)
        check_context(None, self.context_features)
        return self.inverse_and_ladj(x)[0]

    def log_abs_det_jacobian(self, z: Tensor, x: Tensor) -> Tensor:
        """``log|det dx/dz|``, computed from whichever side is a single pass (no cache)."""
        check_context(None, self.context_features)
        return _ladj_from_fast_side(self, z, x)

    # -- conditioning and composition ----------------------------------------------------------

    def condition(self, context: Tensor | None) -> Transform:
        """Bind a context; returns a :class:`ConditionedBijection`.

        An unconditional bijection returns itself whatever the context, as Pyro's
        ``ConstantConditionalTransform`` does, so conditional and unconditional layers mix in
        ``dist.ConditionalTransformedDistribution``.
        """
        if self.context_features == 0:
            return self
        check_context(context, self.context_features)
        return ConditionedBijection(self, context)

    @property
    def inv(self) -> Transform:
        """The inverse transform (pyroflows' :class:`Inverse`, so its parameters stay registered)."""
        return Inverse(self)

    def with_cache(self, cache_size: int = 1) -> Transform:
        if cache_size == 0:
            return self
        raise NotImplementedError(
            "pyroflows transforms do not cache: call_and_ladj / inverse_and_ladj return the "
            "log-determinant together with the output"
        )

    def forward_shape(self, shape: torch.Size) -> torch.Size:
        """The output shape for an input of ``shape`` (batch dims, then ``base_shape``)."""
        return _reshape_event(shape, self.base_shape, self.shape)

    def inverse_shape(self, shape: torch.Size) -> torch.Size:
        """The input shape for an output of ``shape`` (batch dims, then ``shape``)."""
        return _reshape_event(shape, self.shape, self.base_shape)

    def extra_repr(self) -> str:
        text = f"features={self.features}" if len(self.shape) == 1 else f"shape={self.shape}"
        if self.base_shape != self.shape:
            text += f", base_shape={self.base_shape}"
        if self.context_features:
            text += f", context={self.context_features}"
        return text

    def __repr__(self) -> str:  # nn.Module's repr, not Transform's
        return nn.Module.__repr__(self)


def _reshape_event(shape: Sequence[int], old: tuple[int, ...], new: tuple[int, ...]) -> torch.Size:
    if old == new:
        return torch.Size(shape)
    return torch.Size(tuple(shape)[: len(shape) - len(old)] + new)


def _check_input(v: Tensor, shape: tuple[int, ...]) -> None:
    """The checks at a transform's public entry (``t(z)``, ``t.inv(x)``): the event shape, a
    floating dtype and, under Pyro's validation (``pyro.enable_validation``, the default),
    finite values. A NaN or infinite entry would otherwise come out as NaN (it is not a point
    of R^d). The composed bijections' own ``call_and_ladj`` and
    ``inverse_and_ladj`` (the paths a flow's ``log_prob`` and ``rsample`` take) skip this: one
    check per call, not per layer."""
    check_event(v, shape)
    check_floating(v)
    if validates(None):
        check_finite(v, "input")


def _ladj_from_fast_side(t: Bijection | ConditionedBijection, z: Tensor, x: Tensor) -> Tensor:
    fast = t.bijection.fast_direction if isinstance(t, ConditionedBijection) else t.fast_direction
    if fast == "inverse":
        return -t.inverse_and_ladj(x)[1]
    return t.call_and_ladj(z)[1]


class ConditionedBijection(Transform):
    """A :class:`Bijection` bound to one context: a plain, parameter-free Transform view with
    the bijection's shapes, support and checks.

    Example:
        >>> from pyroflows.transforms import AffineMap, Coupling
        >>> t = Coupling(2, AffineMap(), context=1).condition(torch.zeros(5, 1))
        >>> t(torch.zeros(5, 2)).shape, t.shape
        (torch.Size([5, 2]), (2,))
    """

    bijective = True

    def __init__(self, bijection: Bijection, context: Tensor) -> None:
        super().__init__(cache_size=0)
        self.bijection = bijection
        self.context = context

    @property
    def domain(self) -> constraints.Constraint:  # type: ignore[override]
        return self.bijection.domain

    @property
    def codomain(self) -> constraints.Constraint:  # type: ignore[override]
        return self.bijection.codomain

    @property
    def features(self) -> int:
        return self.bijection.features

    @property
    def shape(self) -> tuple[int, ...]:
        return self.bijection.shape

    @property
    def base_shape(self) -> tuple[int, ...]:
        return self.bijection.base_shape

    def call_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.bijection.call_and_ladj(z, self.context)

    def inverse_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.bijection.inverse_and_ladj(x, self.context)

    def _call(self, z: Tensor) -> Tensor:
        self._check(z, self.base_shape)
        return self.call_and_ladj(z)[0]

    def _inverse(self, x: Tensor) -> Tensor:
        self._check(x, self.shape)
        return self.inverse_and_ladj(x)[0]

    def _check(self, v: Tensor, shape: tuple[int, ...]) -> None:
        _check_input(v, shape)
        # The input's batch must broadcast with the context's rows.
        check_batch(v.shape[: v.dim() - len(shape)], self.context.shape[:-1], "input")

    def log_abs_det_jacobian(self, z: Tensor, x: Tensor) -> Tensor:
        return _ladj_from_fast_side(self, z, x)

    def forward_shape(self, shape: torch.Size) -> torch.Size:
        return self.bijection.forward_shape(shape)

    def inverse_shape(self, shape: torch.Size) -> torch.Size:
        return self.bijection.inverse_shape(shape)


class Inverse(Bijection):
    """The inverse of a bijection, as a module: swaps the two directions and the two shapes,
    and negates log-dets.

    Example:
        >>> from pyroflows.transforms import LULinear
        >>> t = LULinear(3)
        >>> z = torch.randn(5, 3)
        >>> torch.allclose(Inverse(t)(t(z)), z, atol=1e-5)
        True
    """

    def __init__(self, bijection: Bijection) -> None:
        super().__init__(
            bijection.base_shape, bijection.context_features, base_shape=bijection.shape
        )
        self.bijection = bijection
        self.fast_direction = swap_direction(bijection.fast_direction)

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.bijection.inverse_and_ladj(z, context)

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.bijection.call_and_ladj(x, context)

    @property
    def inv(self) -> Transform:
        return self.bijection


class Compose(Bijection):
    r"""A chain of bijections applied in order, ``x = T_n(...T_2(T_1(z)))``.

    Each part's data side must be the next part's base side (``parts[k].shape ==
    parts[k + 1].base_shape``; for vectors: the same ``features``); the chain's ``base_shape``
    is the first part's and its ``shape`` the last part's. A context, when given, goes to every
    conditional part (unconditional parts ignore it), so conditional and unconditional layers
    mix freely.

    Args:
        parts: the bijections, listed from the base side to the data side.

    Example:
        >>> from pyroflows.transforms import LULinear, Squeeze
        >>> Compose([LULinear(2), LULinear(2)]).shape
        (2,)
        >>> t = Compose([Squeeze((4, 4, 4)), Squeeze((1, 8, 8))])
        >>> t.base_shape, t.shape
        ((16, 2, 2), (1, 8, 8))
    """

    def __init__(self, parts: Sequence[Bijection]) -> None:
        parts = list(parts)
        if not parts:
            raise ValueError("Compose needs at least one bijection")
        for p in parts:
            if not isinstance(p, Bijection):
                raise TypeError(f"Compose takes pyroflows Bijections, got {type(p).__name__}")
        if all(len(p.shape) == len(p.base_shape) == 1 for p in parts):
            if len({p.features for p in parts}) > 1:
                raise ValueError(
                    f"all parts must have the same features, got {[p.features for p in parts]}"
                )
        for a, b in zip(parts[:-1], parts[1:]):
            if a.shape != b.base_shape:
                raise ValueError(
                    f"{type(a).__name__} outputs shape {a.shape} but the next part, "
                    f"{type(b).__name__}, takes {b.base_shape}"
                )
        if len({p.context_features for p in parts if p.context_features}) > 1:
            raise ValueError("conditional parts must all take the same context size")
        super().__init__(
            parts[-1].shape, max(p.context_features for p in parts), base_shape=parts[0].base_shape
        )
        self.parts = nn.ModuleList(parts)
        self.fast_direction = fast_direction_of(p.fast_direction for p in parts)

    def _context_for(self, part: Bijection, context: Tensor | None) -> Tensor | None:
        return context if part.context_features else None

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = 0.0
        for part in self.parts:
            z, ladj = part.call_and_ladj(z, self._context_for(part, context))
            total = total + ladj
        return z, total

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = 0.0
        for part in reversed(self.parts):
            x, ladj = part.inverse_and_ladj(x, self._context_for(part, context))
            total = total + ladj
        return x, total
