r"""How a guide's draws are scored against a posteriordb reference (issue 13's target).

Per parameter: the error of the mean in reference standard deviations and the ratio of
standard deviations (guide / reference); a fit is "within target" when every
:math:`|\text{mean error}| \le 0.1` and every sd ratio lies in :math:`[0.9, 1.1]`.

Two refinements, each stated in the benchmark's output:

* **PSIS-weighted estimates.** :func:`weighted_mean_sd` scores the same guide draws weighted
  by their Pareto-smoothed importance weights :math:`p/q` (Vehtari et al. 2024), the
  estimates :func:`pyroflows.infer.fit_guide`'s check (``result.check.mean_and_sd()``) gives
  a user when :math:`\hat k` is below the sample-size-dependent threshold. Above it the weights
  are unreliable and the raw draws are scored (:func:`psis_scored`).
* **Parameters without a standard deviation.** A marginal with tails like :math:`x^{-3}` has no
  variance: its sample sd never settles, for the reference as for a guide. :func:`unstable_sd`
  flags the parameters whose reference draws' squared deviations :math:`(x - \bar x)^2` have
  a Pareto tail shape :math:`\hat k` (the PSIS diagnostic of their upper tail, Vehtari et al.
  2024, https://arxiv.org/abs/1507.02646) of at least :data:`SD_KHAT_MAX`: their Monte Carlo
  estimate of the second moment is unreliable (at :math:`\hat k \ge 1` it does not exist).
  A positive one is scored on the log scale (mean and sd of :math:`\log x`, moments that
  exist), reported as such. On the 14 posteriors of ``../shared/data/posteriordb`` this
  concerns ``K_m`` and ``V_m`` of ``one_comp_mm_elim_abs`` (:math:`\hat k` 1.03 and 1.01;
  every other parameter 0.32 or less; ``K_m``'s per-chain sds range from 4.2 to 11.1).
"""

from __future__ import annotations

import numpy as np
import torch

from pyroflows.infer import psis

__all__ = [
    "SD_KHAT_MAX",
    "mean_error_and_sd_ratio",
    "psis_scored",
    "scoring_scale",
    "sd_khat",
    "unstable_sd",
    "weighted_mean_sd",
    "within_target",
]

#: From this Pareto k-hat of the squared deviations on, a sample sd is not an estimate (the
#: PSIS threshold for reliable Monte Carlo estimates; a variance does not exist from 1).
SD_KHAT_MAX = 0.7


def sd_khat(draws: np.ndarray) -> np.ndarray:
    r"""Pareto k-hat of the upper tail of :math:`(x - \bar x)^2` per parameter; ``draws``
    (..., P)."""
    flat = draws.reshape(-1, draws.shape[-1])
    squares = (flat - flat.mean(0)) ** 2
    return np.array([psis(torch.as_tensor(np.log(column)))[1] for column in squares.T])


def unstable_sd(draws: np.ndarray) -> np.ndarray:
    """Boolean per parameter: its sd cannot be estimated from draws (see the module)."""
    return sd_khat(draws) >= SD_KHAT_MAX


def scoring_scale(draws: np.ndarray) -> np.ndarray:
    """Boolean per parameter: score it on the log scale (an unstable sd, positive draws)."""
    flat = draws.reshape(-1, draws.shape[-1])
    return unstable_sd(draws) & (flat > 0).all(0)


def weighted_mean_sd(
    x: np.ndarray, log_weights: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd per column of ``x`` (S, P) under normalised ``log_weights`` (S,), or the
    plain sample mean and sd (``ddof=1``) without them."""
    if log_weights is None:
        return x.mean(0), x.std(0, ddof=1)
    w = np.exp(log_weights - log_weights.max())
    w = w / w.sum()
    mean = w @ x
    return mean, np.sqrt(w @ (x - mean) ** 2)


def mean_error_and_sd_ratio(
    x: np.ndarray,
    reference: np.ndarray,
    log_scale: np.ndarray,
    log_weights: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(mean error in reference sds, sd ratio) per parameter of guide draws ``x`` (S, P)
    against ``reference`` draws (chains, draws, P); columns flagged in ``log_scale`` are
    compared as logarithms."""
    ref = reference.reshape(-1, reference.shape[-1])
    x = np.where(log_scale, np.log(np.where(log_scale, np.maximum(x, 1e-300), 1.0)), x)
    ref = np.where(log_scale, np.log(np.where(log_scale, ref, 1.0)), ref)
    ref_mean, ref_sd = ref.mean(0), ref.std(0, ddof=1)
    mean, sd = weighted_mean_sd(x, log_weights)
    return (mean - ref_mean) / ref_sd, sd / ref_sd


def psis_scored(khat: float, threshold: float) -> bool:
    """Whether the PSIS-weighted estimates are the ones to trust (:math:`\\hat k` below the
    threshold)."""
    return bool(not np.isnan(khat) and khat <= threshold)


def within_target(run: dict, weighted: bool = False) -> bool:
    """Issue 13's target for one run of ``posteriordb.py``: from the raw draws, or with
    ``weighted=True`` from the PSIS-weighted ones where they are trusted (else the raw)."""
    prefix = "psis_" if weighted and run.get("psis_trusted") else ""
    low, high = run[f"{prefix}sd_ratio_range"]
    return bool(run[f"{prefix}max_abs_mean_error"] <= 0.1 and 0.9 <= low and high <= 1.1)
