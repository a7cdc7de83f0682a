r"""``FlowRejector``: rejection sampling from a flow as a Pyro distribution, with the
acceptance rate (and :math:`\log M`) estimated and the work per ``sample`` call bounded."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pyro.distributions import Rejector
from torch import Tensor

from ...checks import check_count
from .envelope import RejectionError, estimate_log_M, log_ratio, propose
from .targets_and_proposals import VectorProposal

__all__ = ["FlowRejector"]


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
            x, log_q = q.sample_and_log_prob(check_count("num_pilot", num_pilot))
            a = self._accept(x, log_q).exp()
        self.acceptance_rate = float(a.mean())
        self.acceptance_rate_se = float(a.std() / math.sqrt(num_pilot))
        if not self.acceptance_rate > 0:
            raise ValueError("no pilot draw would be accepted: the proposal misses the target")
        self.max_proposals = check_count("max_proposals", max_proposals)
        self.num_proposed = self.num_accepted = self.envelope_violations = 0
        super().__init__(
            q.distribution,
            self._log_prob_accept_fn,
            torch.tensor(math.log(self.acceptance_rate), dtype=x.dtype, device=x.device),
        )

    def _accept(self, x: Tensor, log_q: Tensor) -> Tensor:
        d, _ = log_ratio(self._log_density, x, log_q)
        return (d - self.log_M).clamp(max=0.0)

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
                kept, d, _ = propose(self._log_density, self._q, k, self.log_M)
                self.envelope_violations += int((d > 0).sum())
                out.append(kept)
                got += kept.shape[0]
                proposed += k
                self.num_accepted += kept.shape[0]
            self.num_proposed += proposed
        return torch.cat(out)[:n].reshape(tuple(sample_shape) + (self._q.dim,))

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        raise NotImplementedError("FlowRejector samples are not reparametrised; use sample()")

    @property
    def observed_acceptance_rate(self) -> float:
        """Accepted / proposed over every ``sample`` call so far (``nan`` before any)."""
        return self.num_accepted / self.num_proposed if self.num_proposed else math.nan
