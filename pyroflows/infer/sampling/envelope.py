r"""The envelope of rejection sampling, :math:`\tilde p(x) \le M q(x)`: the estimate of
:math:`\log M` from a pilot, the acceptance test of a batch of proposals, and the error raised
when the proposal budget runs out (see :mod:`pyroflows.infer.sampling.rejection`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .targets_and_proposals import VectorProposal, call_target

__all__ = ["RejectionError", "estimate_log_M", "log_ratio", "propose"]


class RejectionError(RuntimeError):
    """Raised when rejection sampling runs out of its proposal budget."""


def log_ratio(
    log_density: Callable[[Tensor], Tensor], x: Tensor, log_q: Tensor
) -> tuple[Tensor, int]:
    r""":math:`\log\tilde p(x) - \log q(x)` for points (n, D), ``-inf`` where the target is
    NaN (such points are never accepted), and the number of those points."""
    d = call_target(log_density, x) - log_q
    nan = torch.isnan(d)
    return torch.where(nan, torch.full_like(d, -math.inf), d), int(nan.sum())


def propose(
    log_density: Callable[[Tensor], Tensor],
    proposal: VectorProposal,
    n: int,
    log_M: float,  # noqa: N803
) -> tuple[Tensor, Tensor, int]:
    r"""Draw ``n`` proposals and accept each with probability
    :math:`\min(1, \tilde p(x) / (M q(x)))`.

    Returns the accepted points, the excess :math:`\log\tilde p - \log q - \log M` of every
    proposal (positive where the envelope is violated) and the number of NaN targets.
    """
    x, log_q = proposal.sample_and_log_prob(n)
    d, nans = log_ratio(log_density, x, log_q)
    d = d - log_M
    return x[torch.rand_like(d).log() < d], d, nans


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
        d, _ = log_ratio(log_density, x, log_q)
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
