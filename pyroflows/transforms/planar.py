r"""Planar flows (Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015, https://arxiv.org/abs/1505.05770).

A planar layer moves every point along one direction :math:`\hat u` by an amount that depends
on its position along another, :math:`w`:

.. math::
    x = z + \hat u\, h(w^\top z + b), \qquad
    \log|\det J| = \log\bigl(1 + h'(w^\top z + b)\, w^\top \hat u\bigr),

with :math:`h = \tanh`. It is invertible when :math:`w^\top \hat u \ge -1`; the paper's
reparametrisation :math:`\hat u = u + (m(w^\top u) - w^\top u)\, w / \|w\|^2` with
:math:`m(a) = -1 + \operatorname{softplus}(a)` gives :math:`w^\top \hat u = m(w^\top u) > -1`
for every value of the free parameters.

Inverse: :math:`\alpha = w^\top z` solves the scalar equation
:math:`\alpha + w^\top \hat u\, h(\alpha + b) = w^\top x`, increasing in :math:`\alpha` and
bracketed by :math:`w^\top x \pm |w^\top \hat u|` (as :math:`|h| \le 1`); it is solved by
batched bisection (:func:`~pyroflows.numerics.bisection.monotone_inverse`, implicit
gradients), then :math:`z = x - \hat u\, h(\alpha + b)`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..numerics.bisection import monotone_inverse
from .amortized import AmortizedBijection, network_options

__all__ = ["Planar", "tanh_derivative"]


def tanh_derivative(a: Tensor) -> Tensor:
    """:math:`1 - \\tanh^2(a)`, computed as :math:`4 / (e^{a} + e^{-a})^2` with no cancellation."""
    return torch.cosh(a).reciprocal().square()


@network_options
class Planar(AmortizedBijection):
    r"""One planar layer :math:`x = z + \hat u \tanh(w^\top z + b)` (Rezende & Mohamed 2015).

    See the module docstring for the map, the invertibility reparametrisation and the inverse.
    **Fast direction: sampling** (one pass, :math:`O(d)`); the inverse is a bracketed scalar
    bisection (``iterations`` evaluations of an :math:`O(1)` function per point).

    Args:
        features: event size :math:`d`.
        context: context size; the conditional layer's :math:`(u, w, b)` are free parameters
            plus an MLP of the context.
        iterations: bisection steps of the inverse (default: the dtype's resolution).
        network: ``hidden`` and ``activation`` of the context network
            (:class:`~pyroflows.nn.AmortizedParameters`).

    Example:
        >>> t = Planar(3)
        >>> x, ladj = t.call_and_ladj(torch.randn(5, 3))  # one pass
        >>> z, minus_ladj = t.inverse_and_ladj(x)  # a scalar bisection per point
        >>> ladj.shape, bool(torch.allclose(ladj, -minus_ladj, atol=1e-6))
        (torch.Size([5]), True)
    """

    fast_direction = "forward"

    def __init__(
        self, features: int, context: int = 0, *, iterations: int | None = None, **network: Any
    ) -> None:
        # u = 0 (identity at start), w random (so that u gets a gradient), b = 0.
        w = torch.randn(features) / features**0.5
        init = torch.cat([torch.zeros(features), w, torch.zeros(1)])
        super().__init__(features, context, init, **network)
        self.iterations = iterations

    def _uwb(self, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(u_hat, w, b, q)`` with ``q = 1 + w . u_hat = softplus(w . u) > 0``.

        ``q`` is kept separately (never as ``1 + m`` with ``m`` near -1), so the slopes
        ``1 + h' w.u_hat = tanh^2 + sech^2 q`` are sums of non-negative terms: no cancellation
        and strictly positive in floating point (``q`` is clamped to the dtype's tiny).
        """
        d = self.features
        p = self.params(context)
        u, w, b = p[..., :d], p[..., d : 2 * d], p[..., 2 * d]
        wu = (w * u).sum(-1)
        wsq = (w * w).sum(-1).clamp_min(torch.finfo(p.dtype).tiny)
        q = F.softplus(wu).clamp_min(torch.finfo(p.dtype).tiny)
        u_hat = u + ((q - 1 - wu) / wsq)[..., None] * w
        return u_hat, w, b, q

    @staticmethod
    def _log_slope(a: Tensor, q: Tensor) -> Tensor:
        # log(1 + h'(a) (q - 1)) = log(tanh(a)^2 + sech(a)^2 q)
        return torch.log(torch.tanh(a).square() + tanh_derivative(a) * q)

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u_hat, w, b, q = self._uwb(context)
        a = (w * z).sum(-1) + b
        x = z + u_hat * torch.tanh(a)[..., None]
        return x, self._log_slope(a, q)

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        u_hat, w, b, q = self._uwb(context)
        m = q - 1  # w . u_hat
        target = (w * x).sum(-1)
        radius = m.abs()
        alpha = monotone_inverse(
            lambda t: t + m * torch.tanh(t + b),
            lambda t: torch.tanh(t + b).square() + tanh_derivative(t + b) * q,
            target,
            target - radius,
            target + radius,
            self.iterations,
        )
        a = alpha + b
        z = x - u_hat * torch.tanh(a)[..., None]
        return z, -self._log_slope(a, q)
