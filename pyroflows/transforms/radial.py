r"""Radial flows (Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015, https://arxiv.org/abs/1505.05770).

A radial layer contracts or expands space around a centre :math:`z_0`:

.. math::
    x = z + \beta\, h(\alpha, r)\,(z - z_0), \qquad r = \|z - z_0\|, \qquad
    h(\alpha, r) = \frac{1}{\alpha + r},

.. math::
    \log|\det J| = (d - 1)\log(1 + \beta h) + \log(1 + \beta h + \beta h' r)
                 = (d - 1)\log(1 + \beta h) + \log(1 + \alpha\beta h^2).

Invertibility needs :math:`\beta \ge -\alpha`; the parametrisation
:math:`\alpha = \operatorname{softplus}(\tilde\alpha) > 0`,
:math:`\beta = -\alpha + \operatorname{softplus}(\tilde\beta) > -\alpha` enforces it for every
value of the free parameters (all-zero free parameters give :math:`\beta = 0`, the identity).

Inverse: the map keeps directions, so with :math:`\rho = \|x - z_0\|` the radius solves the
scalar equation :math:`r + \beta r / (\alpha + r) = \rho`, i.e. the quadratic
:math:`r^2 + (\alpha + \beta - \rho) r - \alpha\rho = 0`, whose one non-negative root is
taken in closed form (in its cancellation-free form); then
:math:`z = z_0 + (x - z_0) / (1 + \beta h(\alpha, r))`. Exact, one pass, no iteration.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .amortized import AmortizedBijection

__all__ = ["Radial"]


class Radial(AmortizedBijection):
    r"""One radial layer :math:`x = z + \beta (z - z_0) / (\alpha + \|z - z_0\|)`.

    See the module docstring for the map, its constraint and its closed-form inverse.
    **Fast in both directions** (one :math:`O(d)` pass each way).

    Args:
        features: event size :math:`d`.
        context: context size; the conditional layer's :math:`(z_0, \tilde\alpha,
            \tilde\beta)` are free parameters plus an MLP of the context.
        hidden: widths of the context network (ignored without context).
        activation: its non-linearity.

    Example:
        >>> t = Radial(2)
        >>> z = torch.randn(5, 2)
        >>> (t.inv(t(z)) - z).abs().max() < 1e-6  # the inverse is in closed form
        tensor(True)
    """

    fast_direction = "both"

    def __init__(
        self,
        features: int,
        context: int = 0,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
    ) -> None:
        # A random centre per layer; alpha~ = beta~ = 0 gives alpha = log 2, beta = 0 (identity).
        init = torch.cat([torch.randn(features), torch.zeros(2)])
        super().__init__(features, context, init, hidden, activation)

    def radial_params(self, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``(z0, alpha, gamma)`` with ``gamma = alpha + beta = softplus(beta~) > 0``.

        Every formula below uses ``gamma`` rather than ``beta`` (which is close to ``-alpha``
        exactly where the layer is nearly singular), so the factors
        ``1 + beta h = (r + gamma) / (alpha + r)`` and
        ``1 + alpha beta h^2 = (r^2 + 2 alpha r + alpha gamma) / (alpha + r)^2`` are ratios of
        sums of positive terms: accurate, and positive in floating point.
        """
        p = self.params(context)
        d = self.features
        tiny = torch.finfo(p.dtype).tiny
        alpha = F.softplus(p[..., d]).clamp_min(tiny)
        gamma = F.softplus(p[..., d + 1]).clamp_min(tiny)
        return p[..., :d], alpha, gamma

    @staticmethod
    def _norm(y: Tensor) -> Tensor:
        # tiny keeps the gradient of the norm finite at the centre.
        return (y.square().sum(-1) + torch.finfo(y.dtype).tiny).sqrt()

    def _ladj(self, r: Tensor, alpha: Tensor, gamma: Tensor) -> Tensor:
        log_ar = torch.log(alpha + r)
        return (
            (self.features - 1) * (torch.log(r + gamma) - log_ar)
            + torch.log(r * r + 2 * alpha * r + alpha * gamma)
            - 2 * log_ar
        )

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z0, alpha, gamma = self.radial_params(context)
        y = z - z0
        r = self._norm(y)
        x = z0 + ((r + gamma) / (alpha + r))[..., None] * y
        return x, self._ladj(r, alpha, gamma)

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z0, alpha, gamma = self.radial_params(context)
        y = x - z0
        rho = self._norm(y)
        b = gamma - rho  # alpha + beta - rho
        s = (b * b + 4 * alpha * rho).sqrt()
        # The positive root of r^2 + b r - alpha rho = 0, without cancellation either side.
        r = torch.where(b > 0, 2 * alpha * rho / (b + s), (s - b) / 2)
        z = z0 + ((alpha + r) / (r + gamma))[..., None] * y
        return z, -self._ladj(r, alpha, gamma)
