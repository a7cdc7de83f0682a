r"""Unconstrained monotonic neural networks (Wehenkel & Louppe, "Unconstrained Monotonic Neural
Networks", NeurIPS 2019) as an elementwise transformer.

The transformer is the integral of a positive network:

.. math::
    \tau(u; \beta, e) = \beta + \int_0^u f(t, e)\,dt
                      \approx \beta + u \sum_{k=1}^{n} w_k\, f(s_k u, e),
    \qquad \frac{\partial\tau}{\partial u} = f(u, e) > 0,

with :math:`(s_k, w_k)` a Gauss–Legendre or Clenshaw–Curtis rule on :math:`[0, 1]`
(:mod:`pyroflows.numerics.quadrature`), :math:`e` the embedding of the dimension given by
the conditioner, and :math:`f = \exp(B \tanh(g / B))` for an unconstrained tanh network
:math:`g(t, e)` (one network shared by all dimensions, as in the paper). The integrand is
analytic, so the rule converges geometrically with ``nodes``; the log-derivative is the
integrand itself, :math:`\log f(u, e) = B\tanh(g/B)`, as in the paper. Bounding
:math:`\log f` in :math:`[-B, B]` makes :math:`\tau` bi-Lipschitz, hence onto
:math:`\mathbb{R}`, and brackets the inverse: :math:`\tau^{-1}(v)` lies between
:math:`(v-\beta)e^{-B}` and :math:`(v-\beta)e^{B}`. The inverse is a batched safeguarded Newton
iteration (or plain bisection) on that bracket (:func:`~pyroflows.numerics.bisection.monotone_inverse`, implicit gradients).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..checks import check_count, check_hidden, check_real
from ..nn.layers import zero_init
from ..numerics.bisection import monotone_inverse
from ..numerics.quadrature import quadrature_rule
from .elementwise import ElementwiseMap, broadcast_params, soft_clamp

__all__ = ["UMNNMap"]


class UMNNMap(ElementwiseMap):
    r"""UMNN transformer :math:`\tau(u) = \beta + \int_0^u f(t, e)\,dt` (see the module docstring).

    Parameters per feature: ``1 + embedding`` (the offset :math:`\beta` and the embedding
    :math:`e`). All-zero parameters with the integrand's zero-initialised output layer give the
    identity. ``forward`` is the explicit integral (``nodes`` integrand evaluations per value),
    ``inverse`` a bracketed root search (``iterations`` integrals per value).

    Args:
        embedding: size of the per-dimension embedding :math:`e`.
        hidden: widths of the integrand network :math:`g` (tanh).
        nodes: quadrature nodes.
        quadrature: ``"gauss-legendre"`` or ``"clenshaw-curtis"``.
        log_slope_bound: the bound :math:`B` on :math:`|\log \partial\tau/\partial u|`.
        iterations: steps of the inverse (default: 32 safeguarded Newton steps, or the
            dtype's resolution in bisection steps with ``newton=False``).
        newton: safeguarded Newton (:func:`~pyroflows.numerics.bisection.newton_bisect`:
            a Newton step where it stays in the bracket, else bisection); the derivative is
            the integrand, one evaluation against ``nodes`` for the integral, and converges in
            far fewer steps than bisection.

    Example:
        >>> m = UMNNMap(embedding=4, hidden=(16,), nodes=16)
        >>> params = torch.randn(3, m.num_params)  # (beta, e) per value
        >>> v, log_slope = m(torch.zeros(3), params)
        >>> torch.equal(v, params[:, 0])  # tau(0) = beta: an empty integral
        True
        >>> m.inverse(v, params)[0].abs().max() < 1e-6  # safeguarded Newton on the integral
        tensor(True)
    """

    def __init__(
        self,
        embedding: int = 8,
        hidden: Sequence[int] = (16, 16),
        nodes: int = 20,
        quadrature: str = "gauss-legendre",
        log_slope_bound: float = 5.0,
        iterations: int | None = None,
        newton: bool = True,
    ) -> None:
        super().__init__()
        check_count("embedding", embedding)
        hidden = check_hidden(hidden)
        check_real("log_slope_bound", log_slope_bound)
        # The rule is kept in float64 and re-cast from it whenever the module changes dtype
        # (see _apply), so a module built in float32 and moved to float64 has float64-exact
        # nodes. Not persistent: it is determined by the options.
        self._rule = quadrature_rule(quadrature, nodes)
        dtype = torch.get_default_dtype()
        self.register_buffer("nodes", self._rule[0].to(dtype), persistent=False)
        self.register_buffer("weights", self._rule[1].to(dtype), persistent=False)
        self.embedding = embedding
        self.quadrature = quadrature
        self.num_params = 1 + embedding
        self.log_slope_bound = float(log_slope_bound)
        self.iterations = iterations
        self.newton = bool(newton)
        # g(t, e): the first layer is split into its t column and its e block so that the
        # e part is computed once per value, not once per node.
        self.input_t = nn.Parameter(torch.randn(hidden[0]))
        self.input_e = nn.Linear(embedding, hidden[0])
        layers: list[nn.Module] = []
        for a, b in zip(hidden[:-1], hidden[1:]):
            layers += [nn.Tanh(), nn.Linear(a, b)]
        layers += [nn.Tanh(), nn.Linear(hidden[-1], 1)]
        self.net = nn.Sequential(*layers)
        zero_init(layers[-1])

    def _apply(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        super()._apply(*args, **kwargs)
        self.nodes = self._rule[0].to(self.nodes.device, self.nodes.dtype)
        self.weights = self._rule[1].to(self.weights.device, self.weights.dtype)
        return self

    def extra_repr(self) -> str:
        return (
            f"embedding={self.embedding}, nodes={self.nodes.numel()}, "
            f"quadrature={self.quadrature!r}, log_slope_bound={self.log_slope_bound}"
        )

    def log_integrand(self, t: Tensor, e_proj: Tensor) -> Tensor:
        r""":math:`\log f(t, e)` for ``t`` (..., n, k) and the projected embedding (..., n, H)."""
        pre = t[..., None] * self.input_t + e_proj[..., None, :]
        g = self.net(pre).squeeze(-1)
        return soft_clamp(g, self.log_slope_bound)

    def _integral(self, u: Tensor, e_proj: Tensor) -> Tensor:
        f = self.log_integrand(u[..., None] * self.nodes, e_proj).exp()
        return u * (f * self.weights).sum(-1)

    def _log_slope(self, u: Tensor, e_proj: Tensor) -> Tensor:
        return self.log_integrand(u[..., None], e_proj).squeeze(-1)

    def forward(self, u: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        u, params = broadcast_params(u, params)
        e_proj = self.input_e(params[..., 1:])
        return params[..., 0] + self._integral(u, e_proj), self._log_slope(u, e_proj)

    def inverse(self, v: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        v, params = broadcast_params(v, params)
        e_proj = self.input_e(params[..., 1:])
        beta = params[..., 0]
        gap = v - beta
        # log f in [-B, B]: the root lies between gap * e^-B and gap * e^B.
        low, high = gap * math.exp(-self.log_slope_bound), gap * math.exp(self.log_slope_bound)
        u = monotone_inverse(
            lambda t: beta + self._integral(t, e_proj),
            lambda t: self._log_slope(t, e_proj).exp(),
            v,
            torch.minimum(low, high),
            torch.maximum(low, high),
            self.iterations if self.iterations is not None or not self.newton else 32,
            newton=self.newton,
        )
        return u, -self._log_slope(u, e_proj)
