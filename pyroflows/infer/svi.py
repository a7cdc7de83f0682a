r"""One call to fit a guide by SVI: a step size chosen by pilot runs, a stopping rule, the best
state kept on interruption, and the importance-sampling check at the end.

The recipe follows Agrawal & Domke's advice for black-box VI (try a few step sizes on short
runs and keep the best; average the iterates) and the spirit of Welandawe et al.'s RAABBVI
(stop when the objective no longer improves by more than its Monte Carlo noise):

1. **Step size.** Each of ``lr_candidates`` runs ``pilot_steps`` steps of Adam from the same
   start; the one with the lowest mean loss over its second half (finite) is kept and the
   guide goes back to the start.
2. **Stopping rule: the last doubling did not pay.** The loss is averaged over windows of
   ``window`` steps. At the end of every window, once there are at least 8 at the current
   step size, the mean loss of the second half of them (steps :math:`n/2..n`) is compared
   with that of the quarter before (:math:`n/4..n/2`): the rule holds when the improvement
   :math:`d` is, with its Monte Carlo error, below ``tol`` nats: :math:`d + 2\,se < tol`,
   ``se`` from the window means as batch means (which absorbs the losses'
   autocorrelation). The horizon grows with the run, so a slow drift that a few windows
   cannot resolve still shows over the last half, and a noisy loss runs until its
   improvement is resolved. When the rule first holds, the step size is divided by 10 and
   SVI goes on from there (``refinements`` times; the noise ball of a constant step size
   shrinks with it, as in Welandawe et al.'s RAABBVI, which also lowers the step size at
   stationarity); when it holds at the last step size, SVI stops.
3. **Kept state.** The state at the end of the best window (the guide's parameters and its
   modules' state, e.g. pyroflows guides' parameter averages, which their posterior uses).
   **Divergence.** A non-finite loss or Pyro's check of invalid values in the main run sends
   the guide back to its best state so far and on at the next smaller candidate step size
   (``result.fallbacks`` lists where it diverged), instead of ending the fit.
4. **Check.** :func:`~pyroflows.infer.importance` with ``check_draws`` draws from the guide:
   PSIS :math:`\hat k` against the sample-size-dependent threshold
   :math:`\min(1 - 1/\log_{10} S, 0.7)`
   (Vehtari et al. 2024) and the ESS.
5. **Mass-covering stage.** The ELBO, :math:`\mathrm{KL}(q\,\|\,p)`, is mode-seeking: a
   guide can sit inside a funnel's mouth or short of a ridge's far end and pay little for
   it. Where the check flags the fit (:math:`\hat k` at least :data:`MASS_COVERING_KHAT`,
   with the default objective), the fit goes on from there with the importance-weighted bound
   (:class:`~pyroflows.infer.IWAE`, Burda et al. 2016, with
   :data:`MASS_COVERING_PARTICLES` particles), by steps 1-4 again: the bound is tighter the
   better :math:`q` covers :math:`p` (Domke & Sheldon 2018 read its optimum as a
   :math:`q` whose importance-weighted resampling matches :math:`p`), so it pays for the
   mass the ELBO left out. That stage's guide is kept unless its check's log-evidence
   estimate (the importance-weighted bound of the check's draws, which rises with the mass
   the guide covers) is below the first fit's by more than twice their combined standard
   error, in which case the ELBO's fit is put back; ``result.mass_covering`` holds the
   stage's own result.

**Data-parallel.** Inside a ``torch.distributed`` process group of several processes (started
by ``torchrun``), every rank calls :func:`fit_guide` with the same model, guide and full data.
The guide (and any ``pyro.module`` / ``pyro.param`` of the model) is built once on every rank
*before* any optimizer exists and rank 0's parameters and module state (e.g. the parameter
averages) are copied to every rank; each rank is then reseeded differently (from rank 0's
torch RNG), so a ``pyro.plate(..., subsample_size=...)`` draws its own subsample on each rank
and the particles differ. Every step, each rank computes its ELBO gradient, and a few small
``all_reduce`` calls (the losses and failure flags, which parameters have a gradient, then one
flat buffer of gradients per dtype) average them over the ranks; every rank then takes the
same optimizer step, so the parameters stay bit-identical. The average of the ranks' unbiased
(plate-scaled) estimates is an unbiased estimate with ``world`` times the subsample. The
pilots, windows and stopping decisions see the averaged loss, ``max_time`` stops every rank
as soon as one rank's clock runs out, and an error on one rank raises on every rank. The
progress bar is rank 0's; the check is sharded over the ranks (the same global result on
each).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..checks import check_count, check_real
from ..nn.transaction import restore, snapshot
from .fitting.distributed import process_group
from .guides.param_sync import param_tensors
from .objectives import IWAE
from .sampling.importance import importance
from .sampling.importance_result import ImportanceResult
from .svi_parallel import DataParallelSVI

__all__ = ["MASS_COVERING_KHAT", "MASS_COVERING_PARTICLES", "GuideFitResult", "fit_guide"]

#: Particles per step of the importance-weighted bound in :func:`fit_guide`'s mass-covering
#: stage: on the centred eight schools 8 took the flow guide's worst mean error from 0.15 to
#: 0.03 posterior sd in 1,900 steps (``docs/choosing.rst``).
MASS_COVERING_PARTICLES = 8
#: :func:`fit_guide` runs its mass-covering stage when the ELBO's fit's check has a Pareto
#: :math:`\hat k` of at least this: the importance weights' variance is then infinite
#: (Vehtari et al. 2024), the guide's tails too light (Yao et al. 2018 read :math:`\hat k
#: < 0.5` as a good variational fit). The reliability threshold (0.7) flags too late: on a
#: funnel the neck the guide misses is rarely drawn, and the centred eight schools' fit
#: gave 0.69-0.98 on different draws.
MASS_COVERING_KHAT = 0.5


@dataclasses.dataclass
class GuideFitResult:
    """What :func:`fit_guide` returns.

    Attributes:
        history: one dict per window: ``step``, ``loss`` (its mean), ``se`` (its standard
            error), ``lr`` (its step size), ``seconds``.
        lr: the step size the pilots chose (after a divergence, the smaller one the run went
            on at; the refinements' tenths of it are in ``history``); ``pilot``: mean pilot
            loss per candidate step size.
        steps: SVI steps taken after the pilots; ``best_step``: the end of the kept window.
        stop_reason: ``"converged"`` (the stopping rule), ``"max_steps"``, ``"max_time"`` or
            ``"interrupted"`` (Ctrl-C: the best state so far is kept, ``interrupted`` is set).
        check: the importance-sampling check (``None`` with ``check_draws=0`` or when
            interrupted); ``khat``, ``ess`` and ``reliable`` read it.
        fallbacks: the step sizes at which the main run diverged (a non-finite loss or invalid
            values), in order; each time it went back to its best state so far and on at the
            next smaller candidate (a tenth below the smallest).
        mass_covering: the mass-covering stage's own result (``None`` when it did not run;
            see :func:`fit_guide`); ``mass_covering_kept``: whether the guide holds its fit
            (``check`` is then its check); ``first_check``: the ELBO's fit's check when the
            stage ran.
    """

    history: list[dict[str, float]]
    lr: float
    pilot: dict[float, float]
    steps: int
    best_step: int
    stop_reason: str
    interrupted: bool = False
    check: ImportanceResult | None = None
    fallbacks: list[float] = dataclasses.field(default_factory=list)
    mass_covering: GuideFitResult | None = None
    mass_covering_kept: bool = False
    first_check: ImportanceResult | None = None

    @property
    def khat(self) -> float:
        return math.nan if self.check is None else float(self.check.khat)

    @property
    def ess(self) -> float:
        return math.nan if self.check is None else float(self.check.ess)

    @property
    def reliable(self) -> bool | None:
        return None if self.check is None else bool(self.check.reliable)


def _last_doubling_did_not_pay(means: Sequence[float], tol: float) -> bool:
    """The stopping rule on the window means at one step size: ``True`` when the second half's
    mean is below the preceding quarter's by less than ``tol`` with its Monte Carlo error
    (``d + 2 se < tol``)."""
    m = len(means)
    if m < 8:
        return False
    recent = torch.tensor(means[m - m // 2 :], dtype=torch.float64)
    before = torch.tensor(means[m - m // 2 - m // 4 : m - m // 2], dtype=torch.float64)
    d = float(before.mean() - recent.mean())
    se = math.sqrt(float(recent.var() / len(recent) + before.var() / len(before)))
    return d + 2 * se < tol


def _diverged(error: BaseException) -> bool:
    """Whether an SVI step's error says the parameters diverged: a non-finite loss, a
    factorisation of a matrix gone indefinite, or Pyro's check finding invalid values."""
    if isinstance(error, FloatingPointError | torch.linalg.LinAlgError):
        return True
    return isinstance(error, ValueError) and "invalid values" in str(error)


