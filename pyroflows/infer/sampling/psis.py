r"""Shared importance-weight diagnostics: PSIS, k-hat threshold, ESS, evidence and MCSE.

All functions take log-weights :math:`\log w_s = \log p(x_s) - \log q(x_s)` of ``S`` draws
:math:`x_s \sim q` (any leading batch shape, samples on the last dimension unless noted) and
work in float64 internally.

* Pareto-smoothed importance sampling (PSIS; Vehtari, Simpson, Gelman, Yao & Gabry,
  "Pareto smoothed importance sampling", JMLR 2024), the computation of :func:`arviz.psislw`
  (``reff=1``): the largest weights are replaced by quantiles of a generalized Pareto fit
  whose shape :math:`\hat k` is the reliability diagnostic. :func:`smooth_tail` needs only
  the largest ``tail_length(S) + 1`` weights, so weights spread over processes are smoothed
  exactly (:mod:`pyroflows.infer.sampling.sharded`).
* The sample-size-dependent threshold :math:`\min(1 - 1/\log_{10} S,\ 0.7)`: above it the
  estimate is unreliable (the paper's section 3).
* Kish's effective sample size :math:`1 / \sum_s \bar w_s^2` of normalised weights.
* :math:`\log \hat Z = \log \frac1S \sum_s w_s` with the delta-method standard error
  :math:`\operatorname{se}(\log\hat Z) \approx \operatorname{sd}(w) / (\sqrt S\,\bar w)`.
* Self-normalised expectations :math:`\hat\mu = \sum_s \bar w_s f(x_s)` with the delta-method
  MCSE :math:`\sqrt{\sum_s \bar w_s^2 (f(x_s) - \hat\mu)^2}`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "NO_WEIGHT",
    "clean_log_weights",
    "ess",
    "khat_threshold",
    "log_evidence",
    "psis",
    "smooth_tail",
    "tail_length",
    "weighted_mean_and_mcse",
]

#: The error of a sample without one nonzero weight.
NO_WEIGHT = "every importance weight is zero (all log-weights are -inf or NaN)"


def khat_threshold(num_samples: int) -> float:
    r"""The PSIS reliability threshold :math:`\min(1 - 1/\log_{10} S,\ 0.7)` for ``S`` draws.

    Example:
        >>> round(khat_threshold(1000), 3), khat_threshold(10**6)
        (0.667, 0.7)
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if num_samples <= 10:
        return -math.inf
    return min(1.0 - 1.0 / math.log10(num_samples), 0.7)


def clean_log_weights(log_weights: Tensor) -> tuple[Tensor, int]:
    """Replace NaN (and ``+inf``, which would swamp every other weight) log-weights by
    ``-inf`` (weight zero); returns the cleaned tensor and how many were replaced."""
    bad = torch.isnan(log_weights) | (log_weights == math.inf)
    count = int(bad.sum())
    if count:
        log_weights = torch.where(bad, torch.full_like(log_weights, -math.inf), log_weights)
    return log_weights, count


def psis(log_weights: Tensor) -> tuple[Tensor, float]:
    r"""Pareto-smoothed, self-normalised log-weights and :math:`\hat k` (ArviZ's ``psislw``).

    Args:
        log_weights: shape (S,), ``-inf`` allowed (zero weight).

    Returns:
        ``(smoothed, khat)``: smoothed normalised log-weights, shape (S,), same device and
        dtype as the input (``logsumexp(smoothed) == 0``); :math:`\hat k` as a float: ``inf``
        when too few weights exist to fit the tail (one nonzero weight, or fewer than five
        above ArviZ's tail cutoff, i.e. S <= 20), ``-inf`` when every nonzero weight is the
        same (to the dtype's rounding).

    Equal weights (a proposal equal to the target up to a constant) have no tail: their
    distribution is a point mass, the limit of a generalized Pareto distribution with bounded
    support :math:`[0, \sigma/|k|]` as :math:`k \to -\infty`, so :math:`\hat k = -\infty`,
    below every threshold (the estimates are those of plain Monte Carlo from the target), and
    the smoothed weights are the raw ones. (ArviZ itself reports ``inf`` there: its tail
    above the cutoff is empty.)
    """
    if log_weights.dim() != 1:
        raise ValueError(f"psis() takes log-weights of shape (S,), got {tuple(log_weights.shape)}")
    finite = torch.isfinite(log_weights)
    if not bool(finite.any()):
        raise ValueError(NO_WEIGHT)
    lw = log_weights.detach().double().cpu().numpy()
    keep = finite.cpu().numpy()
    raw = lw[keep]
    if raw.size == 1 or raw.max() - raw.min() <= _tie_tolerance(raw, log_weights.dtype):
        # One weight (no tail to fit: inf) or equal weights (no tail at all: -inf).
        smoothed = np.where(keep, -np.log(raw.size), -np.inf)
        khat = math.inf if raw.size == 1 else -math.inf
        return torch.as_tensor(smoothed, device=log_weights.device).to(log_weights.dtype), khat
    # Smooth the positive weights only (ArviZ's psislw with reff=1, on the finite entries).
    x = raw - raw.max()
    top = np.argsort(x)[-(tail_length(raw.size) + 1) :]
    x[top], khat = smooth_tail(x[top])
    if np.isfinite(x[top]).all():
        x -= _logsumexp(x)
    else:
        # The tail fit degenerates (NaN) on (near-)constant weights, i.e. a proposal equal
        # to the target: there is no tail to smooth, so the normalised raw weights are exact.
        x = raw - (raw.max() + np.log(np.exp(raw - raw.max()).sum()))
    smoothed = np.full_like(lw, -np.inf)
    smoothed[keep] = x
    smoothed = torch.as_tensor(smoothed, device=log_weights.device).to(log_weights.dtype)
    return smoothed, float(khat)


