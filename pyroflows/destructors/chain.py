r"""Destructors made of parts applied in order: :math:`D = d_n \circ \dots \circ d_1`, with
:math:`\log p(x) = \sum_t \log|\det J_{d_t}(x^{t-1})|` where :math:`x^t = d_t(x^{t-1})`.

:class:`Stack` holds the machinery every such destructor shares (the two passes and the fast
direction of the whole); :class:`Chain` is a fixed list of parts fitted one after the other
(the copula layer is one), and :class:`~pyroflows.destructors.DeepDestructor` a stack grown
greedily.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..transforms.base import Bijection
from ..transforms.conventions import fast_direction_of
from .base import Destructor, mark_fitted
from .domain import REAL, UNIT

__all__ = ["Chain", "Stack"]


class Stack(Destructor):
    """A destructor that applies the bijections of :meth:`stack` in order, data side first.

    Subclasses hold the bijections (in an ``nn.ModuleList``) and return them from
    :meth:`stack`; the passes add the parts' log-determinants and :attr:`fast_direction`
    follows from the parts' by :func:`~pyroflows.transforms.conventions.fast_direction_of`.
    """

    def stack(self) -> Sequence[Bijection]:
        """The bijections, data side first."""
        raise NotImplementedError

    @property
    def fast_direction(self) -> str:  # type: ignore[override]
        return fast_direction_of(part.fast_direction for part in self.stack())

    def call_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[:-1])
        for part in self.stack():
            x, ladj = part.call_and_ladj(x)
            total = total + ladj
        return x, total

    def inverse_and_ladj(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = u.new_zeros(u.shape[:-1])
        for part in reversed(self.stack()):
            u, ladj = part.inverse_and_ladj(u)
            total = total + ladj
        return u, total


class Chain(Stack):
    """Bijections applied in order, the last mapping onto the cube; fitted part by part.

    ``Chain([InverseNormalCdf(d), PCARotation(d), NormalCdfDestructor(d)])`` is a destructor
    on the cube: each fittable part (one with ``_fit``) is fitted on the output of the parts
    before it, and the sum of the log-determinants is the chain's log-density. The chain's
    domain is its first part's.

    Args:
        parts: pyroflows bijections, data side first; the last must map onto the cube.

    Example:
        >>> from pyroflows.destructors import InverseNormalCdf, NormalCdfDestructor, PCARotation
        >>> chain = Chain([InverseNormalCdf(2), PCARotation(2), NormalCdfDestructor(2)])
        >>> chain.domain == "unit", chain.fast_direction
        (True, 'both')
    """

    def __init__(self, parts: Sequence[Bijection]) -> None:
        parts = list(parts)
        if not parts:
            raise ValueError("Chain needs at least one part")
        features = parts[0].features
        if any(p.features != features for p in parts):
            raise ValueError(
                f"all parts must have the same features, got {[p.features for p in parts]}"
            )
        if parts[-1].codomain is not UNIT and parts[-1].codomain != "unit":
            raise ValueError("the last part of a Chain must map onto the unit cube")
        super().__init__(features)
        self.parts = nn.ModuleList(parts)
        self.domain = UNIT if parts[0].domain == "unit" else REAL

    def stack(self) -> Sequence[Bijection]:
        return self.parts

    def min_points(self) -> int:
        return max((p.min_points() for p in self.parts if hasattr(p, "min_points")), default=2)

    def _fit(self, x: Tensor, w: Tensor) -> None:
        for part in self.parts:
            if hasattr(part, "_fit"):
                part._fit(x, w)
                mark_fitted(part)
            x = part.call_and_ladj(x)[0]