class _State:
    """The tensors SVI optimises (the param store's, by name) and the guide's module state
    (:func:`~pyroflows.nn.transaction.snapshot`), saved and put back in place, so modules
    holding those tensors see the values."""

    def __init__(self, guide: Callable, tensors: dict[str, Tensor]) -> None:
        self.guide, self.tensors = guide, tensors
        self.saved: dict[str, Tensor] = {}
        self.module: list = []

    def save(self) -> None:
        self.saved = {name: t.detach().clone() for name, t in self.tensors.items()}
        if isinstance(self.guide, nn.Module):
            self.module = snapshot(self.guide)

    def restore(self) -> None:
        with torch.no_grad():
            for name, t in self.tensors.items():
                t.copy_(self.saved[name])
        restore(self.module)


def _tensors(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> dict[str, Tensor]:
    """The tensors SVI optimises, by name: the guide's (its call builds them) and the model's."""

    def guide_then_model(*a: Any, **k: Any) -> None:
        poutine.replay(model, trace=poutine.trace(guide).get_trace(*a, **k))(*a, **k)

    return param_tensors(guide_then_model, args, kwargs)


def _fit_stage(  # noqa: PLR0913, PLR0915
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    *,
    lr: float | None,
    lr_candidates: Sequence[float],
    pilot_steps: int,
    max_steps: int,
    window: int,
    tol: float,
    refinements: int,
    loss: Any,
    max_time: float | None,
    check_draws: int,
    progress: bool | None,
    distributed: bool | str,
    label: str,
    tensors: dict[str, Tensor] | None = None,
) -> GuideFitResult:
    """One SVI run of :func:`fit_guide` with one objective: pilots, the stopping rule, the
    kept state and the check (steps 1-4 of the module's description). ``tensors``: those of
    :func:`_tensors`, where the caller has them already."""
    if lr is not None:
        check_real("lr", lr)
    candidates = [
        check_real("lr_candidates", v) for v in ([lr] if lr is not None else lr_candidates)
    ]
    if not candidates:
        raise ValueError("lr_candidates is empty")
    pilot_steps, max_steps = (
        check_count("pilot_steps", pilot_steps),
        check_count("max_steps", max_steps),
    )
    window = check_count("window", window, 2)
    refinements = check_count("refinements", refinements, 0)
    tol = check_real("tol", tol)
    check_draws = check_count("check_draws", check_draws, 0)
    if max_time is not None:
        check_real("max_time", max_time)
    loss = Trace_ELBO() if loss is None else loss
    start = time.perf_counter()
    deadline = math.inf if max_time is None else start + max_time

    if tensors is None:
        tensors = _tensors(model, guide, args, kwargs)  # built before any optimizer
    device = next(iter(tensors.values())).device if tensors else torch.device("cpu")
    group = process_group(distributed, device)
    parallel = None
    if group is not None:
        parallel = DataParallelSVI(group, guide, tensors)
        parallel.start()  # rank 0's start on every rank, then per-rank randomness
    state = _State(guide, tensors)
    state.save()  # the start, for every pilot and the chosen step size
    pilot: dict[float, float] = {}
    disable = None if progress is None else not progress
    if group is not None and not group.main:
        disable = True  # rank 0's bar only
    bar = tqdm(total=max_steps, desc=label, disable=disable)
    out_of_time = [False]  # a distributed run learns it from the step's all-reduce

    def run(step_size: float, steps: int) -> Any:
        if parallel is None:
            svi = SVI(model, guide, ClippedAdam({"lr": step_size}), loss)
            for _ in range(steps):
                yield float(svi.step(*args, **kwargs))
            return
        optim = ClippedAdam({"lr": step_size})
        for _ in range(steps):
            value, out_of_time[0] = parallel.step(
                optim, loss, model, args, kwargs, time.perf_counter() > deadline
            )
            yield value

    history: list[dict[str, float]] = []
    steps, best_step, reason, interrupted = 0, 0, "max_steps", False
    chosen, failure = candidates[0], None
    base_lr = chosen
    fallbacks: list[float] = []  # step sizes the main run diverged at
    best = math.inf  # the best window mean, whose state is kept
    means: list[float] = []  # window means at the current step size
    refined = 0

    def _window_end(window_losses: list[float], steps: int) -> tuple[bool, str]:
        """At the end of a window: record it, keep the state if it is the best, and say
        whether the stopping rule ends the run."""
        nonlocal best, best_step
        if len(window_losses) < window:
            return False, "max_steps"
        w = torch.tensor(window_losses, dtype=torch.float64)
        mean, se = float(w.mean()), float(w.std() / math.sqrt(window))
        history.append(
            {"step": steps, "loss": mean, "se": se, "lr": chosen,
             "seconds": time.perf_counter() - start}
        )  # fmt: skip
        bar.set_postfix(loss=f"{mean:.4g}")
        window_losses.clear()
        means.append(mean)
        if mean < best:
            best, best_step = mean, steps
            state.save()
        return _last_doubling_did_not_pay(means, tol), "converged"

    try:
        if len(candidates) > 1:
            for step_size in candidates:
                bar.set_description(f"{label}: pilot lr={step_size:g}")
                try:
                    losses = list(run(step_size, pilot_steps))
                except (ValueError, RuntimeError) as error:  # diverged into invalid values
                    losses, failure = [math.inf], error
                tail = torch.tensor(losses[len(losses) // 2 :], dtype=torch.float64)
                pilot[step_size] = float(tail.mean()) if torch.isfinite(tail).all() else math.inf
                state.restore()
            finite = {k: v for k, v in pilot.items() if math.isfinite(v)}
            if not finite:
                raise FloatingPointError(
                    f"every pilot step size {candidates} gave a non-finite loss or failed; "
                    "check the model (the last failure is the cause below)"
                ) from failure
            chosen = min(finite, key=finite.get)
        base_lr = chosen  # the run's step size before refinements (result.lr)
        window_losses, done = [], False
        while not done and steps < max_steps:
            bar.set_description(f"{label} (lr={chosen:g})")
            try:
                for loss_value in run(chosen, max_steps - steps):
                    if not math.isfinite(loss_value):
                        raise FloatingPointError(f"non-finite loss {loss_value} at step {steps}")
                    steps += 1
                    bar.update()
                    window_losses.append(loss_value)
                    done, reason = _window_end(window_losses, steps)
                    if done and reason == "converged" and refined < refinements:
                        # Stationary at this step size: go on at a tenth of it.
                        refined, chosen, done = refined + 1, chosen / 10, False
                        means.clear()
                        break
                    if done:
                        break
                    if out_of_time[0] if parallel is not None else time.perf_counter() > deadline:
                        done, reason = True, "max_time"
                        break
                else:
                    done = True
            except (ValueError, RuntimeError, FloatingPointError) as error:
                if not _diverged(error) or (steps == 0 and not pilot):
                    raise  # a failure of the model itself, not of the step size
                # Diverged (a non-finite loss, or Pyro's check of invalid values): back to the
                # best state so far (the start before any window) at the next smaller step size.
                smaller = [c for c in candidates if c < chosen] or [chosen / 10]
                if len(fallbacks) >= len(candidates) + 1:
                    raise FloatingPointError(
                        f"fit_guide diverged at step sizes {[*fallbacks, chosen]}; check the "
                        "model (the last failure is the cause below)"
                    ) from error
                fallbacks.append(chosen)
                chosen = base_lr = max(smaller)
                state.restore()
                window_losses, means[:] = [], []
    except KeyboardInterrupt:
        reason, interrupted = "interrupted", True
    except BaseException:
        state.restore()  # any other failure: the best (or the starting) state, then re-raise
        raise
    finally:
        bar.close()
    state.restore()  # the best window's state (the start if no window was finite)
    check = None
    if check_draws and not interrupted:
        # A distributed fit: the draws sharded over the ranks, the same global check on each;
        # otherwise one process's fit, checked in that process (even inside a group).
        check = importance(
            model,
            guide,
            check_draws,
            model_args=args,
            model_kwargs=kwargs,
            warn=False,
            distributed=group is not None,
        )
    return GuideFitResult(
        history, base_lr, pilot, steps, best_step, reason, interrupted, check, fallbacks
    )


def _stage_checks_no_worse(first: ImportanceResult | None, stage: ImportanceResult | None) -> bool:
    """Whether the mass-covering stage's guide is kept: unless its check's log-evidence
    estimate is below the first fit's by more than twice their combined standard error.

    That estimate is the importance-weighted bound of all the check's draws: it rises with
    the posterior mass the guide covers (a funnel's neck the ELBO's fit left out), where
    k-hat, set by the weights' far tail, moves either way by chance. Within the noise the
    stage stands, as the first fit's check called for it."""
    if stage is None or first is None or not math.isfinite(first.log_evidence):
        return True
    if not math.isfinite(stage.log_evidence):
        return False
    noise = 2 * math.hypot(first.log_evidence_se, stage.log_evidence_se)
    return not stage.log_evidence < first.log_evidence - noise


def fit_guide(  # noqa: PLR0913
    model: Callable,
    guide: Callable,
    *args: Any,
    lr: float | None = None,
    lr_candidates: Sequence[float] = (0.1, 0.03, 0.01, 0.003),
    pilot_steps: int = 100,
    max_steps: int = 20_000,
    window: int = 100,
    tol: float = 0.05,
    refinements: int = 1,
    loss: Any = None,
    mass_covering: bool | str = "auto",
    max_time: float | None = None,
    check_draws: int = 4000,
    progress: bool | None = None,
    distributed: bool | str = "auto",
    **kwargs: Any,
) -> GuideFitResult:
    r"""Fit ``guide`` to ``model`` by SVI with Adam: pilot runs choose the step size, a
    stopping rule ends it, the best window's state is kept, and importance sampling checks
    the result; where the check flags the ELBO's fit, a mass-covering stage follows (see the
    module's description for each rule).

    Args:
        model: a Pyro model.
        guide: a guide for it (pyroflows' or Pyro's).
        *args: the model's positional arguments.
        lr: the step size; ``None`` chooses one of ``lr_candidates``.
        lr_candidates: the step sizes tried by the pilot runs.
        pilot_steps: steps of each pilot run.
        max_steps: SVI steps at most (after the pilots), per stage.
        window: steps per window (batch) of the stopping rule; it is first applied after 8.
        tol: improvement of the mean loss, in nats, over the last doubling of the run (at one
            step size) that counts as none.
        refinements: how many times the step size is divided by 10 when the stopping rule
            holds, before it stops the run.
        loss: the objective (default ``Trace_ELBO()``).
        mass_covering: ``"auto"``: with the default ``loss`` and a check, when the check's
            :math:`\hat k` is at least :data:`MASS_COVERING_KHAT`, go on from the fitted
            guide with :class:`~pyroflows.infer.IWAE` (:data:`MASS_COVERING_PARTICLES`
            particles) by the same rules, and keep that stage's guide unless its check's
            log-evidence estimate (the importance-weighted bound of its draws) is lower by
            more than twice the two estimates' combined standard error;
            ``True``: that stage after any fit (kept on the same condition; always kept
            with ``check_draws=0``); ``False``: never.
        max_time: time budget in seconds for the whole call (pilots and both stages
            included), checked after each step; the best state so far is kept.
        check_draws: importance draws of the final check (0: none).
        progress: a tqdm bar (``None``: on a terminal; rank 0's only in a distributed fit).
        distributed: ``"auto"``: data-parallel SVI when ``torch.distributed`` is initialised
            with more than one process (see the module's description: every rank passes the
            same model, guide and full data, and gets the same fitted guide); ``True``: the
            same, but an uninitialised ``torch.distributed`` is an error; ``False``: an
            independent fit on every rank.
        **kwargs: the model's keyword arguments.

    Returns:
        A :class:`GuideFitResult` of the first stage, with the kept guide's ``check`` and the
        mass-covering stage's own result in ``mass_covering``. Ctrl-C returns it with
        ``interrupted=True`` and the guide at its best state so far (at its start when
        interrupted during the pilots; at the first stage's fit when interrupted in the
        mass-covering stage).

    Raises:
        ValueError: an invalid option (``mass_covering`` not ``True``, ``False`` or
            ``"auto"``, a step size or count out of range, no candidate step size).
        FloatingPointError: every pilot step size failed, or the run diverged at all of them.

    Example:
        >>> result = fit_guide(model, AutoFlow(model), data)   # doctest: +SKIP
        >>> result.stop_reason, result.khat, result.reliable   # doctest: +SKIP
    """
    if mass_covering not in (True, False, "auto"):
        raise ValueError(f"mass_covering must be True, False or 'auto', got {mass_covering!r}")
    start = time.perf_counter()
    options = {
        "lr": lr,
        "lr_candidates": lr_candidates,
        "pilot_steps": pilot_steps,
        "max_steps": max_steps,
        "window": window,
        "tol": tol,
        "refinements": refinements,
        "check_draws": check_draws,
        "progress": progress,
        "distributed": distributed,
    }
    first = _fit_stage(
        model, guide, args, kwargs, loss=loss, max_time=max_time, label="fit_guide", **options
    )
    flagged = loss is None and first.check is not None and not first.khat < MASS_COVERING_KHAT
    if not (mass_covering is True or (mass_covering == "auto" and flagged)):
        return first
    left = None if max_time is None else max_time - (time.perf_counter() - start)
    if first.interrupted or (left is not None and left <= 0):
        return first
    tensors = _tensors(model, guide, args, kwargs)
    state = _State(guide, tensors)
    state.save()  # the first stage's fit, kept unless the second one checks better
    objective = IWAE(MASS_COVERING_PARTICLES)
    try:
        second = _fit_stage(
            model, guide, args, kwargs, loss=objective, max_time=left, label="fit_guide (IWAE)",
            tensors=tensors, **options,
        )  # fmt: skip
    except KeyboardInterrupt:  # during the stage's check, after its own run's handling
        state.restore()
        return dataclasses.replace(first, interrupted=True, first_check=first.check)
    except FloatingPointError as error:  # diverged at every step size: keep the first fit
        state.restore()
        warnings.warn(
            f"fit_guide: the mass-covering stage failed ({error}); the ELBO's fit is kept",
            RuntimeWarning,
            stacklevel=2,
        )
        return first
    kept = not second.interrupted and _stage_checks_no_worse(first.check, second.check)
    if not kept:
        state.restore()
    return dataclasses.replace(
        first,
        check=second.check if kept else first.check,
        interrupted=second.interrupted,
        mass_covering=second,
        mass_covering_kept=kept,
        first_check=first.check,
    )