def tail_length(num_weights: int) -> int:
    r"""How many of the largest of ``num_weights`` nonzero weights PSIS may smooth:
    :math:`\lceil\min(S/5,\ 3\sqrt S)\rceil` (ArviZ's rule with ``reff=1``)."""
    return int(np.ceil(min(num_weights / 5.0, 3 * num_weights**0.5)))


def smooth_tail(top: np.ndarray) -> tuple[np.ndarray, float]:
    r"""PSIS on the largest log-weights: fit the generalized Pareto tail and smooth it.

    Args:
        top: the ``tail_length(S) + 1`` largest finite log-weights of ``S``, in ascending
            order and shifted so that the largest of all ``S`` is 0 (float64). The first is
            the cutoff; the tail is the values strictly above it (and above the smallest
            normal float's log), at most ``tail_length(S)`` of them.

    Returns:
        ``(smoothed, khat)``: ``top`` with the tail replaced by the fitted Pareto quantiles
        (in the same ascending order, truncated at 0), and :math:`\hat k`; ``khat = inf``
        and ``top`` unchanged with fewer than five tail values. A degenerate fit gives NaN
        values (the caller falls back to the raw weights).

    Every quantity PSIS needs from the ``S`` weights is here, so the weights of several
    processes are smoothed exactly by gathering each one's largest ``tail_length(S) + 1``.
    """
    top = np.array(top, dtype=np.float64)
    cutoff = max(top[0], np.log(np.finfo(float).tiny))
    tail = top > cutoff
    if int(tail.sum()) <= 4:
        return top, math.inf
    shift = np.exp(cutoff)
    with np.errstate(all="ignore"):  # overflow in negligible terms; a degenerate fit: NaN
        k, sigma = _gpdfit(np.exp(top[tail]) - shift)
        n = int(tail.sum())
        smoothed = np.log(_gpinv(np.arange(0.5, n) / n, k, sigma) + shift)
    if np.isfinite(k):
        smoothed[smoothed > 0] = 0
        top[tail] = smoothed
    return top, float(k)


def _gpdfit(x: np.ndarray) -> tuple[float, float]:
    """Zhang & Stephens' (Technometrics 2009) empirical Bayes fit of a generalized Pareto
    distribution to sorted positive ``x``, with Vehtari et al.'s weak prior on the shape
    (the computation of ArviZ's ``_gpdfit``): ``(k, sigma)``."""
    n = len(x)
    m = 30 + int(n**0.5)
    b = 1 - np.sqrt(m / (np.arange(1, m + 1, dtype=float) - 0.5))
    b /= 3 * x[int(n / 4 + 0.5) - 1]
    b += 1 / x[-1]
    k = np.log1p(-b[:, None] * x).mean(axis=1)
    length_scale = n * (np.log(-(b / k)) - k - 1)
    weights = 1 / np.exp(length_scale - length_scale[:, None]).sum(axis=1)
    real = weights >= 10 * np.finfo(float).eps
    if not np.all(real):
        weights, b = weights[real], b[real]
    weights /= weights.sum()
    b_post = np.sum(b * weights)
    k_post = np.log1p(-b_post * x).mean()
    sigma = -k_post / b_post
    k_post = (n * k_post + 10 * 0.5) / (n + 10)
    return k_post, sigma


