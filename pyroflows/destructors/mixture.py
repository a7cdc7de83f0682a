r"""Gaussian-mixture destructor: EM in torch, Rosenblatt transform, batched bisection inverse.

For :math:`p(x) = \sum_k \pi_k \mathcal N(x; \mu_k, L_k L_k^\top)` the Rosenblatt transform
maps each coordinate through its conditional CDF given the previous ones,

.. math:: u_j = F(x_j \mid x_{<j}) = \sum_k w_{kj}(x_{<j})\, \Phi(z_{kj}),
          \qquad z_k = L_k^{-1}(x - \mu_k),

with :math:`w_{kj} \propto \pi_k \mathcal N(x_{<j}; \mu_{k,<j}, \Sigma_{k,<j<j})`, which with
the Cholesky factor is :math:`\pi_k \prod_{i<j} \varphi(z_{ki}) / L_{k,ii}` (so every quantity
comes from one triangular solve per component). The Jacobian is triangular with diagonal
:math:`p(x_j \mid x_{<j})`, whose product is :math:`p(x)`.

The inverse runs coordinate by coordinate; in each, *all points at once* are solved by
bisection on the exact bracket :math:`[\min_k q_k, \max_k q_k]` (the components' own
conditional quantiles), then one implicit Newton step (so gradients flow, see
:mod:`pyroflows.numerics.bisection`). No per-value root finder.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..checks import check_count
from ..numerics.bisection import monotone_inverse
from .base import Destructor, check_no_constant_columns
from .domain import REAL
from .gaussian import weighted_covariance
from .registry import register
from .shards import all_rows, row, row_span, total
from .special import normal_cdf, normal_icdf, normal_log_pdf

__all__ = ["MixtureDestructor", "jittered_cholesky"]


def jittered_cholesky(cov: Tensor, tries: int = 6) -> Tensor:
    r"""Cholesky factors (..., d, d) of symmetric matrices (..., d, d) that should be positive
    definite but may miss by rounding: a matrix whose factorisation fails gets
    :math:`10^{t}\,\epsilon\,\bar\sigma^2` added to its diagonal at try :math:`t`
    (:math:`\epsilon` the dtype's machine epsilon, :math:`\bar\sigma^2` the matrix's mean
    diagonal), the others are untouched: the covariance of an elongated component can miss
    by a rounding error more than its ridge. Raises ``ValueError`` when a matrix is still not
    positive definite after ``tries`` tries.

    Example:
        >>> cov = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # singular by rounding's standards
        >>> bool(torch.isfinite(jittered_cholesky(cov)).all())
        True
    """
    eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
    scale = cov.diagonal(dim1=-2, dim2=-1).mean(-1).abs()[..., None, None]
    jitter = torch.finfo(cov.dtype).eps * scale
    L, info = torch.linalg.cholesky_ex(cov)
    for _ in range(tries):
        failed = (info != 0)[..., None, None]
        if not bool(failed.any()):
            return L
        cov = torch.where(failed, cov + jitter * eye, cov)
        jitter = 10 * jitter
        L, info = torch.linalg.cholesky_ex(cov)
    if bool((info != 0).any()):
        raise ValueError(
            "a mixture component's covariance is not positive definite (collinear columns or "
            "a component on too few points): increase reg, use fewer components, or fit in "
            "float64"
        )
    return L


@register("mixture")
class MixtureDestructor(Destructor):
    r"""Full-covariance Gaussian mixture with ``components`` components, mapped by Rosenblatt.

    Fitting: k-means++ seeding then weighted EM (``max_iter`` steps or until the mean
    log-likelihood changes by less than ``tol``), with ``reg`` times the data's average
    variance added to each covariance's diagonal. Mixture logits, means and Cholesky factors
    are parameters. ``fast_direction = "forward"``: :math:`D`
    (``to_uniform``, ``log_prob``) is one pass, while ``from_uniform`` and ``sample`` bisect
    per dimension (so the flow transform ``Inverse(d)`` of ``as_flow`` is fast for density,
    like MAF). Domain: ``"real"``.

    Args:
        features: dimension.
        components: number of mixture components.
        max_iter: maximum EM iterations.
        tol: EM stopping tolerance on the mean log-likelihood (nats).
        reg: relative covariance ridge.
        seed: seed of the k-means++ initialisation.

    Example:
        >>> x = torch.cat([torch.randn(500, 2), torch.randn(500, 2) + 4]).double()
        >>> d = MixtureDestructor(2, components=2).fit(x)
        >>> torch.allclose(d.from_uniform(d.to_uniform(x[:5])), x[:5], atol=1e-6)
        True
    """

    domain = REAL
    fast_direction = "forward"

    def __init__(
        self,
        features: int,
        components: int = 8,
        max_iter: int = 200,
        tol: float = 1e-6,
        reg: float = 1e-6,
        seed: int = 0,
    ) -> None:
        super().__init__(features)
        components = check_count("components", components)
        self.components = components
        self.max_iter, self.tol, self.reg, self.seed = max_iter, tol, float(reg), seed
        K, d = components, features
        self.logits = nn.Parameter(torch.zeros(K))
        self.loc = nn.Parameter(torch.zeros(K, d))
        self.lower = nn.Parameter(torch.zeros(K, d, d))
        self.log_diag = nn.Parameter(torch.zeros(K, d))
        self.register_buffer("mask", torch.ones(d, d).tril(-1))

    def extra_repr(self) -> str:
        return f"features={self.features}, components={self.components}"

    def min_points(self) -> int:
        return max(self.features + 1, self.components)

    # -- fitting -------------------------------------------------------------------------------

    def _seed_means(self, x: Tensor, w: Tensor) -> Tensor:
        """k-means++ centres (K, d): each drawn among all rows (every rank's, in a
        data-parallel fit) with probability proportional to its weight times its squared
        distance to the nearest centre so far."""
        generator = torch.Generator().manual_seed(self.seed)
        weights = all_rows(w).cpu()
        mine = row_span(x.shape[0])[0]  # this rank's first global row
        first = torch.multinomial(weights, 1, generator=generator)
        centres = [row(x, int(first), mine)]
        dist2 = (x - centres[0]).square().sum(-1)
        for _ in range(1, self.components):
            p = all_rows(w * dist2).cpu()
            p = p if p.sum() > 0 else weights
            pick = torch.multinomial(p, 1, generator=generator)
            centres.append(row(x, int(pick), mine))
            dist2 = torch.minimum(dist2, (x - centres[-1]).square().sum(-1))
        return torch.stack(centres)

    def _component_terms(self, x: Tensor, loc: Tensor, chol: Tensor) -> Tensor:
        """Per-point, per-component, per-dimension :math:`z_{kj}` (n, K, d)."""
        diff = x.reshape(-1, 1, self.features) - loc  # (n, K, d)
        z = torch.linalg.solve_triangular(chol.mT, diff.transpose(0, 1), upper=True, left=False)
        return z.transpose(0, 1).reshape(*x.shape[:-1], self.components, self.features)

    def _fit(self, x: Tensor, w: Tensor) -> None:
        check_no_constant_columns(x, w)
        K, d = self.components, self.features
        # The sufficient statistics and the parameters of EM are kept in float64 (MPS has
        # none): float32 scatter matrices summed over many rows miss positive definiteness
        # for the elongated components EM finds, and the fit then stalls (1M rows, 8
        # components in 8-D: -8.83 nats against -8.40). The E step runs in x's dtype.
        acc = torch.float64 if x.device.type != "mps" else x.dtype
        xa, wa = x.to(acc), w.to(acc)
        eye = torch.eye(d, dtype=acc, device=x.device)
        _, global_cov = weighted_covariance(xa, wa)
        ridge = self.reg * global_cov.diagonal().mean() * eye
        loc = self._seed_means(x, w).to(acc)
        cov = (global_cov + ridge).expand(K, d, d).clone()
        log_pi = torch.full((K,), -math.log(K), dtype=acc, device=x.device)
        previous = -math.inf
        for _ in range(self.max_iter):
            L = jittered_cholesky(cov)
            z = self._component_terms(x, loc.to(x.dtype), L.to(x.dtype))
            ell = normal_log_pdf(z) - L.diagonal(dim1=-2, dim2=-1).log().to(x.dtype)
            log_joint = log_pi.to(x.dtype) + ell.sum(-1)
            log_norm = torch.logsumexp(log_joint, -1)
            resp = torch.exp(log_joint - log_norm[:, None]).to(acc) * wa[:, None]  # (n, K)
            # The E step's sums over the rows (all ranks' in a data-parallel fit), then the
            # centred second moments about the new means, one component at a time (memory
            # n x d, not n x K x d).
            loglik, nk, moments = total(wa @ log_norm.to(acc), resp.sum(0), resp.T @ xa)
            loglik = float(loglik)
            nk = nk.clamp_min(torch.finfo(acc).tiny)
            log_pi = (nk / nk.sum()).log()
            loc = moments / nk[:, None]
            scatter = []
            for k in range(K):
                diff = xa - loc[k]
                scatter.append((diff * resp[:, k, None]).T @ diff)
            cov = total(torch.stack(scatter)) / nk[:, None, None] + ridge
            if abs(loglik - previous) < self.tol:
                break
            previous = loglik
        L = jittered_cholesky(cov)
        self.logits.copy_(log_pi)
        self.loc.copy_(loc)
        self.lower.copy_(L * self.mask)
        self.log_diag.copy_(L.diagonal(dim1=-2, dim2=-1).log())

    # -- the bijection -------------------------------------------------------------------------

    def cholesky(self) -> Tensor:
        """Components' lower-triangular covariance factors (K, d, d)."""
        return self.lower * self.mask + torch.diag_embed(self.log_diag.exp())

    def call_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z = self._component_terms(x, self.loc, self.cholesky())  # (..., K, d)
        # Log of each conditional density factor, floored far out (-z^2/2 overflows to -inf
        # beyond |z| = 1.3e154, and -inf - -inf in `before` is NaN) at a value whose sum over
        # the features still cannot overflow: only points with zero density are floored.
        floor = -torch.finfo(z.dtype).max / (4 * self.features)
        ell = (normal_log_pdf(z) - self.log_diag).clamp_min(floor)
        log_pi = torch.log_softmax(self.logits, -1)[:, None]
        before = torch.cumsum(ell, -1) - ell  # sum over i < j
        w = torch.softmax(log_pi + before, dim=-2)  # (..., K, d): weights over K
        u = (w * normal_cdf(z)).sum(-2).clamp(0, 1)
        log_density = torch.logsumexp(log_pi[:, 0] + ell.sum(-1), -1)
        return u, log_density

    def inverse_and_ladj(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        shape = u.shape
        u = u.reshape(-1, self.features).clamp(0, 1)
        L = self.cholesky()
        scale = self.log_diag.exp()  # (K, d)
        log_pi = torch.log_softmax(self.logits, -1)
        q = normal_icdf(u)  # standard-normal quantiles, finite
        before = log_pi.expand(u.shape[0], -1)  # (n, K) running log-weights
        zs: list[Tensor] = []
        columns: list[Tensor] = []
        for j in range(self.features):
            if zs:
                Z = torch.stack(zs, -1)  # (n, K, j)
                mean = self.loc[:, j] + (Z * L[:, j, :j]).sum(-1)
            else:
                mean = self.loc[:, j].expand(u.shape[0], -1)
            s = scale[:, j]
            weights = torch.softmax(before, -1)

            def cdf(
                t: Tensor, mean: Tensor = mean, s: Tensor = s, weights: Tensor = weights
            ) -> Tensor:
                return (weights * normal_cdf((t[:, None] - mean) / s)).sum(-1)

            def pdf(
                t: Tensor, mean: Tensor = mean, s: Tensor = s, weights: Tensor = weights
            ) -> Tensor:
                return (weights * torch.exp(normal_log_pdf((t[:, None] - mean) / s)) / s).sum(-1)

            quantiles = mean.detach() + s.detach() * q[:, j : j + 1].detach()
            lo, hi = quantiles.amin(-1), quantiles.amax(-1)
            width = (hi - lo).clamp_min(1e-3 * s.detach().min())
            x_j = monotone_inverse(cdf, pdf, u[:, j], lo - 1e-3 * width, hi + 1e-3 * width)
            z_j = (x_j[:, None] - mean) / s
            before = before + normal_log_pdf(z_j) - self.log_diag[:, j]
            zs.append(z_j)
            columns.append(x_j)
        x = torch.stack(columns, -1)
        log_density = torch.logsumexp(before, -1)
        return x.reshape(shape), -log_density.reshape(shape[:-1])
