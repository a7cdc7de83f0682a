r"""Annealed importance sampling and sequential Monte Carlo from a flow (or any vector) proposal.

Importance sampling cannot correct a proposal that misses the target's tails (Pareto
:math:`\hat k > 0.7`). Annealing moves the proposal's draws towards the target through the
tempered densities

.. math:: \pi_\beta \propto q^{1-\beta}\,\tilde p^{\beta}, \qquad
   0 = \beta_0 < \beta_1 < \dots < \beta_K = 1,

reweighting by :math:`(\tilde p/q)^{\beta_{k}-\beta_{k-1}}` at each step and moving every
particle by Hamiltonian Monte Carlo (or MALA) kernels that leave :math:`\pi_{\beta_k}`
invariant (Neal, "Annealed importance sampling", Stat. Comput. 2001,
https://arxiv.org/abs/physics/9803008). Resampling when the effective sample size falls makes
it sequential Monte Carlo (Del Moral, Doucet & Jasra, JRSS-B 2006,
https://doi.org/10.1111/j.1467-9868.2006.00553.x), and the weights still give an unbiased
:math:`\hat Z`:

.. math:: \hat Z = \prod_{k}\sum_i W^{(k-1)}_i\,
   \exp\bigl((\beta_k - \beta_{k-1})\,\ell(y^{(k-1)}_i)\bigr),
   \qquad \ell = \log\tilde p - \log q.

Here every temperature is chosen so that the conditional ESS of the step is ``cess``
(Zhou, Johansen & Aston 2016), the particles are resampled (multinomially) when the ESS falls
below ``resample`` times N, each kernel's step size adapts to an acceptance rate and its mass
matrix to the particles' spread, and for a flow proposal the particles move in the flow's base
space (see :mod:`~pyroflows.infer.sampling.tempering`). The result is an
:class:`~pyroflows.infer.ImportanceResult` whose ``log_evidence_se`` is Lee & Whiteley's
variance estimate for SMC (the plain importance estimate when nothing was resampled).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import pyro
import torch
from pyro.infer.autoguide import AutoContinuous
from torch.distributions import Distribution
from tqdm.auto import tqdm

from ...checks import check_choice, check_count, check_real
from ...core import Flow
from ..model_density import check_model_arguments
from .importance import nan_hint, seeded
from .importance_result import ImportanceResult, finish
from .psis import ess, psis
from .targets_and_proposals import VectorProposal, resolve_target
from .tempering import (
    Particles,
    TemperedPath,
    hmc_move,
    next_temperature,
    relative_variance,
    resample_indices,
)

__all__ = ["annealed_importance"]

#: Leapfrog steps per move and the acceptance rate the step size adapts to, per kernel
#: (optimal rates: Beskos et al. 2013 for HMC, Roberts & Rosenthal 1998 for MALA).
KERNELS = {"hmc": (5, 0.65), "mala": (1, 0.574)}


def annealed_importance(
    target: Callable,
    proposal: Any,
    num_particles: int,
    *,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    target_kind: str = "auto",
    kernel: str = "hmc",
    num_leapfrog_steps: int | None = None,
    num_moves: int = 5,
    step_size: float | None = None,
    cess: float = 0.9,
    resample: float = 0.5,
    temperatures: Sequence[float] | None = None,
    max_temperatures: int = 500,
    final_moves: int = 0,
    widen: float = 1.0,
    seed: int | None = None,
    progress: bool | None = None,
    warn: bool = True,
) -> ImportanceResult:
    r"""Annealed importance sampling / SMC from ``proposal`` to ``target``, vectorised over
    particles.

    Args:
        target: an unnormalised log-density ``(N, D) -> (N,)`` or a Pyro model (weighed in the
            unconstrained space of its latent sites), as for
            :func:`~pyroflows.infer.importance`.
        proposal: a :class:`~pyroflows.Flow`, a :class:`~pyroflows.FlowDistribution`, a torch
            distribution over (D,) vectors or an ``AutoContinuous`` guide (``AutoFlow``,
            ``AutoMeanFieldFlow``, Pyro's ``AutoMultivariateNormal``, ...).
        num_particles: N >= 2.
        model_args: the model's positional arguments.
        model_kwargs: the model's keyword arguments.
        target_kind: ``"auto"``, ``"model"`` or ``"log_density"``, as for ``importance``.
        kernel: ``"hmc"`` (``num_leapfrog_steps`` 5, acceptance 0.65) or ``"mala"`` (one
            leapfrog step, acceptance 0.574).
        num_leapfrog_steps: leapfrog steps per move (default: the kernel's).
        num_moves: kernel moves per temperature.
        step_size: the first step size (default :math:`0.5\,D^{-1/4}`); it then adapts, after
            every move, towards the kernel's acceptance rate.
        cess: conditional ESS fraction each new temperature is chosen to keep, in (0, 1); closer
            to one gives more, smaller steps.
        resample: resample when the ESS falls below this fraction of N; ``0`` never resamples
            (annealed importance sampling).
        temperatures: a fixed increasing schedule in (0, 1] ending at 1, instead of the
            adaptive one (e.g. ``torch.linspace(0, 1, 101)[1:] ** 4``).
        max_temperatures: the most temperatures of the adaptive schedule; if it runs out before
            1, the last step goes to 1 and a warning says the weights may be poor.
        final_moves: after the last reweighting, resample the particles and move them this
            many times at :math:`\beta = 1` (resample-move): the result then holds N equally
            weighted, nearly independent draws (the log-weights all :math:`\log\hat Z`, so
            its k-hat and ESS say nothing); the weights' k-hat and ESS before are in
            ``info["khat_before_moves"]`` and ``info["ess_before_moves"]``. ``0`` (default)
            keeps the weighted particles.
        widen: start the particles from the flow's base distribution widened by this factor
            instead of from the proposal itself (weights and evidence stay exact, with the
            widened start as the reference). A flow fitted by the ELBO is usually too narrow;
            a wider start reaches tails it misses (e.g. the neck of a funnel), at the price of
            more temperatures. Only for proposals with a base space (flows, ``AutoFlow``,
            ``MultivariateNormal``).
        seed: seed for the draws and moves (the global RNG state is restored after).
        progress: a tqdm bar over :math:`\beta` (``None``: on a terminal).
        warn: warn when k-hat of the final weights exceeds its threshold.

    Returns:
        An :class:`~pyroflows.infer.ImportanceResult` of the final particles (``samples`` the
        points, ``site_samples`` for a model), their weights, :math:`\log\hat Z` and the
        particles' ``ancestors`` (so that ``expectation``'s standard errors count them). ``info``
        holds ``temperatures``, ``acceptance`` (mean per temperature), ``step_sizes``,
        ``resampled_at`` (temperature indices), ``num_eves`` (distinct initial ancestors
        left), ``gradient_evaluations`` and ``target_evaluations`` (per particle), ``space``
        (``"base"`` when the particles moved in the flow's base space) and ``seconds``.

    Raises:
        ValueError: ``num_particles < 2``, a bad option, a model/proposal dimension mismatch,
            or a target that is NaN at every draw of the proposal.
        TypeError: a proposal that is not a vector distribution (a generic guide: use an
            ``AutoContinuous`` one).

    Example:
        >>> q = dist.MultivariateNormal(torch.zeros(2), 4.0 * torch.eye(2))
        >>> log_p = lambda x: -0.5 * ((x - 3.0) ** 2).sum(-1)        # Z = 2 pi
        >>> r = annealed_importance(log_p, q, 1000, seed=0)
        >>> abs(r.log_evidence - math.log(2 * math.pi)) < 3 * r.log_evidence_se + 0.05
        True
    """
    num_particles = check_count("num_particles", num_particles, 2)
    check_choice("kernel", kernel, KERNELS)
    default_steps, accept_target = KERNELS[kernel]
    num_steps = check_count(
        "num_leapfrog_steps", default_steps if num_leapfrog_steps is None else num_leapfrog_steps
    )
    num_moves = check_count("num_moves", num_moves, 0)
    cess = check_real("cess", cess, 0.0, 1.0)
    if not (isinstance(resample, int | float) and 0.0 <= resample <= 1.0):
        raise ValueError(f"resample must be an ESS fraction in [0, 1], got {resample!r}")
    max_temperatures = check_count("max_temperatures", max_temperatures)
    final_moves = check_count("final_moves", final_moves, 0)
    widen = check_real("widen", widen)
    step_size = None if step_size is None else check_real("step_size", step_size)
    schedule = None if temperatures is None else _check_schedule(temperatures)
    model_args, model_kwargs = check_model_arguments(model_args, model_kwargs)
    if callable(proposal) and not isinstance(proposal, (Flow, Distribution, AutoContinuous)):
        raise TypeError(
            "annealed_importance needs a vector proposal: a Flow, a FlowDistribution, a torch "
            "distribution over (D,) vectors or an AutoContinuous guide (AutoFlow, "
            f"AutoMeanFieldFlow, ...); got a {type(proposal).__name__}"
        )
    q = VectorProposal(proposal, model_args, model_kwargs)
    log_density, model_target = resolve_target(target, q, model_args, model_kwargs, target_kind)
    path = TemperedPath(q.distribution, log_density, widen)
    started = time.perf_counter()
    N = num_particles
    eps = 0.5 * q.dim**-0.25 if step_size is None else step_size
    with seeded(seed, _device_of(q)), torch.no_grad():
        y = path.sample(N)
        first = path.evaluate(y, grad=True)  # validated: bad data fails here, with its message
        _check_start(first, model_args, model_kwargs)
        # Like Pyro's MCMC, the moves run without validation: a proposal outside the support
        # is rejected by its -inf density rather than raising.
        with pyro.validation_enabled(False):
            state = _anneal(
                path, first, schedule, max_temperatures, cess, resample, num_moves,
                num_steps, eps, accept_target, progress, warn,
            )  # fmt: skip
        particles, log_w, info = state
        eves = info.pop("eves")
        relative = relative_variance(log_w, eves, len(info["resampled_at"]))
        if final_moves:
            with pyro.validation_enabled(False):
                particles, log_w, eves = _resample_move(
                    path, particles, log_w, eves, final_moves, num_steps, accept_target, info
                )
    info.update(space=path.space, seconds=time.perf_counter() - started)
    sites = None if model_target is None else model_target.unpack(particles.x)
    result = finish(
        log_w,
        particles.x,
        sites,
        particles.log_p,
        None,
        warn,
        what="annealed_importance",
        stacklevel=3,
        hint=nan_hint(model_args, model_kwargs),
    )
    result.evidence_relative_variance = relative
    result.ancestors = eves
    result.info.update(info)
    if model_target is not None:
        result.info["sites"] = model_target.describe()
    return result


def _anneal(
    path: TemperedPath,
    particles: Particles,
    schedule: list[float] | None,
    max_temperatures: int,
    cess: float,
    resample_below: float,
    num_moves: int,
    num_steps: int,
    eps: float,
    accept_target: float,
    progress: bool | None,
    warn: bool,
) -> tuple[Particles, torch.Tensor, dict[str, Any]]:
    """The SMC loop: reweigh, resample when needed, move; returns the last particles, their
    log-weights (whose mean is the evidence estimate) and what happened."""
    N = particles.y.shape[0]
    device = particles.y.device
    log_w = torch.zeros(N, dtype=torch.float64, device=device)
    eves = torch.arange(N, device=device)
    info: dict[str, Any] = {
        "temperatures": [0.0],
        "acceptance": [],
        "step_sizes": [],
        "resampled_at": [],
    }
    beta, evaluations = 0.0, 1
    bar = tqdm(total=1.0, desc="annealing", disable=_disabled(progress), leave=False)
    while beta < 1.0:
        k = len(info["temperatures"])
        if schedule is not None:
            new = schedule[k - 1]
        elif k >= max_temperatures:
            new = 1.0
            if warn:
                _warn_truncated(max_temperatures)
        else:
            new = next_temperature(log_w, particles.ell, beta, cess)
        ell = torch.nan_to_num(particles.ell.double(), nan=-math.inf)
        log_w = log_w + (new - beta) * ell
        beta = new
        info["temperatures"].append(beta)
        bar.update(beta - bar.n)
        if beta == 1.0:
            break  # the final weights are the result: no resampling or moves after them
        if float(ess(log_w)) < resample_below * N:
            particles, eves, log_w = _resample(particles, eves, log_w)
            info["resampled_at"].append(k)
        inverse_mass = _inverse_mass(particles.y, log_w)
        particles, rates, eps = _moves(
            path, particles, beta, num_moves, num_steps, eps, accept_target, inverse_mass
        )
        evaluations += num_moves * num_steps
        info["acceptance"].append(sum(rates) / len(rates) if rates else math.nan)
        info["step_sizes"].append(eps)
    bar.close()
    info.update(
        step_size=eps,
        eves=eves,
        num_eves=int(torch.unique(eves).numel()),
        gradient_evaluations=evaluations,
        target_evaluations=evaluations,
    )
    return particles, log_w, info


def _resample(
    particles: Particles, eves: torch.Tensor, log_w: torch.Tensor
) -> tuple[Particles, torch.Tensor, torch.Tensor]:
    """Multinomial resampling: the drawn particles and their Eve indices, with equal weights
    that keep the running evidence (``log mean(w)`` is unchanged)."""
    index = resample_indices(log_w)
    log_mean = torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])
    return particles.index(index), eves[index], log_mean.expand_as(log_w).clone()


def _resample_move(
    path: TemperedPath,
    particles: Particles,
    log_w: torch.Tensor,
    eves: torch.Tensor,
    num_moves: int,
    num_steps: int,
    accept_target: float,
    info: dict[str, Any],
) -> tuple[Particles, torch.Tensor, torch.Tensor]:
    """Resample the final particles and move them at the target: equal weights that keep
    the evidence, the diagnostics of the weights before in ``info``."""
    smoothed, khat = psis(log_w)
    info.update(khat_before_moves=khat, ess_before_moves=float(ess(smoothed)))
    particles, eves, log_w = _resample(particles, eves, log_w)
    inverse_mass = _inverse_mass(particles.y, log_w)
    particles, rates, _ = _moves(
        path, particles, 1.0, num_moves, num_steps, info["step_size"], accept_target, inverse_mass
    )
    info["final_acceptance"] = sum(rates) / len(rates)
    info["gradient_evaluations"] += num_moves * num_steps
    info["target_evaluations"] += num_moves * num_steps
    return particles, log_w, eves


def _moves(
    path: TemperedPath,
    particles: Particles,
    beta: float,
    num_moves: int,
    num_steps: int,
    eps: float,
    accept_target: float,
    inverse_mass: torch.Tensor,
) -> tuple[Particles, list[float], float]:
    """``num_moves`` HMC moves at ``beta``, the step size adapting after each towards
    ``accept_target``; returns the particles, the acceptance rates and the last step size."""
    rates = []
    for _ in range(num_moves):
        particles, accept = hmc_move(path, particles, beta, eps, num_steps, inverse_mass)
        rate = float(accept.mean())
        # A multiplicative Robbins-Monro step: acceptance above the target lengthens the step.
        eps *= math.exp(2.0 * (rate - accept_target))
        rates.append(rate)
    return particles, rates, eps


def _inverse_mass(y: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
    """The diagonal inverse mass: the particles' weighted variance per coordinate."""
    W = torch.softmax(log_w, 0).to(y.dtype)[:, None]
    mean = (W * y).sum(0)
    var = (W * (y - mean).square()).sum(0)
    floor = 1e-6 * var.mean().clamp_min(1e-12)
    return torch.nan_to_num(var, nan=1.0).clamp_min(floor)


def _check_schedule(temperatures: Sequence[float]) -> list[float]:
    values = [float(t) for t in temperatures]
    increasing = all(b > a for a, b in zip([0.0, *values], values, strict=False))
    if not values or not increasing or values[-1] != 1.0:
        raise ValueError(
            "temperatures must increase strictly within (0, 1] and end at 1, got "
            f"{values[:3]}...{values[-2:]}"
            if len(values) > 5
            else f"temperatures must increase strictly within (0, 1] and end at 1, got {values}"
        )
    return values


def _check_start(particles: Particles, args: tuple, kwargs: dict) -> None:
    if not bool(torch.isfinite(particles.ell).any()):
        raise ValueError(
            "annealed_importance: the target's log-density is NaN or -inf at every draw of the "
            f"proposal, so no particle has a weight: {nan_hint(args, kwargs)}"
        )


def _device_of(q: VectorProposal) -> torch.device:
    return q.probe().device


def _disabled(progress: bool | None) -> bool | None:
    return None if progress is None else not progress


def _warn_truncated(max_temperatures: int) -> None:
    import warnings

    warnings.warn(
        f"annealed_importance: the adaptive schedule used all {max_temperatures} temperatures "
        "before reaching 1, so the last step jumps to 1 and its weights may be poor; raise "
        "max_temperatures, lower cess, or improve the proposal",
        UserWarning,
        stacklevel=4,
    )
