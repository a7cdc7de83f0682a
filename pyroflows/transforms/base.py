"""The transform abstraction every pyroflows family builds on.

A :class:`Bijection` is a Pyro :class:`~pyro.distributions.TransformModule` (so it drops into
``dist.TransformedDistribution`` and Pyro autoguides) and a
:class:`~pyro.distributions.conditional.ConditionalTransform` (so it drops into
``dist.ConditionalTransformedDistribution``). Subclasses implement two methods,

* ``call_and_ladj(z, context) -> (x, log|det dx/dz|)``
* ``inverse_and_ladj(x, context) -> (z, log|det dz/dx|)``

and everything else (``T(z)``, ``T.inv(x)``, ``log_abs_det_jacobian``, conditioning,
composition, inversion) is derived here, with no cache needed for correctness.

Conventions: the transform maps base ``z`` to data ``x``; the event is the last dimension
(``features`` values); the log-determinant has the broadcast batch shape of the input and the
context.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pyro.distributions import TransformModule
from pyro.distributions.conditional import ConditionalTransform
from torch import Tensor, nn
from torch.distributions import Transform, constraints

from ..checks import check_context, check_count, check_features

__all__ = ["Bijection", "Compose", "ConditionedBijection", "Inverse"]


class Bijection(TransformModule, ConditionalTransform):
    r"""Base class of every pyroflows transform: an invertible map :math:`x = T(z; c)`.

    Args:
        features: size :math:`d` of the event (the last dimension of ``z`` and ``x``).
        context: size of the conditioning vector :math:`c`; ``0`` for an unconditional
            transform.

    A conditional bijection is used through :meth:`condition`, which returns a plain
    :class:`~torch.distributions.Transform` bound to one context (a fresh object; the module
    itself is never mutated). An unconditional bijection's ``condition`` returns itself, so any
    pyroflows transform can sit inside ``dist.ConditionalTransformedDistribution``.

    Subclasses set :attr:`fast_direction` (``"both"``, ``"forward"`` i.e. sampling, or
    ``"inverse"`` i.e. density) and implement :meth:`call_and_ladj` and
    :meth:`inverse_and_ladj`.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    fast_direction: str = "both"

    def __init__(self, features: int, context: int = 0) -> None:
        features = check_count("features", features, 1)
        context = check_count("context", context, 0)
        super().__init__(cache_size=0)
        self.features = features
        self.context_features = context

    # -- what subclasses implement -------------------------------------------------------------

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Map base ``z`` to data ``x``; return ``(x, log|det dx/dz|)``."""
        raise NotImplementedError

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Map data ``x`` to base ``z``; return ``(z, log|det dz/dx|)``."""
        raise NotImplementedError

    # -- torch.distributions.Transform protocol (unconditional use) ------------------------------

    def _call(self, z: Tensor) -> Tensor:
        check_features(z, self.features)
        check_context(None, self.context_features)
        return self.call_and_ladj(z)[0]

    def _inverse(self, x: Tensor) -> Tensor:
        check_features(x, self.features)
        check_context(None, self.context_features)
        return self.inverse_and_ladj(x)[0]

    def log_abs_det_jacobian(self, z: Tensor, x: Tensor) -> Tensor:
        """``log|det dx/dz|``, computed from whichever side is a single pass (no cache)."""
        check_context(None, self.context_features)
        if self.fast_direction == "inverse":
            return -self.inverse_and_ladj(x)[1]
        return self.call_and_ladj(z)[1]

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
        return shape

    def inverse_shape(self, shape: torch.Size) -> torch.Size:
        return shape

    def extra_repr(self) -> str:
        text = f"features={self.features}"
        if self.context_features:
            text += f", context={self.context_features}"
        return text

    def __repr__(self) -> str:  # nn.Module's repr, not Transform's
        return nn.Module.__repr__(self)


class ConditionedBijection(Transform):
    """A :class:`Bijection` bound to one context: a plain, parameter-free Transform view."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, bijection: Bijection, context: Tensor) -> None:
        super().__init__(cache_size=0)
        self.bijection = bijection
        self.context = context

    @property
    def features(self) -> int:
        return self.bijection.features

    def call_and_ladj(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.bijection.call_and_ladj(z, self.context)

    def inverse_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.bijection.inverse_and_ladj(x, self.context)

    def _call(self, z: Tensor) -> Tensor:
        check_features(z, self.features)
        return self.call_and_ladj(z)[0]

    def _inverse(self, x: Tensor) -> Tensor:
        check_features(x, self.features)
        return self.inverse_and_ladj(x)[0]

    def log_abs_det_jacobian(self, z: Tensor, x: Tensor) -> Tensor:
        if self.bijection.fast_direction == "inverse":
            return -self.inverse_and_ladj(x)[1]
        return self.call_and_ladj(z)[1]


class Inverse(Bijection):
    """The inverse of a bijection, as a module: swaps the two directions and negates log-dets.

    Example:
        >>> from pyroflows.transforms import LULinear
        >>> t = LULinear(3)
        >>> z = torch.randn(5, 3)
        >>> torch.allclose(Inverse(t)(t(z)), z, atol=1e-5)
        True
    """

    def __init__(self, bijection: Bijection) -> None:
        super().__init__(bijection.features, bijection.context_features)
        self.bijection = bijection
        self.fast_direction = {"forward": "inverse", "inverse": "forward"}.get(
            bijection.fast_direction, "both"
        )

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.bijection.inverse_and_ladj(z, context)

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self.bijection.call_and_ladj(x, context)

    @property
    def inv(self) -> Transform:
        return self.bijection


class Compose(Bijection):
    """A chain of bijections applied in order, ``x = T_n(...T_2(T_1(z)))``.

    All parts share the same ``features``; a context, when given, goes to every conditional
    part (unconditional parts ignore it), so conditional and unconditional layers mix freely.

    Args:
        parts: the bijections, listed from the base side to the data side.
    """

    def __init__(self, parts: Sequence[Bijection]) -> None:
        parts = list(parts)
        if not parts:
            raise ValueError("Compose needs at least one bijection")
        for p in parts:
            if not isinstance(p, Bijection):
                raise TypeError(f"Compose takes pyroflows Bijections, got {type(p).__name__}")
        features = parts[0].features
        if any(p.features != features for p in parts):
            raise ValueError(
                f"all parts must have the same features, got {[p.features for p in parts]}"
            )
        super().__init__(features, max(p.context_features for p in parts))
        self.parts = nn.ModuleList(parts)
        directions = {p.fast_direction for p in parts}
        self.fast_direction = directions.pop() if len(directions) == 1 else "both"
        if len({p.context_features for p in parts if p.context_features}) > 1:
            raise ValueError("conditional parts must all take the same context size")

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

    def log_abs_det_jacobian(self, z: Tensor, x: Tensor) -> Tensor:
        if self.fast_direction == "inverse":
            return -self.inverse_and_ladj(x)[1]
        return self.call_and_ladj(z)[1]