def _gpinv(p: np.ndarray, k: float, sigma: float) -> np.ndarray:
    """Quantiles ``p`` (in (0, 1)) of the generalized Pareto distribution; NaN if sigma <= 0."""
    if sigma <= 0:
        return np.full_like(p, np.nan)
    if np.abs(k) < np.finfo(float).eps:
        return -np.log1p(-p) * sigma
    return np.expm1(-k * np.log1p(-p)) / k * sigma


def _logsumexp(x: np.ndarray) -> float:
    top = x.max()
    return float(np.log(np.exp(x - top).sum()) + top)


def _tie_tolerance(raw: np.ndarray, dtype: torch.dtype) -> float:
    """Spread of log-weights that rounding alone explains: a few units in the last place of
    the input dtype at the weights' magnitude."""
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float64).eps
    return 16 * eps * max(1.0, float(np.abs(raw).max()))


def _normalize(log_weights: Tensor) -> Tensor:
    lw = log_weights.double()
    return torch.exp(lw - torch.logsumexp(lw, -1, keepdim=True))


def ess(log_weights: Tensor) -> Tensor:
    r"""Kish's effective sample size :math:`(\sum_s w_s)^2 / \sum_s w_s^2`, over the last dim."""
    w = _normalize(log_weights)
    return 1.0 / (w * w).sum(-1)


def log_evidence(log_weights: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`\log\hat Z = \log\frac1S\sum_s w_s` and its delta-method standard error.

    :math:`\operatorname{Var}(\hat Z) = \operatorname{Var}_q(w)/S`, so
    :math:`\operatorname{se}(\log\hat Z) \approx \operatorname{sd}(w)/(\sqrt S\,\bar w)`
    (sample standard deviation, ``S - 1`` in the denominator). Computed from weights scaled by
    their maximum, so it never overflows. Batched over leading dims; float64.
    """
    lw = log_weights.double()
    S = lw.shape[-1]
    top = lw.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    w = torch.exp(lw - top)
    mean = w.mean(-1)
    log_z = mean.log() + top.squeeze(-1)
    sd = w.std(-1) if S > 1 else torch.full_like(mean, math.inf)
    return log_z, sd / (math.sqrt(S) * mean)


def weighted_mean_and_mcse(
    values: Tensor, log_weights: Tensor, ancestors: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    r"""Self-normalised estimate :math:`\sum_s \bar w_s f_s` and its Monte Carlo standard error.

    The MCSE is the delta-method standard error of the ratio estimator,
    :math:`\sqrt{\sum_s \bar w_s^2 (f_s - \hat\mu)^2}` (Owen, "Monte Carlo theory, methods and
    examples", 2013, eq. 9.9), which reduces to :math:`\operatorname{sd}(f)/\sqrt S` for equal
    weights. For the particles of sequential Monte Carlo, which share ancestors, the terms of
    the particles descending from one initial particle (``ancestors``, their *Eve indices*)
    are summed first, :math:`\sqrt{\sum_m (\sum_{s: E_s = m} \bar w_s (f_s - \hat\mu))^2}`
    (Lee & Whiteley 2018, https://doi.org/10.1093/biomet/asy028, the asymptotic form; Chan &
    Lai 2013); with every particle its own ancestor it is the formula above.

    Args:
        values: :math:`f(x_s)`, shape (S, ...) (samples first).
        log_weights: shape (S,), normalised or not.
        ancestors: the Eve index of each sample (S,) (integers in ``[0, S)``), or ``None``
            for independent samples.

    Returns:
        ``(estimate, mcse)``, each of shape ``values.shape[1:]``, in ``values``' dtype.
    """
    if values.shape[0] != log_weights.shape[0]:
        raise ValueError(
            f"f returned {values.shape[0]} values along its first dimension for "
            f"{log_weights.shape[0]} samples; it must return one value (or row) per sample"
        )
    w = _normalize(log_weights).reshape((-1,) + (1,) * (values.dim() - 1))
    f = values.double()
    # Zero-weight samples (NaN targets) may have NaN values: they must not contaminate sums.
    f = torch.where(w > 0, f, torch.zeros_like(f))
    estimate = (w * f).sum(0)
    terms = w * (f - estimate)
    if ancestors is not None:
        terms = torch.zeros_like(terms).index_add_(0, ancestors.to(terms.device), terms)
    mcse = (terms**2).sum(0).sqrt()
    dtype = values.dtype if values.is_floating_point() else torch.float64
    return estimate.to(dtype), mcse.to(dtype)
