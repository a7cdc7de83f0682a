r"""Independent destructors: one univariate CDF per dimension.

:math:`D(x)_i = F_i(x_i)`, so :math:`\log|\det J_D(x)| = \sum_i \log f_i(x_i)`, the log-density
of the product of the marginals. Three families:

* :class:`HistogramDestructor` on the cube: piecewise-constant density with pseudo-count
  smoothing (no bin ever has zero density), piecewise-linear CDF, exact inverse;
* :class:`BetaDestructor` on the cube: a Beta(a, b) per dimension (maximum likelihood by
  Newton's method from the moment estimates); inverse by batched bisection;
* :class:`NormalCdfDestructor` on the real line: a Gaussian per dimension,
  :math:`u = \Phi((x - \mu)/\sigma)`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_count
from ..numerics.bisection import monotone_inverse
from ..transforms.splines import rq_bin_forward, rq_bin_inverse
from .base import Destructor, check_no_constant_columns
from .domain import REAL, UNIT
from .registry import register
from .shards import row_span, total
from .special import beta_log_pdf, betainc, normal_cdf, normal_icdf, normal_log_pdf

__all__ = ["BetaDestructor", "HistogramDestructor", "NormalCdfDestructor"]


@register("histogram")
class HistogramDestructor(Destructor):
    r"""Per-dimension histogram density on :math:`[0,1]` with ``bins`` equal-width bins.

    Fitting counts the (weighted) points per bin and adds ``alpha`` pseudo-points to every bin,
    so the bin probabilities are :math:`p_{ik} = (n_{ik} + \alpha) / (n + K\alpha)`
    (:math:`n` the number of points). The log-probabilities are a parameter
    (softmax-normalised), so a fitted histogram can be fine-tuned by gradient.

    Two interpolations of the same bin masses:

    * ``smooth=False``: the classic histogram, density :math:`K p_{ik}` on bin :math:`k`,
      piecewise-linear CDF, exact inverse;
    * ``smooth=True``: a monotone rational-quadratic spline through the same CDF values at the
      bin edges, with knot slopes the mean of the neighbouring bins' densities (Gregory &
      Delbourgo 1982, as in neural spline flows): every bin keeps exactly its mass, but the
      density is continuous, which is what gradient fine-tuning of a deep stack needs (with
      piecewise-constant densities the likelihood jumps whenever a point crosses a later
      layer's bin edge). Exact inverse (a quadratic per point).

    Domain: ``"unit"``.

    Args:
        features: dimension.
        bins: number of bins :math:`K`.
        alpha: pseudo-count per bin (``> 0``).
        smooth: rational-quadratic instead of piecewise-linear CDF.

    Example:
        >>> x = torch.rand(500, 2, dtype=torch.float64) ** 2
        >>> d = HistogramDestructor(2, bins=20).fit(x)
        >>> u = d.to_uniform(x)
        >>> bool((u >= 0).all() and (u <= 1).all())
        True
    """

    domain = UNIT

    def __init__(
        self, features: int, bins: int = 40, alpha: float = 1.0, smooth: bool = False
    ) -> None:
        super().__init__(features)
        bins = check_count("bins", bins)
        if not alpha > 0:
            raise ValueError(
                f"alpha must be positive (it keeps every bin's density above 0), got {alpha!r}"
            )
        self.bins = bins
        self.alpha = float(alpha)
        self.smooth = bool(smooth)
        self.logits = nn.Parameter(torch.zeros(features, bins))
        self.register_buffer("offsets", torch.arange(features) * bins)

    def extra_repr(self) -> str:
        return (
            f"features={self.features}, bins={self.bins}, alpha={self.alpha}, smooth={self.smooth}"
        )

    def _fit(self, x: Tensor, w: Tensor) -> None:
        n, K = row_span(x.shape[0])[1], self.bins
        k = (x * K).floor().long().clamp(0, K - 1) + self.offsets
        counts = torch.zeros(self.features * K, dtype=x.dtype, device=x.device)
        counts.index_add_(0, k.reshape(-1), (w * n)[:, None].expand_as(x).reshape(-1))
        counts = total(counts)
        probs = (counts.reshape(self.features, K) + self.alpha) / (n + K * self.alpha)
        self.logits.copy_(probs.log())

    def _tables(self) -> tuple[Tensor, Tensor, Tensor]:
        """Log bin masses (d, K), CDF at the edges (d, K+1), knot slopes (d, K+1)."""
        log_p = torch.log_softmax(self.logits, -1)
        p = log_p.exp()
        cdf = F.pad(torch.cumsum(p, -1), (1, 0))
        density = p * self.bins
        slopes = torch.cat(
            [density[:, :1], 0.5 * (density[:, 1:] + density[:, :-1]), density[:, -1:]], -1
        )
        return log_p, cdf, slopes

    def _gather(self, k: Tensor, log_p: Tensor, cdf: Tensor, slopes: Tensor) -> tuple[Tensor, ...]:
        flat = k + self.offsets
        lp = log_p.reshape(-1)[flat]
        y0 = cdf[:, :-1].reshape(-1)[flat]
        d0 = slopes[:, :-1].reshape(-1)[flat]
        d1 = slopes[:, 1:].reshape(-1)[flat]
        return lp, y0, d0, d1

    def call_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        K = self.bins
        log_p, cdf, slopes = self._tables()
        xc = x.clamp(0, 1)
        k = (xc * K).detach().floor().long().clamp(0, K - 1)
        lp, y0, d0, d1 = self._gather(k, log_p, cdf, slopes)
        xi = (xc * K - k).clamp(0, 1)
        if not self.smooth:
            u = y0 + xi * lp.exp()
            return u.clamp(0, 1), (lp + math.log(K)).sum(-1)
        h = lp.exp()
        u, log_deriv = rq_bin_forward(xi, y0, h, h * K, d0, d1)
        return u.clamp(0, 1), log_deriv.sum(-1)

    def inverse_and_ladj(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        K = self.bins
        log_p, cdf, slopes = self._tables()
        uc = u.clamp(0, 1)
        flat_u = uc.reshape(-1, self.features)
        k = torch.searchsorted(
            cdf[:, 1:-1].detach().contiguous(), flat_u.detach().T.contiguous(), right=True
        ).T.reshape(u.shape)
        lp, y0, d0, d1 = self._gather(k, log_p, cdf, slopes)
        if not self.smooth:
            x = ((k + (uc - y0) * torch.exp(-lp)) / K).clamp(0, 1)
            return x, -(lp + math.log(K)).sum(-1)
        h = lp.exp()
        xi, log_deriv = rq_bin_inverse(uc - y0, h, h * K, d0, d1)
        x = ((k + xi) / K).clamp(0, 1)
        return x, -log_deriv.sum(-1)


@register("normal-cdf")
class NormalCdfDestructor(Destructor):
    r"""Independent Gaussians: :math:`u_i = \Phi((x_i - \mu_i) / \sigma_i)`.

    Fitting sets the (weighted) mean and standard deviation; zero-variance columns are an
    error. ``loc`` and ``log_scale`` are parameters. Domain: ``"real"``.

    Args:
        features: dimension.
    """

    domain = REAL

    def __init__(self, features: int) -> None:
        super().__init__(features)
        self.loc = nn.Parameter(torch.zeros(features))
        self.log_scale = nn.Parameter(torch.zeros(features))

    def _fit(self, x: Tensor, w: Tensor) -> None:
        var = check_no_constant_columns(x, w)
        self.loc.copy_(total(w @ x))
        self.log_scale.copy_(0.5 * var.log())

    def call_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z = (x - self.loc) * torch.exp(-self.log_scale)
        return normal_cdf(z), (normal_log_pdf(z) - self.log_scale).sum(-1)

    def inverse_and_ladj(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z = normal_icdf(u)
        x = self.loc + self.log_scale.exp() * z
        return x, -(normal_log_pdf(z) - self.log_scale).sum(-1)


@register("beta")
class BetaDestructor(Destructor):
    r"""Independent Beta densities: :math:`u_i = I_{x_i}(a_i, b_i)` (regularised incomplete Beta).

    Fitting starts from the moment estimates and takes Newton steps on the (weighted)
    log-likelihood in :math:`(\log a, \log b)`. Inputs are clamped into the open interval
    ``[tiny, 1 - eps/2]`` before the log-density (a documented clamp: the faces have
    probability zero). The inverse is a batched bisection with implicit gradients, so only
    :math:`D` is one pass: ``fast_direction = "forward"``. Domain: ``"unit"``.

    Args:
        features: dimension.
        newton_steps: Newton iterations of the maximum-likelihood fit.
    """

    domain = UNIT
    fast_direction = "forward"

    def __init__(self, features: int, newton_steps: int = 30) -> None:
        super().__init__(features)
        self.newton_steps = newton_steps
        self.log_a = nn.Parameter(torch.zeros(features))
        self.log_b = nn.Parameter(torch.zeros(features))

    @staticmethod
    def _open(x: Tensor) -> Tensor:
        info = torch.finfo(x.dtype)
        return x.clamp(info.tiny, 1 - info.eps / 2)

    def _fit(self, x: Tensor, w: Tensor) -> None:
        var = check_no_constant_columns(x, w)
        mean = total(w @ x).clamp(1e-6, 1 - 1e-6)
        common = (mean * (1 - mean) / var.clamp_min(1e-12) - 1).clamp_min(1e-3)
        a, b = (mean * common).clamp(1e-3, 1e6), ((1 - mean) * common).clamp(1e-3, 1e6)
        xo = self._open(x).clamp(1e-300 if x.dtype == torch.float64 else 1e-38)
        s1, s2 = total(w @ torch.log(xo), w @ torch.log1p(-xo))

        def loglik(a: Tensor, b: Tensor) -> Tensor:
            return (
                (a - 1) * s1
                + (b - 1) * s2
                - (torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b))
            )

        def rounding(a: Tensor, b: Tensor) -> Tensor:  # of loglik: eps x its terms' sizes
            terms = ((a - 1) * s1).abs() + ((b - 1) * s2).abs()
            terms = terms + torch.lgamma(a).abs() + torch.lgamma(b).abs()
            return 16 * torch.finfo(a.dtype).eps * (terms + torch.lgamma(a + b).abs())

        for _ in range(self.newton_steps):
            psi_ab, tri_ab = torch.digamma(a + b), torch.polygamma(1, a + b)
            g = torch.stack([psi_ab - torch.digamma(a) + s1, psi_ab - torch.digamma(b) + s2], -1)
            h11 = tri_ab - torch.polygamma(1, a)
            h22 = tri_ab - torch.polygamma(1, b)
            det = h11 * h22 - tri_ab * tri_ab
            da = (h22 * g[:, 0] - tri_ab * g[:, 1]) / det
            db = (h11 * g[:, 1] - tri_ab * g[:, 0]) / det
            # Newton step (the log-likelihood is concave in (a, b)), halved until it improves
            # and stays positive: elementwise, fixed number of halvings. A change within
            # loglik's rounding counts as no worse: near the optimum the Newton step's gain is
            # below it, and refusing the step there would stop at sqrt(eps) precision, where
            # the rounding of the sums (one process or several) decides the last digits.
            base = loglik(a, b) - rounding(a, b)
            step = torch.ones_like(a)
            for _ in range(20):
                na, nb = a - step * da, b - step * db
                ok = (na > 0) & (nb > 0)
                better = ok & (loglik(na.clamp_min(1e-12), nb.clamp_min(1e-12)) >= base)
                step = torch.where(better, step, step / 2)
            na, nb = a - step * da, b - step * db
            good = (na > 0) & (nb > 0) & (loglik(na.clamp_min(1e-12), nb.clamp_min(1e-12)) >= base)
            a, b = torch.where(good, na, a), torch.where(good, nb, b)
        self.log_a.copy_(a.log())
        self.log_b.copy_(b.log())

    def call_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        a, b = self.log_a.exp(), self.log_b.exp()
        xo = self._open(x)
        return betainc(a, b, xo), beta_log_pdf(xo, a, b).sum(-1)

    def inverse_and_ladj(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        a, b = self.log_a.exp(), self.log_b.exp()
        uc = u.clamp(0, 1)
        zero, one = torch.zeros_like(uc), torch.ones_like(uc)
        x = monotone_inverse(
            lambda v: betainc(a, b, v),
            lambda v: beta_log_pdf(self._open(v), a, b).exp(),
            uc,
            zero,
            one,
            newton=True,
        )
        x = self._open(x)
        return x, -beta_log_pdf(x, a, b).sum(-1)
