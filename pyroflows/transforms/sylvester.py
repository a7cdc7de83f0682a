r"""Sylvester flows (van den Berg, Hasenclever, Tomczak & Welling, "Sylvester Normalizing Flows
for Variational Inference", UAI 2018): Householder (H-SNF) and triangular (T-SNF) variants.

.. math::
    x = z + Q R\, h(\tilde R Q^\top z + b), \qquad
    \log|\det J| = \sum_i \log\bigl(1 + h'(a_i)\, r_{ii} \tilde r_{ii}\bigr),

with :math:`a = \tilde R Q^\top z + b`, :math:`h = \tanh`, :math:`R, \tilde R` upper
triangular and :math:`Q` orthogonal: a product of ``reflections`` Householder matrices
:math:`H_k = I - 2 v_k v_k^\top / \|v_k\|^2` (H-SNF), times the order reversal when
``flip=True`` (T-SNF alternates identity and reversal with no reflections). The determinant
follows from Sylvester's identity :math:`\det(I + AB) = \det(I + BA)`: the matrix
:math:`I + \operatorname{diag}(h'(a)) \tilde R R` is triangular.

Invertibility by parametrisation: :math:`r_{ii} = \tanh(\rho_i)`,
:math:`\tilde r_{ii} = \tanh(\tilde\rho_i)`, so :math:`r_{ii}\tilde r_{ii} > -1 =
-1/\|h'\|_\infty` and every diagonal factor :math:`1 + h' r_{ii}\tilde r_{ii}` is positive.

Inverse (exact, by back-substitution): with :math:`z' = Q^\top z` and :math:`x' = Q^\top x`,
:math:`x'_i = z'_i + \sum_{j \ge i} R_{ij} h(a_j)` and :math:`a_j` depends on :math:`z'_{\ge j}`
only, so :math:`z'` is found from the last coordinate to the first, each coordinate solving
the increasing scalar equation
:math:`t + r_{ii} h(\tilde r_{ii} t + c_i) = x'_i - \sum_{j > i} R_{ij} h(a_j)` (bracketed by
:math:`\pm |r_{ii}|` around the right-hand side) by batched bisection. The sweep is run over
all coordinates at once, ``features`` times (after sweep :math:`k` the last :math:`k`
coordinates are exact): a fixed iteration count, static shapes, implicit gradients. Unlike the
fixed-point iteration :math:`z \leftarrow x - QRh(\cdot)`, which needs a contraction
(:math:`\|R\|\|\tilde R\| < 1`), this converges whenever the layer is invertible.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..checks import check_count
from ..numerics.bisection import monotone_inverse
from .amortized import AmortizedBijection, network_options
from .orthogonal import householder_product
from .planar import tanh_derivative

__all__ = ["Sylvester"]


def _log_cosh(x: Tensor) -> Tensor:
    """:math:`\\log\\cosh x`, without overflow."""
    ax = x.abs()
    return ax + torch.log1p(torch.exp(-2 * ax)) - math.log(2.0)


@network_options
class Sylvester(AmortizedBijection):
    r"""One Sylvester layer :math:`x = z + QR\tanh(\tilde R Q^\top z + b)` (van den Berg et al.
    2018), with :math:`M = d` (square :math:`R`).

    See the module docstring for the map, the constraint and the exact inverse.
    **Fast direction: sampling** (one :math:`O(Kd + d^2)` pass); the inverse takes ``features``
    bisection sweeps.

    Args:
        features: event size :math:`d`.
        context: context size; the conditional layer's Householder vectors, triangular
            matrices and bias are free parameters plus an MLP of the context (amortised, as in
            the paper, where the encoder outputs them).
        reflections: number :math:`K` of Householder reflections in :math:`Q` (0: the
            triangular variant, :math:`Q` a permutation).
        flip: compose :math:`Q` with the reversal of the coordinates (T-SNF alternates it).
        iterations: bisection steps per sweep (default: the dtype's resolution).
        network: ``hidden`` and ``activation`` of the context network
            (:class:`~pyroflows.nn.AmortizedParameters`).

    Example:
        >>> t = Sylvester(3, reflections=2)
        >>> z = torch.randn(5, 3)
        >>> x, ladj = t.call_and_ladj(z)
        >>> round(float((t.inverse_and_ladj(x)[0] - z).abs().max()), 5)
        0.0
    """

    fast_direction = "forward"

    def __init__(
        self,
        features: int,
        context: int = 0,
        *,
        reflections: int = 2,
        flip: bool = False,
        iterations: int | None = None,
        **network: Any,
    ) -> None:
        d = features
        check_count("reflections", reflections, 0)
        n_upper = d * (d - 1) // 2
        # Layout: [v (K*d) | rho (d) | rho~ (d) | R upper (n) | R~ upper (n) | b (d)].
        # R = 0 (identity at start) and a random R~ (so that R gets a gradient).
        init = torch.cat(
            [
                torch.randn(reflections * d),
                torch.zeros(d),
                torch.full((d,), 0.5),
                torch.zeros(n_upper),
                torch.randn(n_upper) / d**0.5,
                torch.zeros(d),
            ]
        )
        super().__init__(features, context, init, **network)
        self.reflections = reflections
        self.flip = bool(flip)
        self.iterations = iterations
        # Gather index building a (d, d) upper-triangular matrix from [upper | diag | 0].
        rows, cols = torch.triu_indices(d, d, offset=1)
        index = torch.full((d, d), n_upper + d, dtype=torch.long)
        index[rows, cols] = torch.arange(n_upper)
        index[torch.arange(d), torch.arange(d)] = n_upper + torch.arange(d)
        self.register_buffer("triangle_index", index.flatten())
        self.register_buffer("strict_upper", torch.triu(torch.ones(d, d), diagonal=1))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", reflections={self.reflections}, flip={self.flip}"

    def _triangle(self, upper: Tensor, diag: Tensor) -> Tensor:
        values = torch.cat([upper, diag, torch.zeros_like(diag[..., :1])], dim=-1)
        return values.index_select(-1, self.triangle_index).unflatten(-1, (self.features,) * 2)

    def _unpack(self, context: Tensor | None) -> tuple[Tensor, ...]:
        """``(v, R, R~, b, r_diag, rt_diag, log(1 + r_ii r~_ii))``.

        ``1 + \\tanh\\rho \\tanh\\tilde\\rho = \\cosh(\\rho + \\tilde\\rho) / (\\cosh\\rho \\cosh\\tilde\\rho)``
        is taken in log space, so it stays positive and accurate when both tanh saturate.
        """
        d, K = self.features, self.reflections
        n = d * (d - 1) // 2
        p = self.params(context)
        v = p[..., : K * d].unflatten(-1, (K, d))
        p = p[..., K * d :]
        rho, rho_t = p[..., :d], p[..., d : 2 * d]
        r_diag, rt_diag = torch.tanh(rho), torch.tanh(rho_t)
        log_1pk = _log_cosh(rho + rho_t) - _log_cosh(rho) - _log_cosh(rho_t)
        R = self._triangle(p[..., 2 * d : 2 * d + n], r_diag)
        Rt = self._triangle(p[..., 2 * d + n : 2 * d + 2 * n], rt_diag)
        b = p[..., 2 * d + 2 * n :]
        return v, R, Rt, b, r_diag, rt_diag, log_1pk

    def _reflect(self, y: Tensor, v: Tensor, transpose: bool) -> Tensor:
        """Apply :math:`Q` (or :math:`Q^\\top`), ``Q = H_1 ... H_K P``, to vectors ``y``."""
        if not transpose and self.flip:
            y = y.flip(-1)
        y = householder_product(y, v, transpose)
        if transpose and self.flip:
            y = y.flip(-1)
        return y

    @staticmethod
    def _matvec(matrix: Tensor, y: Tensor) -> Tensor:
        return (matrix * y[..., None, :]).sum(-1)

    @staticmethod
    def _slope(a: Tensor, log_1pk: Tensor) -> Tensor:
        # 1 + h'(a) r r~ = tanh(a)^2 + sech(a)^2 (1 + r r~): non-negative terms only.
        return torch.tanh(a).square() + tanh_derivative(a) * log_1pk.exp()

    def _ladj(self, a: Tensor, log_1pk: Tensor) -> Tensor:
        return torch.log(self._slope(a, log_1pk)).sum(-1)

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        v, R, Rt, b, r_diag, rt_diag, log_1pk = self._unpack(context)
        a = self._matvec(Rt, self._reflect(z, v, transpose=True)) + b
        x = z + self._reflect(self._matvec(R, torch.tanh(a)), v, transpose=False)
        return x, self._ladj(a, log_1pk)

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        v, R, Rt, b, r_diag, rt_diag, log_1pk = self._unpack(context)
        xq = self._reflect(x, v, transpose=True)
        R_strict, Rt_strict = R * self.strict_upper, Rt * self.strict_upper
        zq = xq
        for _ in range(self.features):
            c = self._matvec(Rt_strict, zq) + b  # c_i from the coordinates after i
            a = rt_diag * zq + c
            target = xq - self._matvec(R_strict, torch.tanh(a))
            radius = r_diag.abs()
            zq = monotone_inverse(
                lambda t, c=c: t + r_diag * torch.tanh(rt_diag * t + c),
                lambda t, c=c: self._slope(rt_diag * t + c, log_1pk),
                target,
                target - radius,
                target + radius,
                self.iterations,
            )
        a = self._matvec(Rt, zq) + b
        z = self._reflect(zq, v, transpose=False)
        return z, -self._ladj(a, log_1pk)
