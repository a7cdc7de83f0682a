r"""Adaptive importance sampling: refit the flow proposal to its own weighted draws.

Round :math:`t` draws :math:`x_s \sim q_t`, weighs them by :math:`w_s \propto \tilde p(x_s)/q_t(x_s)`
(PSIS-smoothed), and, unless the Pareto :math:`\hat k` is already good, sets

.. math:: q_{t+1} = \arg\max_q \sum_s \bar w_s \log q(x_s),

the weighted maximum-likelihood (cross-entropy) step of population Monte Carlo / adaptive
importance sampling (Cappé, Guillin, Marin & Robert, "Population Monte Carlo", JCGS 2004, https://doi.org/10.1198/106186004X12803;
Rubinstein's cross-entropy method), done here with :func:`~pyroflows.infer.fit` and
``weights=``. Each step minimises a Monte Carlo estimate of :math:`\mathrm{KL}(p\,\|\,q)`, the
direction that makes importance weights light-tailed. It stops when :math:`\hat k` falls
below ``khat_goal`` or after ``rounds`` refits.

With ``refit_draws="annealed"`` the refit uses the weighted particles of
:func:`~pyroflows.infer.annealed_importance` from :math:`q_t` instead of :math:`q_t`'s own
weighted draws: particles moved towards the target reach the tails the proposal misses, where
its own importance weights are too few and too heavy to learn from (flow annealed importance
sampling bootstrap, Midgley et al., ICLR 2023, https://arxiv.org/abs/2208.01893, trains on
such samples with an :math:`\alpha = 2` objective; here it is the forward KL). Each round's
:math:`\hat k` is still that of plain importance sampling from :math:`q_t`, the quantity the
refits aim to bring down. The default goal is 0.3, not 0.5: for a
Gaussian proposal of standard deviation :math:`r\sigma` against a Gaussian target of
:math:`\sigma`, :math:`k = 1 - r^2`, so :math:`\hat k \approx 0.45` still means a proposal
20 % too narrow whose weight variance is barely finite, and whose reported standard errors
are too small at a few thousand draws; one more cheap refit usually fixes it.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from pyro.infer.autoguide import AutoContinuous

from ...checks import check_choice, check_count
from ...core import Flow
from ..fitting.fit import fit
from ..model_density import check_model_arguments
from .annealed import annealed_importance
from .importance import importance
from .importance_result import ImportanceResult
from .targets_and_proposals import VectorProposal

__all__ = ["AdaptiveResult", "adaptive_importance"]


@dataclass
class AdaptiveResult:
    """What :func:`adaptive_importance` returns.

    Attributes:
        result: the :class:`~pyroflows.infer.ImportanceResult` of the returned proposal (the
            converged one, else the round with the smallest k-hat).
        history: one dict per round: ``round``, ``khat``, ``ess``, ``log_evidence``,
            ``log_evidence_se`` (round 0 is the initial proposal).
        converged: whether k-hat reached ``khat_goal``.
        flow: the (refitted, in place) proposal flow.
        interrupted: whether a KeyboardInterrupt ended the rounds (see
            :func:`adaptive_importance`).
    """

    result: ImportanceResult
    history: list[dict[str, float]] = field(default_factory=list)
    converged: bool = False
    flow: Flow | None = None
    interrupted: bool = False

    def __repr__(self) -> str:
        return (
            f"AdaptiveResult(rounds={len(self.history) - 1}, converged={self.converged}, "
            f"khat={self.result.khat:.3f}, ess={self.result.ess:.1f})"
        )


def _flow_of(proposal: Any, model_args: tuple, model_kwargs: dict | None) -> Flow:
    """The Flow that ``proposal`` samples from: itself, or for an ``AutoContinuous`` guide the
    Flow module behind its ``get_posterior()`` outside training (for ``AutoFlow`` with
    iterate averaging that is the averaged copy, not the live flow)."""
    if isinstance(proposal, Flow):
        return proposal
    if isinstance(proposal, AutoContinuous):
        with torch.no_grad():
            transform = getattr(
                VectorProposal(proposal, model_args, model_kwargs).distribution, "transform", None
            )
        for module in proposal.modules():
            if (
                isinstance(module, Flow)
                and transform is not None
                and module.transform() is transform
            ):
                return module
    raise TypeError(
        "adaptive_importance refits a pyroflows Flow, or an AutoContinuous guide whose "
        f"posterior is a pyroflows Flow (AutoFlow); got {type(proposal).__name__}"
    )


def _weighted_refit(
    flow: Flow, samples: torch.Tensor, weights: torch.Tensor, options: dict
) -> None:
    """``fit`` with every parameter trainable for the call (an averaged copy may be frozen)."""
    flags = [p.requires_grad for p in flow.parameters()]
    try:
        for p in flow.parameters():
            p.requires_grad_(True)
        with torch.enable_grad():
            outcome = fit(flow, samples, weights=weights, **options)
        if outcome.interrupted:  # fit ends quietly on Ctrl-C: end the rounds too
            raise KeyboardInterrupt
    finally:
        for p, flag in zip(flow.parameters(), flags):
            p.requires_grad_(flag)


def adaptive_importance(
    target: Callable,
    proposal: Any,
    num_samples: int,
    *,
    rounds: int = 5,
    khat_goal: float = 0.3,
    fit_options: dict | None = None,
    refit_draws: str = "importance",
    annealed_options: dict | None = None,
    seed: int | None = 0,
    **importance_options: Any,
) -> AdaptiveResult:
    r"""Importance sampling whose flow proposal is refitted to its weighted draws until k-hat is good.

    Args:
        target: log-density callable (S, D) -> (S,) or a Pyro model (see :func:`importance`).
        proposal: a :class:`~pyroflows.Flow` (refitted in place) or an ``AutoFlow`` guide
            (the flow behind its ``get_posterior()`` outside training is refitted: with
            iterate averaging, the averaged copy).
        num_samples: draws per round (>= 1).
        rounds: maximum number of refits.
        khat_goal: stop once k-hat is at most this (and at most the sample-size threshold).
        fit_options: options of :func:`~pyroflows.infer.fit`; defaults ``epochs=20``,
            ``validation=0``, ``lr=1e-3``, ``batch_size=512``.
        refit_draws: what the refits learn from: ``"importance"`` (the round's weighted draws)
            or ``"annealed"`` (``num_samples`` weighted particles of
            :func:`~pyroflows.infer.annealed_importance` from the round's proposal).
        annealed_options: options of :func:`~pyroflows.infer.annealed_importance` (``cess``,
            ``num_moves``, ...) with ``refit_draws="annealed"``.
        seed: base seed; round ``t`` uses ``seed + t`` (``None``: global RNG).
        **importance_options: passed to :func:`importance` (``model_args``, ``chunk_size``, ...).

    Returns:
        An :class:`AdaptiveResult`. Refits need not improve k-hat monotonically: when the goal
        is not reached, the flow is left holding the parameters of the round with the smallest
        k-hat and ``result`` is that round's sample (redrawn with the same seed, now warning
        when k-hat is above the threshold). Intermediate rounds do not warn.

        A KeyboardInterrupt (Ctrl-C) during a round ends the rounds: the flow is put back to
        the parameters of the completed round with the smallest k-hat, that round's sample is
        returned as ``result`` (not redrawn) with ``interrupted=True``, and a RuntimeWarning
        says so. Interrupted before the first round's sample is drawn, the flow is untouched
        and the KeyboardInterrupt re-raised.

    Example:
        >>> flow = pyroflows.flows.build("maf", 2)
        >>> out = adaptive_importance(log_p, flow, 4000, rounds=5)   # doctest: +SKIP
        >>> out.converged, out.result.log_evidence                  # doctest: +SKIP
    """
    num_samples = check_count("num_samples", num_samples)
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"rounds must be an integer >= 0, got {rounds!r}")
    if not (isinstance(khat_goal, (int, float)) and math.isfinite(khat_goal)):
        raise ValueError(f"khat_goal must be a finite number, got {khat_goal!r}")
    model_args, model_kwargs = check_model_arguments(
        importance_options.get("model_args"), importance_options.get("model_kwargs")
    )
    check_choice("refit_draws", refit_draws, ("importance", "annealed"))
    flow = _flow_of(proposal, model_args, model_kwargs)
    options = {
        "epochs": 20,
        "validation": 0.0,
        "lr": 1e-3,
        "batch_size": 512,
        "progress": False,
        **(fit_options or {}),
    }
    importance_options.pop("warn", None)
    if importance_options.pop("distributed", False) is not False:
        raise ValueError(
            "adaptive_importance refits the proposal on all of its draws, so it runs in one "
            "process: it takes no distributed option"
        )
    importance_options["distributed"] = False
    history: list[dict[str, float]] = []
    best: tuple[float, int, dict, ImportanceResult] | None = None  # k-hat, round, params, result
    try:
        for t in range(rounds + 1):
            round_seed = None if seed is None else seed + t
            result = importance(
                target, proposal, num_samples, seed=round_seed, warn=False, **importance_options
            )
            history.append(
                {
                    "round": t,
                    **{
                        k: result.diagnostics()[k]
                        for k in ("khat", "ess", "log_evidence", "log_evidence_se", "num_nan")
                    },
                }
            )
            if best is None or result.khat < best[0]:
                best = (result.khat, t, copy.deepcopy(flow.state_dict()), result)
            good = result.khat <= min(khat_goal, result.khat_threshold)
            if good or t == rounds:
                break
            if result.samples is None:
                raise TypeError(
                    "adaptive_importance needs vector draws (a Flow or AutoFlow proposal)"
                )
            draws = result
            if refit_draws == "annealed":
                draws = annealed_importance(
                    target,
                    proposal,
                    num_samples,
                    seed=round_seed,
                    warn=False,
                    model_args=model_args,
                    model_kwargs=model_kwargs,
                    target_kind=importance_options.get("target_kind", "auto"),
                    **(annealed_options or {}),
                )
                history[-1]["annealed_log_evidence"] = draws.log_evidence
            _weighted_refit(flow, draws.samples, draws.pareto_weights, options)
    except KeyboardInterrupt:
        if best is None:
            raise
        flow.load_state_dict(best[2])
        warnings.warn(
            f"adaptive_importance was interrupted (KeyboardInterrupt) after {len(history)} "
            f"round(s); returning round {best[1]} (k-hat {best[0]:.3f}), the flow holding its "
            "parameters",
            RuntimeWarning,
            stacklevel=2,
        )
        return AdaptiveResult(best[3], history, False, flow, interrupted=True)
    if not good:
        # Keep the round with the smallest k-hat; redraw its sample (same seed) with warnings on.
        flow.load_state_dict(best[2])
        seed_best = None if seed is None else seed + best[1]
        result = importance(target, proposal, num_samples, seed=seed_best, **importance_options)
    return AdaptiveResult(result, history, good, flow)
