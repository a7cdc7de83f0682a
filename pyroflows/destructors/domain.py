"""A destructor's input domain as a torch constraint: ``"real"`` vectors or the unit cube."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import constraints

__all__ = ["REAL", "UNIT", "DomainConstraint"]


class DomainConstraint(constraints.Constraint):
    """A destructor's input domain: ``"real"`` (finite vectors) or ``"unit"`` (``[0,1]^d``).

    A torch constraint with ``event_dim = 1`` that also compares equal to its name, so
    ``destructor.domain == "unit"`` reads naturally while ``TransformedDistribution`` still sees
    a constraint.

    Args:
        kind: ``"real"`` or ``"unit"``.

    Example:
        >>> UNIT.check(torch.tensor([[0.2, 1.0], [0.5, 1.5]]))
        tensor([ True, False])
        >>> UNIT == "unit"
        True
    """

    event_dim = 1
    is_discrete = False

    def __init__(self, kind: str) -> None:
        if kind not in ("real", "unit"):
            raise ValueError(f"a destructor domain is 'real' or 'unit', got {kind!r}")
        self.kind = kind
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        if self.kind == "unit":
            return ((value >= 0) & (value <= 1)).all(-1)
        return torch.isfinite(value).all(-1)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return other == self.kind
        return isinstance(other, DomainConstraint) and other.kind == self.kind

    def __hash__(self) -> int:
        return hash(("pyroflows-domain", self.kind))

    def __str__(self) -> str:
        return self.kind

    def __repr__(self) -> str:
        return f"DomainConstraint({self.kind!r})"


REAL = DomainConstraint("real")
UNIT = DomainConstraint("unit")
