r"""Special functions the destructors share: the standard normal CDF, its inverse and log-pdf
with the clamps that keep them finite, and the regularised incomplete Beta function (which
torch lacks).

Clamp convention (documented on every destructor): before :math:`\Phi^{-1}`, values are clamped
into ``[eps/2, 1 - eps/2]`` of the dtype, the symmetric range the upper side can resolve. That
caps :math:`|\Phi^{-1}(u)|` at about 8.2 in float64 (5.3 in float32) on *both* sides: nothing
becomes infinite or NaN, and a point far out in one tail cannot pick up a huge spurious
Jacobian factor (an asymmetric clamp, 37.5 below but 8.2 above, would let a stack of layers
assign absurd densities to outliers). Points beyond about 8.2 standard deviations of a
Gaussian-CDF layer are therefore not exactly invertible; their density stays finite.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "betainc",
    "beta_log_pdf",
    "clamp_open_unit",
    "normal_cdf",
    "normal_icdf",
    "normal_log_pdf",
]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def clamp_open_unit(u: Tensor) -> Tensor:
    """Clamp into ``[eps/2, 1 - eps/2]``: the open unit interval, symmetric about 1/2."""
    half_eps = torch.finfo(u.dtype).eps / 2
    return u.clamp(half_eps, 1 - half_eps)


def normal_cdf(z: Tensor) -> Tensor:
    r""":math:`\Phi(z)`."""
    return torch.special.ndtr(z)


def normal_icdf(u: Tensor) -> Tensor:
    r""":math:`\Phi^{-1}(u)` after :func:`clamp_open_unit` (finite for any ``u`` in ``[0, 1]``)."""
    return torch.special.ndtri(clamp_open_unit(u))


def normal_log_pdf(z: Tensor) -> Tensor:
    r""":math:`\log \varphi(z) = -z^2/2 - \log\sqrt{2\pi}`."""
    return -0.5 * z * z - _HALF_LOG_2PI


def beta_log_pdf(x: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Log-density of Beta(a, b) at ``x`` in the open unit interval."""
    log_beta = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
    return (a - 1) * torch.log(x) + (b - 1) * torch.log1p(-x) - log_beta


def _continued_fraction(a: Tensor, b: Tensor, x: Tensor, iterations: int) -> Tensor:
    # Modified Lentz evaluation of the incomplete-Beta continued fraction (Numerical Recipes
    # 6.4), a fixed number of terms for every element (converged terms multiply by exactly 1).
    tiny = torch.finfo(x.dtype).tiny * 1e10

    def guard(v: Tensor) -> Tensor:
        return torch.where(v.abs() < tiny, torch.full_like(v, tiny), v)

    qab, qap, qam = a + b, a + 1, a - 1
    c = torch.ones_like(x)
    d = 1 / guard(1 - qab * x / qap)
    h = d
    for m in range(1, iterations + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1 / guard(1 + aa * d)
        c = guard(1 + aa / c)
        h = h * d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1 / guard(1 + aa * d)
        c = guard(1 + aa / c)
        h = h * d * c
    return h


def betainc(a: Tensor, b: Tensor, x: Tensor, iterations: int = 64) -> Tensor:
    r"""Regularised incomplete Beta function :math:`I_x(a, b)`, the Beta(a, b) CDF.

    Vectorised continued fraction with a fixed number of terms (accurate to float64 precision
    for shape parameters up to a few hundred). Differentiable in ``a`` and ``b`` through the
    fraction; the derivative in ``x`` is the exact Beta density (attached analytically, so a
    transform using it has an exact Jacobian).

    Args:
        a: first shape parameter (positive).
        b: second shape parameter (positive).
        x: points in ``[0, 1]``.
        iterations: continued-fraction terms.
    """
    a, b, x = torch.broadcast_tensors(a, b, x)
    xd = x.detach().clamp(0, 1)
    swap = xd > (a + 1) / (a + b + 2)
    a2, b2 = torch.where(swap, b, a), torch.where(swap, a, b)
    x2 = torch.where(swap, 1 - xd, xd)
    inner = x2.clamp_min(torch.finfo(x.dtype).tiny)
    log_beta = torch.lgamma(a2) + torch.lgamma(b2) - torch.lgamma(a2 + b2)
    log_front = a2 * torch.log(inner) + b2 * torch.log1p(-inner) - log_beta
    front = torch.where(x2 > 0, torch.exp(log_front), torch.zeros_like(x2))
    value = front * _continued_fraction(a2, b2, x2, iterations) / a2
    value = torch.where(swap, 1 - value, value).clamp(0, 1)
    if x.requires_grad:
        info = torch.finfo(x.dtype)
        inside = xd.clamp(info.tiny, 1 - info.eps / 2)
        density = beta_log_pdf(inside, a, b).exp().detach()
        value = value + density * (x - xd)
    return value
