r"""A rational-quadratic spline followed by an affine map: the transformer that lets a spline
layer also change scale and location outside its interval (used by the ``nsf-iaf`` preset)."""

from __future__ import annotations

import torch
from torch import Tensor

from .elementwise import ElementwiseMap, broadcast_params, soft_clamp
from .splines import SplineMap

__all__ = ["AffineSplineMap"]


class AffineSplineMap(ElementwiseMap):
    r"""A rational-quadratic spline :math:`g` followed by an affine map, :math:`v = t + e^{s}\,g(u)`.

    .. math:: \log\left|\frac{dv}{du}\right| = \log g'(u) + s, \qquad s = b\tanh(\tilde s / b).

    A spline alone is the identity outside :math:`[-B, B]`, so it cannot rescale the tails;
    the affine stage does. Parameters per feature: the spline's ``3 * bins - 1``, then the
    shift :math:`t` and the raw log-scale :math:`\tilde s` (``num_params = 3 * bins + 1``, or ``3 * bins + 3`` with linear tails).
    All-zero parameters give the identity. Shapes: ``u`` (..., D), ``params``
    (..., D, num_params), outputs (..., D).

    Args:
        bins: spline bins :math:`K`.
        bound: spline half-width :math:`B`.
        log_scale_bound: the bound :math:`b` on the affine log-scale.
        tails: the spline's tails, ``"identity"`` or ``"linear"`` (learned slopes, two more
            parameters; see :class:`~pyroflows.transforms.SplineMap`).

    Example:
        >>> m = AffineSplineMap(bins=4)
        >>> u, params = torch.randn(5, 2), 0.1 * torch.randn(5, 2, m.num_params)
        >>> v, ladj = m(u, params)
        >>> torch.allclose(m.inverse(v, params)[0], u, atol=1e-5)
        True
    """

    def __init__(
        self,
        bins: int = 8,
        bound: float = 5.0,
        log_scale_bound: float = 6.0,
        tails: str = "identity",
    ) -> None:
        super().__init__()
        self.spline = SplineMap(bins, bound, tails=tails)
        self.log_scale_bound = float(log_scale_bound)
        self.num_params = self.spline.num_params + 2

    def _affine(self, params: Tensor) -> tuple[Tensor, Tensor]:
        return params[..., -2], soft_clamp(params[..., -1], self.log_scale_bound)

    def forward(self, u: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        u, params = broadcast_params(u, params)
        g, ladj = self.spline(u, params[..., :-2])
        shift, log_scale = self._affine(params)
        return shift + log_scale.exp() * g, ladj + log_scale

    def inverse(self, v: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        v, params = broadcast_params(v, params)
        shift, log_scale = self._affine(params)
        u, ladj = self.spline.inverse((v - shift) * torch.exp(-log_scale), params[..., :-2])
        return u, ladj - log_scale
