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
from pyro.distributions import Rejector
from torch import Tensor

from .importance import check_num_samples, seeded
from .targets_and_proposals import ModelTarget, VectorProposal, call_target, resolve_target

__all__ = [
    "FlowRejector",
    "RejectionError",
    "RejectionResult",
    "estimate_log_M",
    "rejection_sample",
]


class RejectionError(RuntimeError):
    """Raised when rejection sampling runs out of its proposal budget."""


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


def _differences(log_density: Callable, q: VectorProposal, x: Tensor, log_q: Tensor) -> Tensor:
    d = call_target(log_density, x) - log_q
    return torch.where(torch.isnan(d), torch.full_like(d, -math.inf), d)


def estimate_log_M(  # noqa: N802
    log_density: Callable[[Tensor], Tensor],
    proposal: VectorProposal,
    num_pilot: int = 4096,
    top: int = 16,
    steps: int = 100,
    lr: float = 0.05,
    margin: float = 0.5,
) -> tuple[float, dict[str, Any]]:
    r"""Estimate :math:`\log M \ge \max_x \log\tilde p(x) - \log q(x)` from a pilot.

    Args:
        log_density: the target, (n, D) -> (n,), differentiable for the ascent.
        proposal: the proposal.
        num_pilot: pilot draws.
        top: number of best pilot draws refined by gradient ascent.
        steps: Adam steps of the ascent (0: pilot maximum only).
        lr: Adam step in units of the pilot's standard deviation per coordinate.
        margin: nats added to the maximum found.

    Returns:
        ``(log_M, info)`` with ``info`` holding ``pilot_max`` (before ascent), ``ascent_max``
        and ``at_edge`` (the maximum lies on the edge of the pilot's region).
    """
    with torch.no_grad():
        x, log_q = proposal.sample_and_log_prob(num_pilot)
        d = _differences(log_density, proposal, x, log_q)
    if not bool(torch.isfinite(d).any()):
        raise ValueError(
            "the target is -inf or NaN at every pilot draw: no envelope can be estimated"
        )
    pilot_max = float(d.max())
    floor = float(log_q[torch.isfinite(log_q)].min())
    finite = torch.isfinite(x).all(1) & torch.isfinite(d)
    center, spread = (
        x[finite].mean(0),
        x[finite].std(0).clamp_min(1e-8) if int(finite.sum()) > 1 else 1.0,
    )
    best_x = x[d.topk(min(top, num_pilot)).indices].detach()
    best = float(d.max())
    at_edge = False
    if steps > 0:
        y = ((best_x - center) / spread).clone().requires_grad_(True)
        optimizer = torch.optim.Adam([y], lr=lr)
        try:
            for _ in range(steps):
                xs = center + spread * y
                lq = proposal.log_prob(xs)
                value = call_target(log_density, xs) - lq
                objective = torch.where(torch.isfinite(value), value, torch.zeros_like(value))
                optimizer.zero_grad()
                (-objective.sum()).backward()
                previous = y.detach().clone()
                optimizer.step()
                with torch.no_grad():
                    new_lq = proposal.log_prob(center + spread * y)
                    outside = ~(new_lq >= floor)  # also catches NaN
                    y.copy_(torch.where(outside[:, None], previous, y))
                    ok = torch.isfinite(value)
                    if bool(ok.any()):
                        i = int(torch.where(ok, value, torch.full_like(value, -math.inf)).argmax())
                        if float(value[i]) > best:
                            best = float(value[i])
                            at_edge = bool(lq[i] < floor + 0.5) or bool(outside[i])
        except RuntimeError as error:  # the target is not differentiable: keep the pilot maximum
            warnings.warn(
                f"gradient ascent for log_M failed ({error}); using the pilot maximum", stacklevel=3
            )
    if at_edge:
        warnings.warn(
            "the maximum of log p - log q lies on the edge of the region the pilot "
            "explored: the ratio may be unbounded (a target with heavier tails than the "
            "proposal); expect envelope violations",
            UserWarning,
            stacklevel=3,
        )
    return best + margin, {"pilot_max": pilot_max, "ascent_max": best, "at_edge": at_edge}


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
    num_samples = check_num_samples(num_samples)
    batch_size = check_num_samples(batch_size, "batch_size")
    max_proposals = (
        max(10**6, 1000 * num_samples)
        if max_proposals is None
        else check_num_samples(max_proposals, "max_proposals")
    )
    q = VectorProposal(proposal, model_args, model_kwargs)
    log_density, model_target = resolve_target(target, q, model_args, model_kwargs, target_kind)
    with seeded(seed, q.sample_and_log_prob(1)[0].device):
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
                x, log_q = q.sample_and_log_prob(n)
                raw = call_target(log_density, x) - log_q
                nan = torch.isnan(raw)
                nans += int(nan.sum())
                d = torch.where(nan, torch.full_like(raw, -math.inf), raw) - log_M
                violations += int((d > 0).sum())
                excess = max(excess, float(d.max()))
                keep = torch.rand_like(d).log() < d
                accepted.append(x[keep])
                n_accepted += int(keep.sum())
                proposed += n
    samples = torch.cat(accepted)[:num_samples]
    sites = (
        model_target.unpack(samples.to(model_target.dtype))
        if isinstance(model_target, ModelTarget)
        else None
    )
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


