r"""The result of an importance sampler: weighted draws, their PSIS diagnostics and the
estimates they give (:math:`\log Z`, expectations, resampled draws)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ...checks import check_count
from .psis import clean_log_weights, ess, khat_threshold, log_evidence, psis, weighted_mean_and_mcse

__all__ = ["ImportanceResult", "all_nan_error", "finish", "warn_about"]


@dataclass
class ImportanceResult:
    r"""Weighted draws of an importance sampler and their diagnostics.

    Attributes:
        log_weights: :math:`\log w_s`, shape (S,); ``-inf`` where the target was NaN.
        samples: the draws as vectors (S, D) (unconstrained latents for a model), or ``None``
            for a generic guide proposal.
        site_samples: for a Pyro model, constrained values ``name -> (S, *site shape)``.
        log_target, log_proposal: :math:`\log\tilde p(x_s)` and :math:`\log q(x_s)` (S,),
            ``None`` for a generic guide.
        smoothed_log_weights: PSIS-smoothed normalised log-weights (S,).
        khat: the Pareto :math:`\hat k`; khat_threshold: :math:`\min(1-1/\log_{10}S, 0.7)`.
        num_nan: draws whose target (or proposal) log-density was NaN; they get weight zero.
        evidence_relative_variance: an estimate of :math:`\operatorname{Var}(\hat Z)/Z^2`
            when the weights alone do not give it (sequential Monte Carlo, whose particles
            share ancestors); ``None`` for independent draws.
        ancestors: for sequential Monte Carlo, the initial particle each draw descends from
            (S,), so that :meth:`expectation`'s standard error counts the shared ancestry;
            ``None`` for independent draws.
    """

    log_weights: Tensor
    samples: Tensor | None
    site_samples: dict[str, Tensor] | None
    log_target: Tensor | None
    log_proposal: Tensor | None
    smoothed_log_weights: Tensor
    khat: float
    khat_threshold: float
    num_nan: int = 0
    defensive: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    evidence_relative_variance: float | None = None
    ancestors: Tensor | None = None

    @property
    def num_samples(self) -> int:
        return int(self.log_weights.shape[0])

    @property
    def normalized_weights(self) -> Tensor:
        r"""Self-normalised weights :math:`\bar w_s` (sum to one), shape (S,)."""
        return torch.softmax(self.log_weights, 0)

    @property
    def pareto_weights(self) -> Tensor:
        """PSIS-smoothed normalised weights (sum to one), shape (S,)."""
        return self.smoothed_log_weights.exp()

    @property
    def ess(self) -> float:
        r"""Effective sample size :math:`1/\sum_s \bar w_s^2` of the PSIS-smoothed weights."""
        return float(ess(self.smoothed_log_weights))

    @property
    def ess_raw(self) -> float:
        """Effective sample size of the raw (unsmoothed) weights."""
        return float(ess(self.log_weights))

    @property
    def log_evidence(self) -> float:
        r""":math:`\log\hat Z = \log\frac1S\sum_s w_s` (raw weights, unbiased :math:`\hat Z`)."""
        return float(log_evidence(self.log_weights)[0])

    @property
    def log_evidence_se(self) -> float:
        r"""Delta-method standard error of :math:`\log\hat Z`: :math:`\operatorname{sd}(w)/(\sqrt
        S\,\bar w)` for independent draws, else the square root of
        :attr:`evidence_relative_variance`."""
        if self.evidence_relative_variance is not None:
            return math.sqrt(max(self.evidence_relative_variance, 0.0))
        return float(log_evidence(self.log_weights)[1])

    @property
    def reliable(self) -> bool:
        """Whether k-hat is below the sample-size-dependent threshold."""
        return self.khat <= self.khat_threshold

    @property
    def values(self) -> Tensor | dict[str, Tensor]:
        """What ``expectation``'s function receives: ``site_samples`` for a model, else ``samples``."""
        return self.site_samples if self.site_samples is not None else self.samples

    def expectation(
        self, f: Callable[[Any], Tensor] | Tensor, smoothed: bool = True
    ) -> tuple[Tensor, Tensor]:
        r"""Self-normalised estimate of :math:`\mathbb{E}_p[f]` and its Monte Carlo standard error.

        Args:
            f: a function of :attr:`values` returning (S,) or (S, ...) values, or those values.
            smoothed: use the PSIS-smoothed weights (default) or the raw ones.

        Returns:
            ``(estimate, mcse)`` with shape ``f``'s output shape without the sample dim.

        Example:
            >>> mean, mcse = result.expectation(lambda x: x)          # doctest: +SKIP
        """
        values = f(self.values) if callable(f) else f
        values = torch.as_tensor(values, device=self.log_weights.device)
        lw = self.smoothed_log_weights if smoothed else self.log_weights
        return weighted_mean_and_mcse(values, lw, self.ancestors)

    def mean_and_sd(
        self, smoothed: bool = True
    ) -> dict[str, tuple[Tensor, Tensor]] | tuple[Tensor, Tensor]:
        r"""Self-normalised estimates of the target's mean and standard deviation,

        .. math:: \hat\mu = \sum_s \bar w_s x_s, \qquad
            \hat\sigma = \Big(\sum_s \bar w_s (x_s - \hat\mu)^2\Big)^{1/2},

        elementwise, with the PSIS-smoothed normalised weights :math:`\bar w` (default) or the
        raw ones: the posterior summary to read after a fit whose check is :attr:`reliable`
        (where the guide's own draws may be too wide or too narrow, these are corrected).

        Returns:
            For a Pyro model, ``name -> (mean, sd)`` for every site of :attr:`site_samples`,
            each of the site's shape; else ``(mean, sd)`` of :attr:`samples`, shape (D,).

        Example:
            >>> check = fit_guide(model, guide).check                 # doctest: +SKIP
            >>> mean, sd = check.mean_and_sd()["tau"]                  # doctest: +SKIP
        """
        values = self.values
        if values is None:
            raise ValueError("this result holds no samples")
        weights = self.pareto_weights if smoothed else self.normalized_weights

        def moments(v: Tensor) -> tuple[Tensor, Tensor]:
            v = v if v.is_floating_point() else v.to(weights.dtype)
            w = weights.to(device=v.device, dtype=v.dtype).reshape((-1,) + (1,) * (v.dim() - 1))
            mean = (w * v).sum(0)
            return mean, (w * (v - mean).square()).sum(0).sqrt()

        if isinstance(values, dict):
            return {name: moments(v) for name, v in values.items()}
        return moments(values)

    def resample(self, n: int, smoothed: bool = True, generator: torch.Generator | None = None):  # noqa: ANN201
        """``n`` draws resampled (multinomially, with replacement) by their weights.

        Returns a tensor (n, D), or a dict of constrained site values for a model.
        """
        n = check_count("n", n)
        weights = self.pareto_weights if smoothed else self.normalized_weights
        index = torch.multinomial(weights.double(), n, replacement=True, generator=generator)
        values = self.values
        if isinstance(values, dict):
            return {k: v[index.to(v.device)] for k, v in values.items()}
        return values[index.to(values.device)]

    def diagnostics(self) -> dict[str, float]:
        """k-hat, its threshold, ESS, log Z and its SE, and the NaN count, as plain numbers."""
        return {
            "num_samples": self.num_samples,
            "khat": self.khat,
            "khat_threshold": self.khat_threshold,
            "ess": self.ess,
            "ess_raw": self.ess_raw,
            "log_evidence": self.log_evidence,
            "log_evidence_se": self.log_evidence_se,
            "num_nan": self.num_nan,
        }

    def to_inference_data(self, resample: int | None = None) -> Any:
        """An ``arviz.InferenceData``: the draws (one chain) with ``log_weight`` and
        ``psis_log_weight`` in ``sample_stats`` and the diagnostics in ``attrs``; with
        ``resample=n``, ``n`` equally weighted resampled draws instead."""
        import arviz as az

        def numpy(t: Tensor) -> Any:
            return t.detach().cpu().double().numpy()

        values = self.values if resample is None else self.resample(resample)
        if values is None:
            raise ValueError("this result holds no samples")
        posterior = (
            {k: numpy(v)[None] for k, v in values.items()}
            if isinstance(values, dict)
            else {"x": numpy(values)[None]}
        )
        groups: dict[str, Any] = {"posterior": posterior}
        if resample is None:
            groups["sample_stats"] = {
                "log_weight": numpy(self.log_weights)[None],
                "psis_log_weight": numpy(self.smoothed_log_weights)[None],
            }
        attrs = {k: float(v) for k, v in self.diagnostics().items()}
        attrs["inference_library"] = "pyroflows.infer.importance"
        return az.from_dict(**groups, attrs=attrs)

    def __repr__(self) -> str:
        d = self.diagnostics()
        return (
            f"ImportanceResult(S={d['num_samples']}, khat={d['khat']:.3f} "
            f"(threshold {d['khat_threshold']:.3f}), ess={d['ess']:.1f}, "
            f"log_evidence={d['log_evidence']:.4f} ± {d['log_evidence_se']:.4f}, num_nan={d['num_nan']})"
        )


