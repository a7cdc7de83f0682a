r"""Trainable marginal Gaussianization (Meng, Song, Song & Ermon, "Gaussianization Flows",
AISTATS 2020): every coordinate goes through a mixture-of-logistics CDF and the standard normal
quantile function,

.. math::
    z_i = \Phi^{-1}\bigl(F_i(x_i)\bigr), \qquad
    F_i(x) = \sum_{k=1}^K w_{ik}\, \sigma\Bigl(\frac{x - \mu_{ik}}{s_{ik}}\Bigr), \qquad
    \log\Bigl|\frac{dz_i}{dx_i}\Bigr| = \log f_i(x_i) - \log \varphi(z_i),

with :math:`f_i = F_i'` the mixture density and :math:`\varphi` the standard normal density.
This data-to-noise direction is the closed form (the paper's "kernel layer"), so in pyroflows'
convention :math:`x = T(z)` it is the **inverse**, i.e. **density evaluation is one pass**;
sampling solves :math:`\log F(x) = \log\Phi(z)` for :math:`z \le 0` and
:math:`\log(1 - F(x)) = \log\Phi(-z)` for :math:`z > 0` (the smaller tail, in log space) by
batched bisection
(:func:`~pyroflows.numerics.bisection.monotone_inverse`, implicit gradients) in the tight
bracket :math:`[\min_k q_k, \max_k q_k]` of the components' own quantiles
:math:`q_k = \mu_k + s_k \operatorname{logit}\Phi(z)`.

Numerics: :math:`\log F` and :math:`\log(1 - F)` are both computed as log-sum-exps of
log-sigmoids (neither is ever formed as one minus the other), :math:`\Phi^{-1}` is applied to the smaller of the two
(:math:`z = -\Phi^{-1}(1 - F)` on the upper side) and, below the dtype's smallest normal
number, from the logarithm by the asymptotic tail formula refined by Newton steps on
:math:`\log\Phi` (:func:`ndtri_log`), so :math:`z` and the log-determinant stay finite for every
finite input.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..checks import check_count, check_real
from ..nn.amortized import AmortizedParameters
from ..nn.options import passes_keywords_to
from ..numerics.bisection import monotone_inverse
from .amortized import NETWORK_KEYWORDS, AmortizedBijection
from .elementwise import ElementwiseMap, broadcast_params, soft_clamp

__all__ = ["GaussianizationMap", "MarginalGaussianization", "ndtri_log"]

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _log_normal_density(z: Tensor) -> Tensor:
    return -0.5 * z.square() - _LOG_SQRT_2PI


def _log_hazard(z: Tensor) -> Tensor:
    r"""The log of the normal hazard :math:`\varphi(z) / \Phi(-z)` for :math:`z \ge 0`.

    Formed directly up to :math:`z_0 = \epsilon^{-1/6}` (bit-for-bit the difference of logs
    used before; its rounding, about :math:`\epsilon z^2`, stays below :math:`\epsilon^{2/3}`);
    beyond, where that difference of two :math:`-z^2/2` cancels catastrophically (and then
    overflows), from the asymptotic series
    :math:`\log z - \log(1 - z^{-2} + 3 z^{-4} - 15 z^{-6})` (error about
    :math:`105 z^{-8} \le 105\,\epsilon^{4/3}`).
    """
    big = torch.finfo(z.dtype).eps ** (-1 / 6)
    near = z.clamp_max(big)
    direct = _log_normal_density(near) - torch.special.log_ndtr(-near)
    far = z.clamp_min(big)
    r = far.reciprocal().square()
    asymptotic = torch.log(far) - torch.log1p(r * (-1 + r * (3 - 15 * r)))
    return torch.where(z > big, asymptotic, direct)


def ndtri_log(log_p: Tensor) -> Tensor:
    r""":math:`\Phi^{-1}(e^{\ell})` for :math:`\ell = \log p \le \log \tfrac12`, finite for every finite :math:`\ell`.

    Above :math:`\log` of the dtype's smallest normal number it is ``torch.special.ndtri``
    of :math:`e^\ell`; below, the asymptotic tail :math:`z \approx -\sqrt{t - \log t - \log 2\pi}`,
    :math:`t = -2\ell`, refined by three Newton steps on :math:`\log\Phi(z) = \ell`
    (``torch.special.log_ndtr`` is accurate there) and one implicit step that gives the exact
    derivative :math:`dz/d\ell = \Phi(z)/\varphi(z)`.

    Example:
        >>> z = ndtri_log(torch.tensor([-1000.0], dtype=torch.float64))
        >>> torch.special.log_ndtr(z)
        tensor([-1000.], dtype=torch.float64)
    """
    threshold = math.log(torch.finfo(log_p.dtype).tiny) + 1.0
    direct = torch.special.ndtri(torch.exp(log_p.clamp_min(threshold)))
    far = log_p.clamp_max(threshold)
    t = -2 * far
    tail = -torch.sqrt(t - torch.log(t) - math.log(2 * math.pi))
    with torch.no_grad():
        for _ in range(3):
            log_cdf = torch.special.log_ndtr(tail)
            tail = tail - (log_cdf - far) / torch.exp(_log_hazard(-tail))
    tail = tail.detach()
    log_cdf = torch.special.log_ndtr(tail)
    # d log Phi / dz, the hazard at -z: finite far out (the difference of logs overflows).
    slope = torch.exp(_log_hazard(-tail)).detach()
    tail = tail - (log_cdf - far) / slope
    return torch.where(log_p > threshold, direct, tail)


def _default_offsets(components: int) -> Tensor:
    """Raw-parameter offsets making all-zero parameters a mixture close to :math:`\\Phi`.

    Equal weights, locations :math:`0.85\\,\\Phi^{-1}((k - 1/2)/K)` and one scale
    :math:`\\max(0.34, 0.5 - 0.06 \\log_2 K)` (constants from a grid search on
    :math:`\\sup_{|x| \\le 3} |\\Phi^{-1}(F(x)) - x|`), so a zero-initialised layer is close to
    the identity: for :math:`K = 8`, :math:`|z - x| < 0.09` and :math:`|\\log z'| < 0.14` on
    :math:`[-3, 3]` (not exactly the identity: no logistic mixture is :math:`\\Phi`).
    """
    k = torch.arange(components, dtype=torch.float64)
    loc = 0.85 * torch.special.ndtri((k + 0.5) / components)
    scale = max(0.34, 0.5 - 0.06 * math.log2(components))
    return torch.cat([torch.zeros(components), loc, torch.full((components,), math.log(scale))])


class GaussianizationMap(ElementwiseMap):
    r"""The marginal Gaussianization :math:`v = \Phi^{-1}(F(u))` as an :class:`ElementwiseMap`.

    ``forward`` is the paper's explicit data-to-noise map (one pass); ``inverse`` is the
    bisection. Per element the ``3K`` parameters are ``[weight logits | locations |
    log-scales]``, added to fixed offsets (:func:`_default_offsets`) so that all-zero
    parameters give a map close to the identity; log-scales are soft-bounded,
    :math:`\log s = B \tanh(\tilde s / B)`, so no component collapses onto a point.

    Args:
        components: number :math:`K` of logistic components.
        log_scale_bound: the bound :math:`B`.
        iterations: bisection steps of the inverse (default: the dtype's resolution).

    Example:
        >>> m = GaussianizationMap(4)
        >>> u, params = torch.randn(5, 2), torch.zeros(5, 2, m.num_params)
        >>> v, log_slope = m(u, params)
        >>> torch.allclose(m.inverse(v, params)[0], u, atol=1e-5)
        True
    """

    def __init__(
        self, components: int = 8, log_scale_bound: float = 6.0, iterations: int | None = None
    ) -> None:
        super().__init__()
        self.components = check_count("components", components)
        self.num_params = 3 * components
        self.log_scale_bound = check_real("log_scale_bound", log_scale_bound)
        self.iterations = iterations
        self.register_buffer("offsets", _default_offsets(components).to(torch.get_default_dtype()))

    def extra_repr(self) -> str:
        return f"components={self.components}, log_scale_bound={self.log_scale_bound}"

    def mixture(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(log_weights, loc, log_scale)``, each ``(..., K)``, from raw ``params`` ``(..., 3K)``."""
        K, B = self.components, self.log_scale_bound
        p = params + self.offsets
        log_w = torch.log_softmax(p[..., :K], dim=-1)
        return log_w, p[..., K : 2 * K], soft_clamp(p[..., 2 * K :], B)

    def raw_params(self, weights: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
        """The raw parameters (..., 3K) giving a mixture (weights, loc, scale) (..., K); scales
        are clipped into the bound."""
        B = self.log_scale_bound
        log_s = scale.log().clamp(-0.999 * B, 0.999 * B)
        # A zero weight becomes a very negative (finite) logit, not -inf.
        log_w = weights.clamp_min(torch.finfo(weights.dtype).tiny).log()
        raw = torch.cat([log_w, loc, B * torch.atanh(log_s / B)], -1)
        return raw - self.offsets.to(raw)

    def _log_cdf_sf(self, u: Tensor, params: Tensor, density: bool = True) -> tuple[Tensor, ...]:
        """:math:`(\\log F(u), \\log(1 - F(u))[, \\log f(u)])`, each a log-sum-exp.

        One log-sigmoid per component: :math:`\\log\\sigma(-y) = \\log\\sigma(y) - y`, whose
        rounding (about :math:`\\epsilon |y|` where :math:`\\log\\sigma(-y) \\approx 0`) only
        touches components far above :math:`u` in :math:`1 - F`, never a tail's leading term.
        """
        log_w, loc, log_s = self.mixture(params)
        y = (u[..., None] - loc) * torch.exp(-log_s)
        lower = torch.nn.functional.logsigmoid(y)
        upper = lower - y
        out = (torch.logsumexp(log_w + lower, -1), torch.logsumexp(log_w + upper, -1))
        if density:
            out += (torch.logsumexp(log_w - log_s + lower + upper, -1),)
        return out

    def gaussianize(self, u: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`(\\Phi^{-1}(F(u)), \\log F'(u) - \\log\\varphi(v))`, elementwise.

        Far out (:math:`|v| > \\epsilon^{-1/6}`) :math:`\\log f` and :math:`\\log\\varphi(v)`,
        both about :math:`-|u|/s`, would cancel (an error of :math:`\\epsilon |u| / s`: +4e84
        at :math:`u = 10^{100}`); there the log-slope is formed as
        :math:`\\log(f / T) - \\log(\\varphi(v) / \\Phi(-|v|))`, :math:`T` the smaller
        tail (:math:`F` or :math:`1 - F`, with :math:`\\Phi(-|v|) = T` by construction): the
        mixture's tail hazard, a weighted mean of the components' own (no cancellation), minus
        the normal log-hazard (:func:`_log_hazard`).
        """
        log_w, loc, log_s = self.mixture(params)
        y = (u[..., None] - loc) * torch.exp(-log_s)
        lower = torch.nn.functional.logsigmoid(y)
        upper = lower - y
        a, b = log_w + lower, log_w + upper
        log_cdf, log_sf = torch.logsumexp(a, -1), torch.logsumexp(b, -1)
        log_density = torch.logsumexp(log_w - log_s + lower + upper, -1)
        half = math.log(0.5)
        below = log_cdf <= log_sf
        v = torch.where(
            below,
            ndtri_log(log_cdf.clamp_max(half)),
            -ndtri_log(log_sf.clamp_max(half)),
        )
        near = log_density - _log_normal_density(v)
        # log f - log T = log sum_k softmax(tail terms)_k * (component k's density / tail).
        hazards = torch.where(
            below[..., None],
            torch.log_softmax(a, -1) + upper,
            torch.log_softmax(b, -1) + lower,
        )
        far = torch.logsumexp(hazards - log_s, -1) - _log_hazard(v.abs())
        big = torch.finfo(v.dtype).eps ** (-1 / 6)
        return v, torch.where(v.abs() > big, far, near)

    def forward(self, u: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self.gaussianize(u, params)

    def inverse(self, v: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """Solve :math:`\\log F(u) = \\log\\Phi(v)` (:math:`v \\le 0`) or, mirrored,
        :math:`\\log(1 - F(u)) = \\log\\Phi(-v)` (:math:`v > 0`) by bisection: always the smaller
        tail in log space (accurate to the dtype's resolution in both tails), one
        log-sum-exp per step, no :math:`\\Phi^{-1}` inside the loop."""
        log_w, loc, log_s = self.mixture(params)
        # 1 - F(u) = F_m(-u) for the mirrored mixture (locations -mu): solve F_m(t) = Phi(m v).
        mirror = torch.where(v > 0, -1.0, 1.0).to(v)
        loc_m = loc * mirror[..., None]
        inv_scale = torch.exp(-log_s)
        target = torch.special.log_ndtr(mirror * v)
        # Each component's quantile of the target brackets the root.
        logit = (target - torch.special.log_ndtr(-mirror * v))[..., None]
        quantiles = (loc_m + torch.exp(log_s) * logit).detach()
        lo, hi = quantiles.amin(-1), quantiles.amax(-1)
        pad = 1e-3 * (hi - lo) + 1e-6 * (1 + lo.abs() + hi.abs())

        def log_cdf(t: Tensor) -> Tensor:
            return torch.logsumexp(
                log_w + torch.nn.functional.logsigmoid((t[..., None] - loc_m) * inv_scale), -1
            )

        def slope(t: Tensor) -> Tensor:  # f_m / F_m
            y = (t[..., None] - loc_m) * inv_scale
            lower = torch.nn.functional.logsigmoid(y)
            return torch.exp(
                torch.logsumexp(log_w - log_s + 2 * lower - y, -1)
                - torch.logsumexp(log_w + lower, -1)
            )

        t = monotone_inverse(log_cdf, slope, target, lo - pad, hi + pad, self.iterations)
        u = mirror * t
        return u, -self.gaussianize(u, params)[1]


@passes_keywords_to(
    GaussianizationMap,
    "components",
    "log_scale_bound",
    "iterations",
    AmortizedParameters,
    *NETWORK_KEYWORDS,
)
class MarginalGaussianization(AmortizedBijection):
    r"""Marginal Gaussianization layer :math:`x_i = F_i^{-1}(\Phi(z_i))` of a Gaussianization flow.

    Applies :class:`GaussianizationMap` with the data-to-noise map as its inverse (Meng et al.
    2020). **Fast direction: density** (one :math:`O(dK)` pass); sampling costs ``iterations``
    such passes (bisection). Parameters: :math:`3K` per feature (weight logits, locations,
    log-scales); with a context, free parameters plus an MLP of the context
    (:class:`~pyroflows.transforms.AmortizedParameters`), so the mixture depends on :math:`c`.

    .. math:: \log\Bigl|\det \frac{\partial z}{\partial x}\Bigr|
        = \sum_i \log f_i(x_i) - \log\varphi(z_i).

    Args:
        features: event size :math:`d`.
        context: context size (0: unconditional).
        options: those of the :class:`GaussianizationMap` (``components``,
            ``log_scale_bound``, ``iterations``: the bisection steps of sampling) and of the
            context network, ``hidden`` and ``activation``
            (:class:`~pyroflows.nn.AmortizedParameters`).

    Example:
        >>> t = MarginalGaussianization(2, components=4)
        >>> z, ladj = t.inverse_and_ladj(torch.randn(5, 2))  # mixture CDFs, then the normal quantile
        >>> z.shape, ladj.shape
        (torch.Size([5, 2]), torch.Size([5]))
    """

    fast_direction = "inverse"

    def __init__(self, features: int, context: int = 0, **options: Any) -> None:
        network = {name: options.pop(name) for name in NETWORK_KEYWORDS if name in options}
        map = GaussianizationMap(**options)
        super().__init__(features, context, torch.zeros(features * map.num_params), **network)
        self.map = map

    def extra_repr(self) -> str:
        return super().extra_repr() + f", components={self.map.components}"

    def raw(self, context: Tensor | None = None) -> Tensor:
        """The map's parameters, shape ``(..., d, 3K)``."""
        return self.params(context).unflatten(-1, (self.features, self.map.num_params))

    @torch.no_grad()
    def set_mixture(self, weights: Tensor, loc: Tensor, scale: Tensor) -> None:
        """Set the free parameters to per-feature mixtures, each argument of shape ``(d, K)``
        (the context network's offsets, if any, are left as they are). The weights of each
        feature are renormalised to sum to one.

        Raises:
            ValueError: a wrong shape, non-finite values, negative weights or weights summing
                to zero for a feature, or non-positive scales (nothing is changed).
        """
        shape = (self.features, self.map.components)
        for name, value in (("weights", weights), ("loc", loc), ("scale", scale)):
            if value.shape != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
            if not torch.isfinite(value).all():
                raise ValueError(f"{name} has NaN or infinite values")
        if (weights < 0).any() or (weights.sum(-1) <= 0).any():
            raise ValueError("weights must be non-negative with a positive sum for every feature")
        if (scale <= 0).any():
            raise ValueError("scale must be positive")
        weights = weights / weights.sum(-1, keepdim=True)
        free = self.params.free
        raw = self.map.raw_params(weights.to(free), loc.to(free), scale.to(free))
        free.copy_(raw.flatten())

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, ladj = self.map.inverse(*broadcast_params(z, self.raw(context)))
        return x, ladj.sum(-1)

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, ladj = self.map(*broadcast_params(x, self.raw(context)))
        return z, ladj.sum(-1)
