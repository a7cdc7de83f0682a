r"""Full-covariance Gaussian destructor: whiten with the Cholesky factor, then :math:`\Phi`.

.. math:: D(x) = \Phi\big(L^{-1}(x - \mu)\big), \qquad
          \log|\det J_D(x)| = \log \mathcal N(x; \mu, LL^\top).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Destructor, check_no_constant_columns
from .domain import REAL
from .registry import register
from .shards import total
from .special import normal_cdf, normal_icdf, normal_log_pdf

__all__ = ["GaussianDestructor", "weighted_covariance"]


def weighted_covariance(x: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted mean (d,) and covariance (d, d) of ``x`` (n, d) with weights summing to one
    (over every rank's rows inside a data-parallel fit: two sums, the mean's then the
    centred second moments')."""
    mean = total(w @ x)
    centred = x - mean
    return mean, total((centred * w[:, None]).T @ centred)


@register("gaussian")
class GaussianDestructor(Destructor):
    r"""Multivariate Gaussian destructor :math:`u = \Phi(L^{-1}(x - \mu))`.

    Fitting is closed form: the (weighted) mean and covariance plus ``reg`` times the average
    variance on the diagonal (a ridge that keeps the Cholesky factor well conditioned).
    Zero-variance columns and fewer than ``features + 1`` points are errors. The mean and the
    Cholesky factor (strict lower part and log-diagonal) are parameters. Domain: ``"real"``.

    Args:
        features: dimension.
        reg: relative ridge added to the covariance's diagonal.

    Example:
        >>> x = torch.randn(1000, 3, dtype=torch.float64) @ torch.tensor([[1., .5, 0], [0, 1, .3], [0, 0, 1]], dtype=torch.float64)
        >>> d = GaussianDestructor(3).fit(x)
        >>> d.log_prob(x).shape
        torch.Size([1000])
    """

    domain = REAL

    def __init__(self, features: int, reg: float = 1e-6) -> None:
        super().__init__(features)
        if not reg >= 0:
            raise ValueError(f"reg must be non-negative, got {reg!r}")
        self.reg = float(reg)
        self.loc = nn.Parameter(torch.zeros(features))
        self.lower = nn.Parameter(torch.zeros(features, features))
        self.log_diag = nn.Parameter(torch.zeros(features))
        self.register_buffer("mask", torch.ones(features, features).tril(-1))

    def min_points(self) -> int:
        return self.features + 1

    def _fit(self, x: Tensor, w: Tensor) -> None:
        check_no_constant_columns(x, w)
        mean, cov = weighted_covariance(x, w)
        cov = cov + self.reg * cov.diagonal().mean() * torch.eye(
            self.features, dtype=x.dtype, device=x.device
        )
        L, info = torch.linalg.cholesky_ex(cov)
        if int(info) != 0:
            raise ValueError("the data's covariance is singular (collinear columns); increase reg")
        self.loc.copy_(mean)
        self.lower.copy_(L * self.mask)
        self.log_diag.copy_(L.diagonal().log())

    def cholesky(self) -> Tensor:
        """The lower-triangular factor :math:`L` of the covariance."""
        return self.lower * self.mask + torch.diag(self.log_diag.exp())

    def call_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        L = self.cholesky()
        diff = (x - self.loc).reshape(-1, self.features)
        z = torch.linalg.solve_triangular(L.T, diff, upper=True, left=False).reshape(x.shape)
        return normal_cdf(z), normal_log_pdf(z).sum(-1) - self.log_diag.sum()

    def inverse_and_ladj(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z = normal_icdf(u)
        x = self.loc + z @ self.cholesky().T
        return x, self.log_diag.sum() - normal_log_pdf(z).sum(-1)
