r"""Importance sampling with flow (or guide) proposals and PSIS diagnostics.

For draws :math:`x_s \sim q` and an unnormalised target :math:`\tilde p = Z p`,

.. math:: \log w_s = \log\tilde p(x_s) - \log q(x_s), \qquad
   \hat Z = \frac1S \sum_s w_s, \qquad
   \hat{\mathbb{E}}_p[f] = \sum_s \bar w_s f(x_s),\quad \bar w_s = w_s / \textstyle\sum_t w_t.

Reliability is judged by the Pareto :math:`\hat k` of the weights' upper tail (PSIS; Vehtari
et al., JMLR 2024): below :math:`\min(1 - 1/\log_{10}S, 0.7)` the estimates are usable.
A light-tailed proposal can be made safe with a *defensive mixture* (Hesterberg,
Technometrics 1995): :math:`q_\alpha = (1-\alpha)\,q + \alpha\,r` with :math:`r` a wider
Student-t fitted to draws of :math:`q`; a fixed share :math:`\alpha S` of the draws comes
from :math:`r` and every point is weighed by :math:`q_\alpha` (the deterministic-mixture
estimator, Owen & Zhou, JASA 2000, https://doi.org/10.1080/01621459.2000.10473909, unbiased for :math:`Z`).

Everything runs without gradients, vectorised over samples in chunks of ``chunk_size``.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoContinuous
from torch import Tensor
from torch.distributions import Distribution

from ...core import Flow
from ..model_density import plate_nesting
from .guide_weights import guide_log_weights
from .psis import clean_log_weights, ess, khat_threshold, log_evidence, psis, weighted_mean_and_mcse
from .targets_and_proposals import ModelTarget, VectorProposal, call_target, resolve_target

__all__ = ["ImportanceResult", "check_num_samples", "importance", "seeded"]


def check_num_samples(num_samples: Any, name: str = "num_samples") -> int:
    """Return ``num_samples`` as an int, raising ValueError unless it is an integer >= 1."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {num_samples!r}")
    return num_samples


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | None = None):  # noqa: ANN201
    """Run the block with torch's RNG seeded by ``seed``, restoring the global state after."""
    if seed is None:
        yield
        return
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


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
        r"""Delta-method standard error :math:`\operatorname{sd}(w)/(\sqrt S\,\bar w)` of :math:`\log\hat Z`."""
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
        return weighted_mean_and_mcse(values, lw)

    def resample(self, n: int, smoothed: bool = True, generator: torch.Generator | None = None):  # noqa: ANN201
        """``n`` draws resampled (multinomially, with replacement) by their weights.

        Returns a tensor (n, D), or a dict of constrained site values for a model.
        """
        n = check_num_samples(n, "n")
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
) -> ImportanceResult:
    """Clean NaN weights, run PSIS, warn, and build the :class:`ImportanceResult`."""
    log_w, num_nan = clean_log_weights(log_w)
    S = log_w.shape[0]
    if num_nan and warn:
        warnings.warn(
            f"{what}: {num_nan} of {S} draws had a NaN (or +inf) log-density; they were "
            "given weight zero",
            RuntimeWarning,
            stacklevel=stacklevel,
        )
    smoothed, khat = psis(log_w)
    threshold = khat_threshold(S)
    if warn and not khat <= threshold:
        warnings.warn(
            f"{what}: Pareto k-hat = {khat:.2f} exceeds the threshold {threshold:.2f} for "
            f"S = {S}: the weights are too heavy-tailed for reliable estimates (ESS "
            f"{float(ess(smoothed)):.1f}); use a better proposal, more samples or a "
            "defensive mixture",
            UserWarning,
            stacklevel=stacklevel,
        )
    return ImportanceResult(
        log_w, samples, sites, log_p, log_q, smoothed, khat, threshold, num_nan, defensive
    )


def _wide_component(proposal: VectorProposal, df: float, scale: float, pilot: int) -> Distribution:
    """A multivariate Student-t at the proposal's mean with ``scale`` times its covariance factor."""
    x, _ = proposal.sample_and_log_prob(pilot)
    x = x.double()
    x = x[torch.isfinite(x).all(1)]
    cov = torch.cov(x.T).reshape(proposal.dim, proposal.dim)
    jitter = 1e-9 * cov.diagonal().mean().clamp_min(1e-12)
    L = torch.linalg.cholesky(
        cov + jitter * torch.eye(proposal.dim, dtype=cov.dtype, device=cov.device)
    )
    return dist.MultivariateStudentT(
        torch.tensor(df, dtype=x.dtype, device=x.device), x.mean(0), scale * L
    )


def _is_guide(proposal: Any) -> bool:
    return callable(proposal) and not isinstance(proposal, (Flow, Distribution, AutoContinuous))