def finish(
    log_w: Tensor,
    samples: Tensor | None,
    sites: dict | None,
    log_p: Tensor | None,
    log_q: Tensor | None,
    warn: bool,
    defensive: float = 0.0,
    what: str = "importance",
    stacklevel: int = 4,
    hint: str = "NaN in the data or parameters the target uses?",
) -> ImportanceResult:
    """Clean NaN weights, run PSIS, warn, and build the :class:`ImportanceResult`.

    Raises:
        ValueError: every log-weight is NaN (or ``+inf``; ``hint`` says what may cause it) or
            ``-inf``.
    """
    log_w, num_nan = clean_log_weights(log_w)
    S = log_w.shape[0]
    if num_nan == S:
        raise all_nan_error(what, S, hint)
    smoothed, khat = psis(log_w)
    threshold = khat_threshold(S)
    if warn:
        warn_about(what, S, num_nan, khat, lambda: float(ess(smoothed)), stacklevel + 1)
    return ImportanceResult(
        log_w, samples, sites, log_p, log_q, smoothed, khat, threshold, num_nan, defensive
    )


def all_nan_error(what: str, num_samples: int, hint: str) -> ValueError:
    """The error of a sampler whose every log-density was NaN (``hint``: what may cause it)."""
    return ValueError(
        f"{what}: the log-density was NaN (or +inf) at all {num_samples} draws, so no draw "
        f"has a weight: {hint}"
    )


