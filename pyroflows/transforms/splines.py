r"""Monotonic rational-quadratic splines (Gregory & Delbourgo 1982, https://doi.org/10.1093/imanum/2.2.123; Durkan et al., "Neural Spline
Flows", NeurIPS 2019), the spline math every spline flow in pyroflows shares.

On :math:`[-B, B]` the map is a rational-quadratic spline through :math:`K+1` knots
:math:`(x^{(k)}, y^{(k)})` with positive derivatives :math:`\delta^{(k)}`; outside it is the
identity (linear tails with slope 1, the boundary derivatives being pinned to 1) or, with
``tails="linear"``, straight lines with the learned boundary derivatives as slopes, so any real
input is valid. Bin lookup is a comparison count (static shape, no ``searchsorted`` copies),
and the inverse solves the bin's quadratic in closed form.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_choice, check_count, check_real
from .elementwise import ElementwiseMap, broadcast_params

__all__ = ["TAILS", "SplineMap", "rq_bin_forward", "rq_bin_inverse"]

#: The spline's behaviour outside its interval (see :class:`SplineMap`).
TAILS = ("identity", "linear")


def _softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def rq_bin_forward(
    xi: Tensor, y0: Tensor, h: Tensor, s: Tensor, d0: Tensor, d1: Tensor
) -> tuple[Tensor, Tensor]:
    r"""The rational-quadratic segment of one bin, evaluated at relative position ``xi``.

    A bin of width :math:`w` and height :math:`h` (slope :math:`s = h / w`) starting at
    height ``y0``, with knot derivatives ``d0`` and ``d1``:

    .. math::
        v = y_0 + \frac{h\,[s\xi^2 + d_0 \xi(1-\xi)]}{s + (d_1 + d_0 - 2s)\,\xi(1-\xi)},\qquad
        \log\frac{dv}{du} = \log \frac{s^2 [d_1\xi^2 + 2s\xi(1-\xi) + d_0(1-\xi)^2]}
                                     {[s + (d_1 + d_0 - 2s)\xi(1-\xi)]^2}

    with :math:`u = u_0 + \xi w`. Shared by :class:`SplineMap` and the smooth histogram
    destructor. Returns ``(v, log dv/du)``.
    """
    xi2, one_minus = xi * xi, 1 - xi
    xi1 = xi * one_minus
    denom = s + (d1 + d0 - 2 * s) * xi1
    v = y0 + h * (s * xi2 + d0 * xi1) / denom
    # 2 log s - 2 log denom as one logarithm: this runs on every sample of every spline flow.
    numer = d1 * xi2 + 2 * s * xi1 + d0 * (one_minus * one_minus)
    log_deriv = torch.log(numer) + 2 * torch.log(s / denom)
    return v, log_deriv


def rq_bin_inverse(
    dy: Tensor, h: Tensor, s: Tensor, d0: Tensor, d1: Tensor
) -> tuple[Tensor, Tensor]:
    """Invert :func:`rq_bin_forward` in closed form: the relative position ``xi`` at which the
    segment rises by ``dy = v - y0``, and ``log dv/du`` there (to be negated for the inverse).
    """
    c2 = d1 + d0 - 2 * s
    a = h * (s - d0) + dy * c2
    b = h * d0 - dy * c2
    c = -s * dy
    disc = (b * b - 4 * a * c).clamp_min(0)
    # The root in [0, 1], written in the form that does not cancel when a is near 0.
    xi = (2 * c / (-b - disc.sqrt())).clamp(0, 1)
    xi1 = xi * (1 - xi)
    log_deriv = (
        2 * torch.log(s)
        + torch.log(d1 * xi * xi + 2 * s * xi1 + d0 * (1 - xi) ** 2)
        - 2 * torch.log(s + c2 * xi1)
    )
    return xi, log_deriv


class SplineMap(ElementwiseMap):
    r"""Rational-quadratic spline map on :math:`[-B, B]` with identity tails.

    In bin :math:`k`, with :math:`s_k = h_k / w_k` and :math:`\xi = (u - x^{(k)}) / w_k`,

    .. math::
        v = y^{(k)} + \frac{h_k\,[s_k \xi^2 + \delta^{(k)} \xi (1-\xi)]}
                          {s_k + [\delta^{(k+1)} + \delta^{(k)} - 2 s_k]\,\xi(1-\xi)}.

    Parameters per feature: :math:`K` bin widths, :math:`K` heights (softmax-normalised, each
    at least ``min_bin_size`` of the interval) and :math:`K-1` interior derivatives (softplus,
    at least ``min_derivative``), i.e. ``3 * bins - 1``. With ``tails="linear"`` the two
    boundary derivatives :math:`\delta^{(0)}, \delta^{(K)}` are learned too (``3 * bins + 1``)
    and the map goes on outside :math:`[-B, B]` with those slopes,
    :math:`v = \pm B + \delta (u \mp B)`: the slope of a tail then matches the spline's at
    its edge, where identity tails jump from it to 1. All-zero parameters give the identity.

    Args:
        bins: number of bins :math:`K`.
        bound: half-width :math:`B` of the spline's interval.
        min_bin_size: smallest bin width/height, as a fraction of the interval.
        min_derivative: smallest knot derivative.
        tails: ``"identity"`` (boundary derivatives 1, Durkan et al.) or ``"linear"``.

    Example:
        >>> m = SplineMap(bins=4, bound=3.0)
        >>> m.num_params  # K widths, K heights, K - 1 interior derivatives
        11
        >>> v, ladj = m(torch.tensor([-5.0, 0.5, 5.0]), torch.randn(3, m.num_params))
        >>> v[[0, 2]].tolist(), ladj[[0, 2]].tolist()  # the identity outside [-B, B]
        ([-5.0, 5.0], [0.0, 0.0])
    """

    exact_inverse = True  # closed-form inverse (a quadratic's root): reversible stacks accept it

    def __init__(
        self,
        bins: int = 8,
        bound: float = 5.0,
        min_bin_size: float = 1e-3,
        min_derivative: float = 1e-3,
        tails: str = "identity",
    ) -> None:
        super().__init__()
        self.bins = check_count("bins", bins)
        self.tails = check_choice("tails", tails, TAILS)
        self.bound = check_real("bound", bound)
        check_real("min_bin_size * bins", min_bin_size * bins, 0.0, 1.0)
        self.min_bin_size = min_bin_size
        self.min_derivative = check_real("min_derivative", min_derivative, 0.0, 1.0)
        self.num_params = 3 * bins - 1 + 2 * (tails == "linear")
        self._derivative_offset = _softplus_inverse(1.0 - min_derivative)

    def extra_repr(self) -> str:
        tails = "" if self.tails == "identity" else f", tails={self.tails!r}"
        return f"bins={self.bins}, bound={self.bound}{tails}"

    def _knots(self, raw: Tensor) -> Tensor:
        """Knot positions (..., K+1) on [-B, B] from raw bin sizes (..., K)."""
        K, B = self.bins, self.bound
        # softmax written out: torch's CPU softmax takes a slow path over a last dimension this
        # short (measured 4-20x slower than exp/sum at 8 bins), a quarter of nsf's time.
        e = torch.exp(raw - raw.detach().amax(-1, keepdim=True))
        sizes = self.min_bin_size + (1 - self.min_bin_size * K) * (e / e.sum(-1, keepdim=True))
        inner = torch.cumsum(sizes[..., :-1], dim=-1) * (2 * B) - B
        # The ends pinned exactly, so that the tails join the spline without a gap.
        return F.pad(F.pad(inner, (1, 0), value=-B), (0, 1), value=B)

    def _table(self, params: Tensor) -> Tensor:
        """(..., 3, K+1): the input knots, the output knots and the knot derivatives."""
        K = self.bins
        knots = self._knots(params[..., : 2 * K].unflatten(-1, (2, K)))  # widths and heights
        derivatives = self.min_derivative + F.softplus(
            params[..., 2 * K :] + self._derivative_offset
        )
        if self.tails == "identity":  # the boundary derivatives pinned to the tails' slope 1
            derivatives = F.pad(F.pad(derivatives, (1, 0), value=1.0), (0, 1), value=1.0)
        return torch.cat([knots, derivatives.unsqueeze(-2)], dim=-2)

    def _locate(self, value: Tensor, params: Tensor, by_output: bool) -> tuple[Tensor, ...]:
        """``(value, inside, clamped, x0, w, y0, h, d0, d1, tail_slope)``: ``value`` broadcast
        with the parameters, whether it lies in :math:`[-B, B]`, its clamp into it, the bin that
        holds the clamp among the input knots (``by_output=False``) or the output knots
        (``True``), found by a comparison count (static shape) and read in one gather, and the
        slope of the tail on ``value``'s side (``None`` for identity tails)."""
        value, params = broadcast_params(value, params)
        table = self._table(params)
        inside = value.abs() <= self.bound
        clamped = value.clamp(-self.bound, self.bound)
        # Index k with knots[k] <= value < knots[k+1], clamped to the K bins.
        bins = (clamped[..., None] >= table[..., int(by_output), 1:-1]).sum(-1, keepdim=True)
        index = torch.cat([bins, bins + 1], dim=-1).unsqueeze(-2).expand(*table.shape[:-1], 2)
        (x0, x1), (y0, y1), (d0, d1) = (
            ends.unbind(-1) for ends in table.gather(-1, index).unbind(-2)
        )
        # The tail's slope is the boundary derivative on the value's side.
        slope = None
        if self.tails == "linear":
            slope = torch.where(value > 0, table[..., 2, -1], table[..., 2, 0])
        return value, inside, clamped, x0, x1 - x0, y0, y1 - y0, d0, d1, slope

    @staticmethod
    def _with_tails(
        inside: Tensor, spline: Tensor, value: Tensor, clamped: Tensor, ladj: Tensor, slope: Any
    ) -> tuple[Tensor, Tensor]:
        """Outside [-B, B] the identity (``slope`` None: log-slope 0), or the line through the
        spline's end with the boundary derivative ``slope`` (the clamp is that end)."""
        if slope is None:
            zero = torch.zeros_like(ladj)
            return torch.where(inside, spline, value), torch.where(inside, ladj, zero)
        tail = clamped + slope * (value - clamped)
        return torch.where(inside, spline, tail), torch.where(inside, ladj, torch.log(slope))

    def forward(self, u: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        u, inside, uc, x0, w, y0, h, d0, d1, slope = self._locate(u, params, by_output=False)
        xi = ((uc - x0) / w).clamp(0, 1)
        v, ladj = rq_bin_forward(xi, y0, h, h / w, d0, d1)
        return self._with_tails(inside, v, u, uc, ladj, slope)

    def inverse(self, v: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        v, inside, vc, x0, w, y0, h, d0, d1, slope = self._locate(v, params, by_output=True)
        xi, log_deriv = rq_bin_inverse(vc - y0, h, h / w, d0, d1)
        inverse_slope = None if slope is None else 1 / slope
        return self._with_tails(inside, x0 + xi * w, v, vc, -log_deriv, inverse_slope)
