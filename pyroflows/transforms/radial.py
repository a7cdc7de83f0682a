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

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .amortized import AmortizedBijection, network_options

__all__ = ["Radial"]


@network_options
class Radial(AmortizedBijection):
    r"""One radial layer :math:`x = z + \beta (z - z_0) / (\alpha + \|z - z_0\|)`.

    See the module docstring for the map, its constraint and its closed-form inverse.
    **Fast in both directions** (one :math:`O(d)` pass each way).

    Args:
        features: event size :math:`d`.
        context: context size; the conditional layer's :math:`(z_0, \tilde\alpha,
            \tilde\beta)` are free parameters plus an MLP of the context.
        network: ``hidden`` and ``activation`` of the context network
            (:class:`~pyroflows.nn.AmortizedParameters`).

    Example:
        >>> t = Radial(2)
        >>> z = torch.randn(5, 2)
        >>> (t.inv(t(z)) - z).abs().max() < 1e-6  # the inverse is in closed form
        tensor(True)
    """

    fast_direction = "both"

    def __init__(self, features: int, context: int = 0, **network: Any) -> None:
        # A random centre per layer; alpha~ = beta~ = 0 gives alpha = log 2, beta = 0 (identity).
        init = torch.cat([torch.randn(features), torch.zeros(2)])
        super().__init__(features, context, init, **network)

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
        # tiny keeps the gradient of the norm finite at the centre. Far out (an entry above
        # max ** (1/4)) the entries are scaled by the largest first, so the square cannot
        # overflow; below, the scale is 1 (the plain formula, bit for bit).
        big = torch.finfo(y.dtype).max ** 0.25
        m = y.abs().amax(-1).detach()
        m = torch.where(m > big, m, torch.ones_like(m))
        return ((y / m[..., None]).square().sum(-1) + torch.finfo(y.dtype).tiny).sqrt() * m

    def _ladj(self, r: Tensor, alpha: Tensor, gamma: Tensor) -> Tensor:
        log_ar = torch.log(alpha + r)
        first = (self.features - 1) * (torch.log(r + gamma) - log_ar)
        # r^2 + 2 alpha r + alpha gamma = (alpha + r)^2 + alpha (gamma - alpha): far out
        # (r > max ** (1/4), where r^2 would overflow) the log of the ratio is a log1p.
        big = torch.finfo(r.dtype).max ** 0.25
        near, far = r.clamp_max(big), r.clamp_min(big)
        return torch.where(
            r > big,
            first + torch.log1p(alpha * (gamma - alpha) / (alpha + far).square()),
            first + torch.log(near * near + 2 * alpha * near + alpha * gamma) - 2 * log_ar,
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
        # sqrt(b^2 + 4 alpha rho); far out (|b| > max ** (1/4)) as a hypot: b^2 would overflow.
        big = torch.finfo(b.dtype).max ** 0.25
        near = b.clamp(-big, big)
        s = torch.where(
            b.abs() > big,
            torch.hypot(b, 2 * (alpha * rho).sqrt()),
            (near * near + 4 * alpha * rho).sqrt(),
        )
        # The positive root of r^2 + b r - alpha rho = 0, without cancellation either side.
        r = torch.where(b > 0, 2 * alpha * rho / (b + s), (s - b) / 2)
        z = z0 + ((alpha + r) / (r + gamma))[..., None] * y
        return z, -self._ladj(r, alpha, gamma)
