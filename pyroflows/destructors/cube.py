r"""Between real space and the unit cube: the uniform base on :math:`[0,1]^d` and the
elementwise standard-normal CDF :math:`\Phi` and its inverse as bijections.

A destructor's :meth:`~pyroflows.destructors.Destructor.as_flow` uses :class:`UnitCube` as the
base (or a standard normal followed by :class:`StandardNormalCdf`); deep destructors put
:class:`InverseNormalCdf` before a layer that expects real data.
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ..transforms.base import Bijection
from .domain import UNIT
from .special import normal_cdf, normal_icdf, normal_log_pdf

__all__ = ["InverseNormalCdf", "StandardNormalCdf", "UnitCube"]


class _ClosedUniform(dist.Uniform):
    """Uniform whose log-density is finite on the closed interval (destructors reach 1.0)."""

    def log_prob(self, value: Tensor) -> Tensor:
        inside = (value >= self.low) & (value <= self.high)
        log_density = -(self.high - self.low).log()
        shape = torch.broadcast_shapes(value.shape, log_density.shape)
        return torch.where(
            inside,
            log_density.expand(shape),
            torch.full(shape, -torch.inf, dtype=value.dtype, device=value.device),
        )


class UnitCube(nn.Module):
    """Uniform base on :math:`[0,1]^d` that follows the module's device and dtype (buffers).

    Args:
        features: dimension :math:`d`.

    Example:
        >>> UnitCube(2)().log_prob(torch.tensor([0.5, 1.0]))
        tensor(0.)
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = features
        self.register_buffer("low", torch.zeros(features))
        self.register_buffer("high", torch.ones(features))

    def forward(self, batch_shape: torch.Size = torch.Size()) -> dist.TorchDistribution:
        base = _ClosedUniform(self.low, self.high, validate_args=False).to_event(1)
        return base.expand(batch_shape) if batch_shape else base


class StandardNormalCdf(Bijection):
    r""":math:`u = \Phi(z)` elementwise: real :math:`\to` unit cube (not fitted, no parameters).

    ``log|det du/dz| = sum_i log phi(z_i)``; shapes ``(..., features)`` in, the same out.

    Example:
        >>> StandardNormalCdf(2)(torch.zeros(1, 2))
        tensor([[0.5000, 0.5000]])
    """

    codomain = UNIT

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return normal_cdf(z), normal_log_pdf(z).sum(-1)

    def inverse_and_ladj(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z = normal_icdf(u)
        return z, -normal_log_pdf(z).sum(-1)


class InverseNormalCdf(Bijection):
    r""":math:`z = \Phi^{-1}(u)` elementwise: unit cube :math:`\to` real (clamped at the faces).

    ``log|det dz/du| = -sum_i log phi(z_i)``; shapes ``(..., features)`` in, the same out.

    Example:
        >>> InverseNormalCdf(2)(torch.full((1, 2), 0.5))
        tensor([[0., 0.]])
    """

    domain = UNIT

    def call_and_ladj(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z = normal_icdf(u)
        return z, -normal_log_pdf(z).sum(-1)

    def inverse_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return normal_cdf(z), normal_log_pdf(z).sum(-1)
