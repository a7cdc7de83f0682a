r"""Rejection sampling from an unnormalised target with a flow proposal.

With an envelope :math:`\tilde p(x) \le M q(x)`, a draw :math:`x \sim q` is accepted with
probability :math:`\tilde p(x) / (M q(x))`; accepted draws are exact samples of
:math:`p = \tilde p / Z` and the acceptance rate is :math:`Z / M` (von Neumann, 1951), so
:math:`\log\hat Z = \log M + \log(\text{rate})` comes for free.

When ``log_M`` is not given it is estimated from a pilot: the draws with the largest
:math:`d(x) = \log\tilde p(x) - \log q(x)` start a gradient ascent on :math:`d` (Adam, in
units of the pilot's spread, kept inside the region the pilot explored, i.e. where
:math:`\log q \ge` the pilot's lowest :math:`\log q`), and a safety ``margin`` (nats) is added
to the maximum found. If the maximum sits on that region's edge, the ratio may be unbounded
(a target with heavier tails than the proposal) and a warning says so. During sampling every
draw with :math:`d(x) > \log M` is an **envelope violation** (there the sampler under-represents
the target); violations are counted, the largest excess is reported and a warning names the
:math:`\log M` that would have been needed. Work is bounded by ``max_proposals``; when it runs
out, a :class:`RejectionError` reports the acceptance rate reached.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ...checks import check_count
from ..model_density import check_model_arguments
from .envelope import RejectionError, estimate_log_M, propose
from .flow_rejector import FlowRejector
from .importance import seeded
from .targets_and_proposals import VectorProposal, resolve_target

__all__ = [
    "FlowRejector",
    "RejectionError",
    "RejectionResult",
    "estimate_log_M",
    "rejection_sample",
]


@dataclass
class RejectionResult:
    r"""Exact samples from a rejection sampler and its bookkeeping.

    Attributes:
        samples: accepted draws (num_samples, D) (unconstrained latents for a model).
        site_samples: for a Pyro model, constrained values ``name -> (num_samples, *shape)``.
        acceptance_rate: accepted / proposed over the whole run.
        num_proposed, num_accepted: the counts behind it (``num_accepted`` may exceed
            ``num_samples``: the last batch's extra acceptances are counted, then dropped).
        log_M: the envelope constant used; log_M_estimated: whether it came from the pilot.
        pilot_max: the largest :math:`\log\tilde p - \log q` found by the pilot and ascent.
        envelope_violations: proposals with :math:`\log\tilde p - \log q > \log M`.
        max_excess: the largest :math:`\log\tilde p - \log q - \log M` seen (nats; <= 0 if none).
        num_nan: proposals whose target log-density was NaN (rejected, counted).
    """

    samples: Tensor
    site_samples: dict[str, Tensor] | None
    acceptance_rate: float
    num_proposed: int
    num_accepted: int
    log_M: float  # noqa: N815 - the name the issue and the literature use
    log_M_estimated: bool  # noqa: N815
    pilot_max: float | None
    envelope_violations: int
    max_excess: float
    num_nan: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def acceptance_rate_se(self) -> float:
        """Binomial standard error of :attr:`acceptance_rate`."""
        a = self.acceptance_rate
        return math.sqrt(a * (1 - a) / self.num_proposed)

    @property
    def log_evidence(self) -> float:
        r""":math:`\log\hat Z = \log M + \log(\text{acceptance rate})` (valid without violations)."""
        return self.log_M + math.log(self.acceptance_rate)

    @property
    def log_evidence_se(self) -> float:
        r"""Delta-method SE :math:`\sqrt{(1-a)/(a N)}` of :attr:`log_evidence`."""
        a = self.acceptance_rate
        return math.sqrt((1 - a) / (a * self.num_proposed))


def rejection_sample(
    target: Callable,
    proposal: Any,
    num_samples: int,
    log_M: float | None = None,  # noqa: N803
    *,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    target_kind: str = "auto",
    batch_size: int = 8192,
    max_proposals: int | None = None,
    num_pilot: int = 4096,
    margin: float = 0.5,
    ascent_steps: int = 100,
    seed: int | None = None,
    warn: bool = True,
) -> RejectionResult:
    r"""Exact samples from an unnormalised ``target`` by rejection from ``proposal``.

    Args:
        target: log-density callable (S, D) -> (S,) or a Pyro model (unconstrained latents,
            see :mod:`pyroflows.infer.sampling.targets_and_proposals`).
        proposal: a Flow, FlowDistribution, torch distribution over (D,) vectors, or an
            ``AutoContinuous`` guide.
        num_samples: accepted samples wanted (>= 1).
        log_M: envelope constant :math:`\log M`; estimated from a pilot when ``None``.
        model_args: the model's positional arguments.
        model_kwargs: the model's keyword arguments.
        target_kind: ``"auto"``, ``"model"`` or ``"log_density"`` (as in :func:`importance`).
        batch_size: proposals drawn and evaluated at once.
        max_proposals: work bound (default ``max(10**6, 1000 * num_samples)``).
        num_pilot: pilot draws of the log_M estimate (see :func:`estimate_log_M`).
        margin: nats added to the estimated maximum of log p - log q.
        ascent_steps: gradient-ascent steps refining the pilot's best points.
        seed: seed for every draw (the global RNG state is restored afterwards).
        warn: warn about envelope violations and NaN targets.

    Returns:
        A :class:`RejectionResult`.

    Raises:
        RejectionError: ``max_proposals`` used up; the message gives the acceptance rate.
        ValueError: bad ``num_samples``, dimension mismatch.

    Example:
        >>> flow = pyroflows.flows.build("maf", 2)
        >>> r = rejection_sample(lambda x: -0.5 * (x**2).sum(-1), flow, 1000, seed=0)  # doctest: +SKIP
        >>> r.samples.shape, r.acceptance_rate, r.log_M                               # doctest: +SKIP
    """
    num_samples = check_count("num_samples", num_samples)
    batch_size = check_count("batch_size", batch_size)
    max_proposals = (
        max(10**6, 1000 * num_samples)
        if max_proposals is None
        else check_count("max_proposals", max_proposals)
    )
    model_args, model_kwargs = check_model_arguments(model_args, model_kwargs)
    q = VectorProposal(proposal, model_args, model_kwargs)
    log_density, model_target = resolve_target(target, q, model_args, model_kwargs, target_kind)
    with seeded(seed, q.probe().device):
        estimated = log_M is None
        info: dict[str, Any] = {}
        if estimated:
            log_M, info = estimate_log_M(
                log_density, q, num_pilot, steps=ascent_steps, margin=margin
            )
        log_M = float(log_M)
        if not math.isfinite(log_M):
            raise ValueError(f"log_M must be finite, got {log_M}")
        with torch.no_grad():
            accepted, proposed, n_accepted, violations, nans, excess = [], 0, 0, 0, 0, -math.inf
            while n_accepted < num_samples:
                if proposed >= max_proposals:
                    rate = n_accepted / proposed
                    need = (
                        f"about {num_samples / rate:.3g} proposals would be needed"
                        if rate > 0
                        else f"the rate is below {1 / proposed:.3g}"
                    )
                    raise RejectionError(
                        f"rejection sampling stopped after {proposed} proposals (max_proposals) with "
                        f"{n_accepted} of {num_samples} samples accepted: acceptance rate {rate:.3g} "
                        f"with log_M = {log_M:.3f}; {need}. Use a closer proposal (fit it first), "
                        "check log_M, or raise max_proposals"
                    )
                n = min(batch_size, max_proposals - proposed)
                kept, d, nan = propose(log_density, q, n, log_M)
                nans += nan
                violations += int((d > 0).sum())
                excess = max(excess, float(d.max()))
                accepted.append(kept)
                n_accepted += kept.shape[0]
                proposed += n
    samples = torch.cat(accepted)[:num_samples]
    sites = None if model_target is None else model_target.unpack(samples)
    result = RejectionResult(
        samples,
        sites,
        n_accepted / proposed,
        proposed,
        n_accepted,
        log_M,
        estimated,
        info.get("ascent_max"),
        violations,
        excess,
        nans,
        info,
    )
    if warn and violations:
        warnings.warn(
            f"rejection sampling: {violations} of {proposed} proposals exceeded the envelope "
            f"(log p - log q - log_M up to {excess:.2f} nats): log_M = {log_M:.3f} is too small, "
            "so the samples under-represent the target there (biased). Pass log_M >= "
            f"{log_M + excess:.3f}, or use a proposal with heavier tails than the target",
            UserWarning,
            stacklevel=2,
        )
    if warn and nans:
        warnings.warn(
            f"rejection sampling: {nans} proposals had a NaN target log-density and were rejected",
            RuntimeWarning,
            stacklevel=2,
        )
    return result
