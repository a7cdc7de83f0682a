r"""Invertible residual blocks (Behrmann et al., "Invertible Residual Networks", ICML 2019, https://arxiv.org/abs/1811.00995;
Chen et al., "Residual Flows for Invertible Generative Modeling", NeurIPS 2019, https://arxiv.org/abs/1906.02735).

A block maps :math:`x = F(z) = z + g(z; c)` with :math:`\mathrm{Lip}_z(g) \le \kappa < 1`
(a :class:`~pyroflows.nn.lipschitz.LipschitzMLP`). Then :math:`F` is a bijection of
:math:`\mathbb{R}^d`: the map :math:`z \mapsto x - g(z)` is a contraction, whose unique fixed
point is :math:`F^{-1}(x)` (Banach), and :math:`I + J_g` is invertible with
:math:`\det(I + J_g) > 0`.

**Log-determinant.** :math:`\log\det(I + J_g) = \sum_{k \ge 1} \frac{(-1)^{k+1}}{k}\operatorname{tr}(J_g^k)`
(converges as :math:`\|J_g\|_2 < 1`). Four options (``logdet``):

* ``"exact"``: :math:`J_g` in full (:math:`d` analytic Jacobian-vector products) and a
  :math:`d\times d` log-determinant: :math:`O(d h^2 + d^2 h + d^3)` per point, exact.
* ``"series"`` (i-ResNet): the first ``n_terms`` terms, each trace by Hutchinson's estimator
  :math:`\operatorname{tr}(A) = \mathbb{E}[v^\top A v]`, :math:`v \sim \mathcal{N}(0, I)`:
  ``n_terms`` products :math:`J_g^k v`, :math:`O(n h^2)` per point; biased by the truncation
  (at most :math:`d\,\kappa^{n+1}/((n+1)(1-\kappa))` in magnitude).
* ``"roulette"`` (Residual Flows): the ``n_terms`` first terms plus a random number
  :math:`M` of further terms (geometric or Poisson, mean ``extra_terms``), term :math:`k`
  reweighted by :math:`1/P(N \ge k)` — the Russian-roulette estimator, **unbiased** for the
  infinite series. Expected :math:`O((n + \bar M) h^2)` per point. :math:`M` is drawn once per
  call on the CPU (shared by the batch, as in the paper), so the loop length varies between
  calls: ``torch.compile(fullgraph=True)`` cannot trace it (use ``"exact"`` or ``"series"``
  there).
* ``"auto"``: ``"exact"`` when ``features <= 16``, else ``"roulette"``.

Gradients of the stochastic estimators use the Neumann-series trick of Chen et al.
(``neumann_gradient=True``): :math:`\partial\log\det(I + J) = \operatorname{tr}((I + J)^{-1}\partial J)
\approx v^\top \partial J\, w`, :math:`w = \sum_k (-1)^{k} \omega_{k+1} J^{k} v`, with :math:`w`
computed without a graph, so the backward pass costs one product and the memory does not grow
with the number of terms (and, for ``"roulette"``, the gradient is unbiased too).

**Inverse** (the slow direction): the fixed-point iteration :math:`z \leftarrow x - g(z)`
(``iterations`` steps, batched, static shapes), then for ``features <= 64`` safeguarded Newton
steps (``newton``; a Newton step is kept only where it lowers the residual, else the
fixed-point step, so the residual contracts at least by :math:`\kappa` per step and
quadratically near the root). The solve carries no graph; **implicit gradients** come from one
final Newton step :math:`z = z^\star - \operatorname{sg}[I + J_g(z^\star)]^{-1}(z^\star + g(z^\star) - x)`,
whose value is the root and whose derivatives are the inverse's,
:math:`\partial z/\partial x = (I + J_g)^{-1}`, :math:`\partial z/\partial\theta = -(I + J_g)^{-1}\partial g/\partial\theta`
(for more than 64 features, :math:`(I + J_g)^{-1}` is applied as an ``iterations``-term
Neumann series).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..checks import check_choice, check_count, check_real
from ..nn.lipschitz import LipschitzMLP
from ..nn.options import passes_keywords_to
from .base import Bijection

__all__ = ["LOGDETS", "ResidualBlock", "roulette_weights"]

LOGDETS = ("auto", "exact", "series", "roulette")
ROULETTES = ("geometric", "poisson")
#: ``logdet="auto"`` is exact up to this many features.
EXACT_MAX_FEATURES = 16
#: The inverse uses dense Newton steps and an exact implicit solve up to this many features.
DENSE_MAX_FEATURES = 64


def _tail(distribution: str, mean: float, j: int) -> float:
    """:math:`P(M \\ge j)` for the number of extra roulette terms :math:`M`."""
    if j <= 0:
        return 1.0
    if distribution == "geometric":  # M in {0, 1, ...}, P(M >= j) = q^j, mean q / (1 - q)
        return (mean / (1.0 + mean)) ** j
    # Poisson: sum the upper tail directly (no 1 - cdf cancellation).
    log_pmf = lambda i: -mean + i * math.log(mean) - math.lgamma(i + 1)  # noqa: E731
    return sum(math.exp(log_pmf(i)) for i in range(j, j + 200))


def roulette_weights(n_terms: int, extra: int, distribution: str, mean: float) -> list[float]:
    r"""Weights :math:`\omega_k = 1/P(N \ge k)` of terms :math:`k = 1..n+M` for :math:`N = n + M`:
    1 for the ``n_terms`` sure terms, :math:`1/P(M \ge k - n)` for the random ones."""
    return [1.0 / _tail(distribution, mean, k - n_terms) for k in range(1, n_terms + extra + 1)]


@passes_keywords_to(LipschitzMLP, "hidden", "coefficient")
class ResidualBlock(Bijection):
    r"""An invertible residual block :math:`x = z + g(z; c)` with :math:`\mathrm{Lip}_z(g) < 1`.

    See the module docstring for the maths, the estimators and the inverse. **Fast direction:
    sampling** (one network pass plus the log-determinant); density solves a fixed point.
    Wrap it in :class:`~pyroflows.transforms.Inverse` for the papers' orientation
    (:math:`z = x + g(x)`, density in one pass), as the ``resflow`` preset does.

    Args:
        features: event size :math:`d`.
        context: context size (offsets of :math:`g`'s hidden pre-activations).
        logdet: ``"auto"``, ``"exact"``, ``"series"`` or ``"roulette"``.
        n_terms: series terms (``"series"``), or sure terms before the roulette
            (``"roulette"``); default 10 and 2.
        roulette: law of the random extra terms, ``"geometric"`` or ``"poisson"``.
        extra_terms: their mean (geometric with :math:`p = 1/(1 + m)`, or Poisson rate).
        neumann_gradient: use the Neumann-series gradient for the stochastic estimators.
        iterations: fixed-point steps of the inverse (default 20, or 200 above 64 features).
        newton: safeguarded Newton steps after them (default 6; only up to 64 features).
        network: ``hidden`` and ``coefficient`` of :math:`g` (a
            :class:`~pyroflows.nn.LipschitzMLP`).

    Example:
        >>> t = ResidualBlock(3, hidden=(16, 16), logdet="exact")
        >>> x, ladj = t.call_and_ladj(torch.randn(5, 3))
        >>> z, _ = t.inverse_and_ladj(x)  # fixed point, then Newton
        >>> bool(torch.allclose(t(z), x, atol=1e-5)), ladj.shape
        (True, torch.Size([5]))
    """

    fast_direction = "forward"

    def __init__(
        self,
        features: int,
        context: int = 0,
        *,
        logdet: str = "auto",
        n_terms: int | None = None,
        roulette: str = "geometric",
        extra_terms: float = 1.0,
        neumann_gradient: bool = True,
        iterations: int | None = None,
        newton: int | None = None,
        **network: Any,
    ) -> None:
        super().__init__(features, context)
        self.net = LipschitzMLP(features, context=context, **network)
        if check_choice("logdet", logdet, LOGDETS) == "auto":
            logdet = "exact" if features <= EXACT_MAX_FEATURES else "roulette"
        check_choice("roulette", roulette, ROULETTES)
        extra_terms = check_real("extra_terms (mean number of roulette terms)", extra_terms)
        dense = features <= DENSE_MAX_FEATURES
        self.n_terms = (10 if logdet == "series" else 2) if n_terms is None else n_terms
        self.iterations = (20 if dense else 200) if iterations is None else iterations
        self.newton = (6 if dense else 0) if newton is None else newton
        check_count("n_terms", self.n_terms, 1)
        check_count("iterations", self.iterations, 0)
        check_count("newton", self.newton, 0)
        if self.newton and not dense:
            raise ValueError(
                f"newton steps need a dense Jacobian: only for features <= "
                f"{DENSE_MAX_FEATURES}, got features={features}"
            )
        self.dense = dense
        self.logdet = logdet
        self.roulette = roulette
        self.extra_terms = extra_terms
        self.neumann_gradient = bool(neumann_gradient)

    # -- log-determinant -----------------------------------------------------------------------

    def _weights(self) -> list[float]:
        if self.logdet == "series":
            return [1.0] * self.n_terms
        # Drawn on the CPU from torch's global generator (reproducible with torch.manual_seed,
        # no device synchronisation); the count fixes the loop length of this call.
        if self.roulette == "geometric":
            p = 1.0 / (1.0 + self.extra_terms)
            extra = int(torch.empty(()).geometric_(p)) - 1  # geometric_ counts trials >= 1
        else:
            extra = int(torch.poisson(torch.tensor(self.extra_terms, dtype=torch.float64)))
        return roulette_weights(self.n_terms, extra, self.roulette, self.extra_terms)

    def _g_and_logdet(self, z: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(g(z), log det(I + J_g(z)))`` with the configured estimator."""
        g, weights, slopes = self.net.evaluate(z, context)
        if self.logdet == "exact":
            eye = torch.eye(self.features, dtype=g.dtype, device=g.device)
            return g, torch.linalg.slogdet(eye + self.net.jacobian(weights, slopes))[1]
        omega = self._weights()
        v = torch.randn(g.shape, dtype=g.dtype, device=g.device).unsqueeze(-1)  # (..., d, 1)
        if not self.neumann_gradient:
            total, u = 0.0, v
            for k, w_k in enumerate(omega, 1):
                u = self.net.jvp(weights, slopes, u)
                total = total + ((-1) ** (k + 1) * w_k / k) * (v * u).sum((-2, -1))
            return g, total
        with torch.no_grad():
            fixed_w = [w.detach() for w in weights]
            fixed_s = [s.detach() for s in slopes]
            value, u, neumann = torch.zeros_like(g[..., 0]), v, torch.zeros_like(v)
            for k, w_k in enumerate(omega, 1):
                neumann = neumann + ((-1) ** (k + 1) * w_k) * u  # u = J^{k-1} v
                u = self.net.jvp(fixed_w, fixed_s, u)
                value = value + ((-1) ** (k + 1) * w_k / k) * (v * u).sum((-2, -1))
        surrogate = (v * self.net.jvp(weights, slopes, neumann)).sum((-2, -1))
        return g, value + (surrogate - surrogate.detach())

    # -- the two directions --------------------------------------------------------------------

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        g, logdet = self._g_and_logdet(z, context)
        return z + g, logdet

    @torch.no_grad()
    def _solve(self, x: Tensor, context: Tensor | None) -> Tensor:
        """The root of ``z + g(z) = x``, without a graph (fixed point, then safeguarded Newton)."""
        z = x - self.net(x, context)
        for _ in range(self.iterations):
            z = x - self.net(z, context)
        eye = torch.eye(self.features, dtype=x.dtype, device=x.device)
        for _ in range(self.newton):
            g, weights, slopes = self.net.evaluate(z, context)
            r = z + g - x
            step = torch.linalg.solve(eye + self.net.jacobian(weights, slopes), r.unsqueeze(-1))
            candidate = z - step.squeeze(-1)
            r_new = candidate + self.net(candidate, context) - x
            better = r_new.square().sum(-1, keepdim=True) < r.square().sum(-1, keepdim=True)
            z = torch.where(better, candidate, z - r)  # z - r = x - g(z): the fixed-point step
        return z

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        root = self._solve(x, context)
        g, weights, slopes = self.net.evaluate(root, context)
        residual = root + g - x  # ~0 in value; carries the gradients to x, c and the parameters
        fixed_w = [w.detach() for w in weights]
        fixed_s = [s.detach() for s in slopes]
        if self.dense:
            eye = torch.eye(self.features, dtype=x.dtype, device=x.device)
            matrix = eye + self.net.jacobian(fixed_w, fixed_s)
            z = root - torch.linalg.solve(matrix, residual.unsqueeze(-1)).squeeze(-1)
        else:  # (I + J)^{-1} r = sum_k (-J)^k r
            term = residual.unsqueeze(-1)
            total = term
            for _ in range(self.iterations):
                term = -self.net.jvp(fixed_w, fixed_s, term)
                total = total + term
            z = root - total.squeeze(-1)
        return z, -self._g_and_logdet(z, context)[1]

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, logdet={self.logdet!r}, n_terms={self.n_terms}, "
            f"iterations={self.iterations}, newton={self.newton}"
        )