def warn_about(
    what: str,
    num_samples: int,
    num_nan: int,
    khat: float,
    ess: Callable[[], float],
    stacklevel: int,
) -> None:
    """The warnings of :func:`finish`: NaN log-densities, and a k-hat above its threshold
    (``ess`` computes the ESS the message quotes)."""
    if num_nan:
        warnings.warn(
            f"{what}: {num_nan} of {num_samples} draws had a NaN (or +inf) log-density; they were "
            "given weight zero",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
    threshold = khat_threshold(num_samples)
    if not khat <= threshold and (khat == math.inf or num_samples <= 10):
        warnings.warn(
            f"{what}: Pareto k-hat = {khat:.2f} with S = {num_samples} draws: too few draws (or nonzero "
            "weights) to fit the weights' tail (PSIS needs S > 10, and 5 distinct weights above "
            "its cutoff, i.e. S > 20), so the reliability of the estimates is unknown; draw "
            "more samples",
            UserWarning,
            stacklevel=stacklevel,
        )
    elif not khat <= threshold:
        warnings.warn(
            f"{what}: Pareto k-hat = {khat:.2f} exceeds the threshold {threshold:.2f} for "
            f"S = {num_samples}: the weights are too heavy-tailed for reliable estimates (ESS "
            f"{ess():.1f}); use a better proposal, more samples or a defensive mixture",
            UserWarning,
            stacklevel=stacklevel,
        )