def importance(
    target: Callable,
    proposal: Any,
    num_samples: int,
    *,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    target_kind: str = "auto",
    chunk_size: int = 8192,
    defensive: float = 0.0,
    defensive_df: float = 3.0,
    defensive_scale: float = 2.0,
    seed: int | None = None,
    warn: bool = True,
) -> ImportanceResult:
    r"""Importance sampling of ``target`` with ``proposal``: weights, PSIS k-hat, ESS, :math:`\log Z`.

    Args:
        target: a log-density callable ``(S, D) -> (S,)`` (unnormalised), or a Pyro model
            (run with ``model_args``/``model_kwargs``; its latent sites are weighed in the
            unconstrained space, see :mod:`pyroflows.infer.sampling.targets_and_proposals`).
        proposal: a :class:`~pyroflows.Flow`, a :class:`~pyroflows.FlowDistribution`, a torch
            distribution over (D,) vectors, an ``AutoContinuous`` guide (``AutoFlow``, ...), or
            any other Pyro guide of the model (then weighed by tracing guide and model,
            vectorised over a particle plate, in the constrained space).
        num_samples: number of draws :math:`S \ge 1`.
        model_args: positional arguments of the model (and guide).
        model_kwargs: keyword arguments of the model (and guide).
        target_kind: ``"auto"`` (a model if it has arguments here, the proposal is a guide, or
            it records sample sites when called without arguments), ``"model"`` or
            ``"log_density"``.
        chunk_size: draws evaluated at once (bounds the memory).
        defensive: mixture weight :math:`\alpha \in [0, 1)` of the wide Student-t component.
        defensive_df: its degrees of freedom.
        defensive_scale: its scale relative to the proposal's covariance factor.
        seed: seed for the draws (the global RNG state is restored afterwards).
        warn: warn when k-hat exceeds the threshold or targets were NaN.

    Returns:
        An :class:`ImportanceResult`.

    Raises:
        ValueError: ``num_samples < 1``, a model/proposal dimension mismatch, a target that
        does not return one value per draw, or all weights zero.

    Example:
        >>> flow = pyroflows.flows.build("maf", 2)
        >>> log_p = lambda x: -0.5 * (x**2).sum(-1)        # Z = 2 pi
        >>> r = importance(log_p, flow, 10_000, seed=0)     # doctest: +SKIP
        >>> r.log_evidence, r.log_evidence_se, r.khat        # doctest: +SKIP
    """
    with torch.no_grad():
        return _importance(
            target,
            proposal,
            num_samples,
            model_args,
            model_kwargs,
            target_kind,
            chunk_size,
            defensive,
            defensive_df,
            defensive_scale,
            seed,
            warn,
        )


def _importance(
    target: Callable,
    proposal: Any,
    num_samples: int,
    model_args: tuple,
    model_kwargs: dict | None,
    target_kind: str,
    chunk_size: int,
    defensive: float,
    defensive_df: float,
    defensive_scale: float,
    seed: int | None,
    warn: bool,
) -> ImportanceResult:
    num_samples = check_num_samples(num_samples)
    chunk_size = check_num_samples(chunk_size, "chunk_size")
    if not 0.0 <= defensive < 1.0:
        raise ValueError(f"defensive must be a mixture weight in [0, 1), got {defensive!r}")
    model_kwargs = dict(model_kwargs or {})
    if _is_guide(proposal):
        if defensive:
            raise ValueError(
                "a defensive mixture needs a vector proposal (Flow, distribution or "
                "AutoContinuous guide), not a generic guide"
            )
        if target_kind == "log_density":
            raise TypeError("a guide proposal needs a Pyro model as the target")
        return _guide_importance(
            target, proposal, num_samples, model_args, model_kwargs, chunk_size, seed, warn
        )
    q = VectorProposal(proposal, model_args, model_kwargs)
    log_density, model_target = resolve_target(target, q, model_args, model_kwargs, target_kind)
    probe = q.sample_and_log_prob(1)[0]
    device, dtype = probe.device, probe.dtype
    with seeded(seed, device):
        n_wide = int(round(defensive * num_samples))
        wide = (
            _wide_component(q, defensive_df, defensive_scale, max(2000, 20 * q.dim))
            if n_wide
            else None
        )
        xs, lps, lqs = [], [], []
        for source, total in (("q", num_samples - n_wide), ("r", n_wide)):
            for start in range(0, total, chunk_size):
                n = min(chunk_size, total - start)
                if source == "q":
                    x, log_q = q.sample_and_log_prob(n)
                else:
                    x = wide.sample((n,)).to(device=device, dtype=dtype)
                    log_q = q.log_prob(x)
                if wide is not None:
                    log_r = wide.log_prob(x.to(wide.loc.dtype)).to(log_q.dtype)
                    log_q = torch.logaddexp(
                        log_q + math.log1p(-defensive), log_r + math.log(defensive)
                    )
                xs.append(x)
                lps.append(call_target(log_density, x))
                lqs.append(log_q)
    x, log_p, log_q = torch.cat(xs), torch.cat(lps), torch.cat(lqs)
    sites = (
        model_target.unpack(x.to(model_target.dtype))
        if isinstance(model_target, ModelTarget)
        else None
    )
    result = finish(log_p - log_q, x, sites, log_p, log_q, warn, defensive)
    if model_target is not None:
        result.info["sites"] = model_target.describe()
    return result


def _guide_importance(
    model: Callable,
    guide: Callable,
    num_samples: int,
    args: tuple,
    kwargs: dict,
    chunk_size: int,
    seed: int | None,
    warn: bool,
) -> ImportanceResult:
    nesting = plate_nesting(model, *args, **kwargs)
    chunks: list[tuple[dict[str, Tensor], Tensor]] = []
    with seeded(seed):
        for start in range(0, num_samples, chunk_size):
            n = min(chunk_size, num_samples - start)
            chunks.append(
                guide_log_weights(model, guide, n, *args, max_plate_nesting=nesting, **kwargs)
            )
    sites = {k: torch.cat([c[0][k] for c in chunks]) for k in chunks[0][0]}
    log_w = torch.cat([c[1] for c in chunks])
    return finish(log_w, None, sites, None, None, warn, stacklevel=5)