class FlowRejector(Rejector):
    r"""A Pyro distribution sampling :math:`p \propto \tilde p` by rejection from a flow.

    Like Pyro's :class:`~pyro.distributions.Rejector`, but the acceptance rate
    :math:`\mathbb{E}_q[\min(1, \tilde p/(Mq))]` is estimated for you (from ``num_pilot`` draws),
    ``log_M`` may be estimated too, and sampling is batched with bounded work (a
    :class:`RejectionError` instead of a hang). Its density is that of the accepted draws,
    :math:`\log q(x) + \min(0, \log\tilde p(x) - \log q(x) - \log M) - \log(\text{rate})`,
    which equals :math:`\log p(x)` where the envelope holds.

    Args:
        log_density: unnormalised target, (n, D) -> (n,).
        proposal: a Flow, FlowDistribution or torch distribution over (D,) vectors.
        log_M: envelope constant (estimated when ``None``).
        num_pilot: draws for the acceptance-rate (and log_M) estimate.
        max_proposals: proposal budget per ``sample`` call.
        margin: safety margin of an estimated log_M (nats).

    Attributes:
        acceptance_rate, acceptance_rate_se: the pilot estimate and its standard error.
        num_proposed, num_accepted, envelope_violations: running counts over all ``sample`` calls.

    Example:
        >>> d = FlowRejector(lambda x: -0.5 * (x**2).sum(-1), flow)     # doctest: +SKIP
        >>> pyro.sample("x", d)                                         # doctest: +SKIP
    """

    has_rsample = False

    def __init__(
        self,
        log_density: Callable[[Tensor], Tensor],
        proposal: Any,
        log_M: float | None = None,  # noqa: N803
        num_pilot: int = 10_000,
        max_proposals: int = 10**7,
        margin: float = 0.5,
    ) -> None:
        q = VectorProposal(proposal)
        self._q, self._log_density = q, log_density
        if log_M is None:
            log_M, _ = estimate_log_M(log_density, q, min(num_pilot, 4096), margin=margin)
        self.log_M = float(log_M)
        with torch.no_grad():
            x, log_q = q.sample_and_log_prob(check_num_samples(num_pilot, "num_pilot"))
            a = self._accept(x, log_q).exp()
        self.acceptance_rate = float(a.mean())
        self.acceptance_rate_se = float(a.std() / math.sqrt(num_pilot))
        if not self.acceptance_rate > 0:
            raise ValueError("no pilot draw would be accepted: the proposal misses the target")
        self.max_proposals = check_num_samples(max_proposals, "max_proposals")
        self.num_proposed = self.num_accepted = self.envelope_violations = 0
        super().__init__(
            q.distribution,
            self._log_prob_accept_fn,
            torch.tensor(math.log(self.acceptance_rate), dtype=x.dtype, device=x.device),
        )

    def _accept(self, x: Tensor, log_q: Tensor) -> Tensor:
        d = call_target(self._log_density, x) - log_q - self.log_M
        d = torch.where(torch.isnan(d), torch.full_like(d, -math.inf), d)
        return d.clamp(max=0.0)

    def _log_prob_accept_fn(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        return self._accept(flat, self._q.log_prob(flat)).reshape(x.shape[:-1])

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        """Batched rejection sampling of ``sample_shape`` draws with bounded work."""
        n = math.prod(sample_shape)
        with torch.no_grad():
            out, got, proposed = [], 0, 0
            while got < n:
                if proposed >= self.max_proposals:
                    raise RejectionError(
                        f"FlowRejector used {proposed} proposals for {got} of {n} samples "
                        f"(acceptance rate {got / proposed:.3g}, pilot estimate "
                        f"{self.acceptance_rate:.3g})"
                    )
                k = min(
                    max(int(1.2 * (n - got) / self.acceptance_rate) + 16, 64),
                    self.max_proposals - proposed,
                )
                x, log_q = self._q.sample_and_log_prob(k)
                d = call_target(self._log_density, x) - log_q - self.log_M
                self.envelope_violations += int((d > 0).sum())
                keep = torch.rand_like(d).log() < d
                out.append(x[keep])
                got += int(keep.sum())
                proposed += k
                self.num_accepted += int(keep.sum())
            self.num_proposed += proposed
        return torch.cat(out)[:n].reshape(tuple(sample_shape) + (self._q.dim,))

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        raise NotImplementedError("FlowRejector samples are not reparametrised; use sample()")

    @property
    def observed_acceptance_rate(self) -> float:
        """Accepted / proposed over every ``sample`` call so far (``nan`` before any)."""
        return self.num_accepted / self.num_proposed if self.num_proposed else math.nan
