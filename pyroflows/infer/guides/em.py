r"""Variational EM with flow posteriors, in the conventions of scikit-learn's EM estimators.

The model's ``pyro.param`` values :math:`\theta` are point-estimated and its latent variables get
a variational posterior :math:`q_\phi`. Each iteration alternates

* an **E-step**: ``e_steps`` gradient steps on the guide's parameters :math:`\phi` (the model's
  :math:`\theta` held fixed), and
* an **M-step**: ``m_steps`` gradient steps on :math:`\theta` (:math:`\phi` held fixed),

both on the same ELBO :math:`\mathcal{L}(\theta, \phi)`. Discrete latent sites marked for
enumeration (``infer={"enumerate": "parallel"}``, or any discrete latent site when ``loss`` is
left to its default) are summed out exactly with ``TraceEnum_ELBO``; the flow guides
(:class:`~pyroflows.infer.AutoFlow` and friends) skip them, so a mixture's assignments are
enumerated while its continuous latents get a flow posterior.

Convergence follows scikit-learn: ``max_iter``, ``tol`` (here on a moving average of the
per-iteration bound, which is a Monte Carlo estimate), ``n_init`` restarts keeping the best
bound, and the fitted attributes ``converged_``, ``n_iter_``, ``lower_bound_``, ``history_``.
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, config_enumerate
from torch import nn
from tqdm.auto import tqdm

from ...nn.transaction import transaction
from ..model_density import init_trace, plate_nesting
from .param_sync import param_tensors

__all__ = ["ConvergenceWarning", "VariationalEM"]


class ConvergenceWarning(UserWarning):
    """No restart of :class:`VariationalEM` converged within ``max_iter`` iterations."""


def _has_discrete_latents(model: Callable, args: tuple, kwargs: dict) -> bool:
    trace = init_trace(model, args, kwargs)
    for site in trace.nodes.values():
        if site["type"] == "sample" and not site["is_observed"]:
            support = getattr(site["fn"], "support", None)
            if site["infer"].get("enumerate") or (support is not None and support.is_discrete):
                return True
    return False


@contextlib.contextmanager
def _restored_on_error(guide: Any, tensors: dict[str, torch.Tensor]) -> Iterator[None]:
    """Run one iteration; on any exception (KeyboardInterrupt included) put the optimised
    tensors and the guide's module state (its flows, averages and buffers) back as they were
    before it, then re-raise."""
    saved = {name: t.detach().clone() for name, t in tensors.items()}
    guarded = transaction(guide) if isinstance(guide, nn.Module) else contextlib.nullcontext()
    try:
        with guarded:
            yield
    except BaseException:
        with torch.no_grad():
            for name, t in tensors.items():
                t.copy_(saved[name])
        raise


class VariationalEM:
    r"""Variational EM: alternate flow-posterior E-steps and parameter M-steps.

    Args:
        model: a Pyro model with ``pyro.param`` (or ``pyro.module``) parameters to estimate.
        guide: a guide for the model's continuous latents (e.g. ``AutoFlow(model, ...)``; for
            a model with discrete latents, of ``config_enumerate(model)``), or a factory
            ``model -> guide``, which gets the model marked for enumeration (with the default
            ``loss``); a factory is needed for ``n_init > 1`` (each restart builds a fresh
            guide).
        loss: an ELBO; default ``TraceEnum_ELBO`` when the model has discrete latent sites
            (they are enumerated in parallel), else ``Trace_ELBO``.
        max_iter: maximum number of EM iterations per restart.
        tol: convergence threshold on the change of the moving average of the bound between
            iterations, relative to its magnitude (``|Δ| < tol * max(1, |bound|)``).
        n_init: number of restarts; the one with the best final bound is kept.
        e_steps: guide steps per E-step.
        m_steps: parameter steps per M-step.
        lr: Adam learning rate of the E-steps.
        m_lr: Adam learning rate of the M-steps (default ``lr``).
        window: iterations in the moving average of the bound.
        random_state: seed of restart ``i`` is ``random_state + i`` (``None``: not seeded).
        progress: show a tqdm progress bar (default: only on a terminal).

    Attributes:
        converged_: whether the kept restart converged.
        n_iter_: its number of iterations.
        lower_bound_: its final (moving-average) bound.
        history_: one dict per iteration of every restart: ``init``, ``iteration``,
            ``lower_bound``, ``moving_average``, ``seconds``.
        guide_: the kept restart's guide.
        interrupted_: whether a KeyboardInterrupt ended the fit (see :meth:`fit`).
        params_: the model's fitted parameters (constrained values), ``name -> tensor``.

    Example:
        >>> em = VariationalEM(model, lambda m: AutoFlow(m, model_args=(x,)), n_init=2)  # doctest: +SKIP
        >>> em.fit(x).params_["locs"]                                                    # doctest: +SKIP
    """

    def __init__(
        self,
        model: Callable,
        guide: Any,
        loss: Any = None,
        *,
        max_iter: int = 100,
        tol: float = 1e-4,
        n_init: int = 1,
        e_steps: int = 20,
        m_steps: int = 10,
        lr: float = 1e-2,
        m_lr: float | None = None,
        window: int = 5,
        random_state: int | None = 0,
        progress: bool | None = None,
    ) -> None:
        for name, value, low in (
            ("max_iter", max_iter, 1),
            ("n_init", n_init, 1),
            ("e_steps", e_steps, 0),
            ("m_steps", m_steps, 0),
            ("window", window, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not tol >= 0:
            raise ValueError(f"tol must be non-negative, got {tol!r}")
        if e_steps + m_steps == 0:
            raise ValueError("e_steps and m_steps cannot both be 0")
        is_instance = isinstance(guide, nn.Module)
        if not is_instance and not callable(guide):
            raise TypeError(
                "guide must be a guide (an nn.Module such as AutoFlow) or a factory model -> guide"
            )
        if is_instance and n_init > 1:
            raise ValueError(
                "n_init > 1 needs a guide factory (model -> guide), so that every "
                "restart starts from a fresh guide"
            )
        self.model = model
        self.guide = guide
        self.loss = loss
        self.max_iter, self.tol, self.n_init = max_iter, tol, n_init
        self.e_steps, self.m_steps, self.window = e_steps, m_steps, window
        self.lr, self.m_lr = lr, lr if m_lr is None else m_lr
        self.random_state, self.progress = random_state, progress

    # -- helpers -----------------------------------------------------------------------------------

    def _loss_and_model(self, args: tuple, kwargs: dict) -> tuple[Any, Callable]:
        if self.loss is not None:
            return self.loss, self.model
        if _has_discrete_latents(self.model, args, kwargs):
            nesting = plate_nesting(self.model, *args, **kwargs)
            return TraceEnum_ELBO(max_plate_nesting=nesting), config_enumerate(
                self.model, "parallel"
            )
        return Trace_ELBO(), self.model

    # -- fitting ---------------------------------------------------------------------------------------

    def fit(self, *args: Any, **kwargs: Any) -> VariationalEM:
        """Run EM on the model's arguments ``*args, **kwargs``; returns ``self``.

        A KeyboardInterrupt (Ctrl-C) ends the fit like ``max_iter`` does: the iteration in
        progress is undone (the model's and the guide's parameters, the guide's averages, as
        they were after the last completed iteration), the best restart so far is kept as
        usual, ``interrupted_`` is set and a RuntimeWarning says so. Interrupted before any
        iteration completed, the parameters are put back and the KeyboardInterrupt
        re-raised.
        """
        self.history_: list[dict[str, float]] = []
        best: dict[str, Any] | None = None
        bar = tqdm(
            total=self.max_iter * self.n_init,
            desc="VariationalEM",
            disable=None if self.progress is None else not self.progress,
        )
        store = pyro.get_param_store()
        last_names: list[str] = []
        self.interrupted_ = False
        for init in range(self.n_init):
            if self.random_state is not None:
                pyro.set_rng_seed(self.random_state + init)
            # A restart starts from fresh parameters: forget the previous restart's (its tensors
            # stay alive in `best` if it is the best so far).
            for name in last_names:
                if name in store:
                    del store[name]
            before = set(store.keys())
            try:
                run = self._fit_one(init, args, kwargs, bar)
            except KeyboardInterrupt:  # before any iteration of this restart completed
                if best is None:
                    bar.close()
                    raise
                for name in set(store.keys()) - before:
                    del store[name]
                self.interrupted_ = True
                break
            # Everything the restart put in the store (parameters, and the guides' fixed
            # buffers and averages kept there), so the next restart starts afresh.
            last_names = sorted(set(run["names"]) | (set(store.keys()) - before))
            state = store.get_state()
            run["state"] = {
                part: {name: values[name] for name in last_names if name in values}
                for part, values in state.items()
            }
            if best is None or run["lower_bound"] > best["lower_bound"]:
                best = run
            if run["interrupted"]:
                self.interrupted_ = True
                break
        bar.close()
        assert best is not None
        # Put the kept restart's tensors back (its guide's modules hold those same tensors):
        # set_state stores them as they are, with their constraints.
        for name in last_names:
            if name in store:
                del store[name]
        store.set_state(best["state"])
        self.guide_ = best["guide"]
        self.converged_ = best["converged"]
        self.n_iter_ = best["n_iter"]
        self.lower_bound_ = best["lower_bound"]
        with torch.no_grad():
            self.params_ = {name: pyro.param(name).detach().clone() for name in best["model_names"]}
        if self.interrupted_:
            warnings.warn(
                f"VariationalEM was interrupted (KeyboardInterrupt) in restart {init}; kept the "
                f"best of the iterations completed so far ({self.n_iter_} in the kept restart)",
                RuntimeWarning,
                stacklevel=2,
            )
        elif not self.converged_:
            warnings.warn(
                f"VariationalEM did not converge in {self.max_iter} iterations "
                f"(best of {self.n_init} restarts); increase max_iter or tol",
                ConvergenceWarning,
                stacklevel=2,
            )
        return self

    def _iterate(
        self,
        iteration: int,
        init: int,
        objective: Callable[[], torch.Tensor],
        e_opt: torch.optim.Optimizer | None,
        m_opt: torch.optim.Optimizer | None,
        values: list[float],
    ) -> None:
        """One EM iteration: the E-steps, then the M-steps; appends each step's bound."""
        for optimizer, steps in ((e_opt, self.e_steps), (m_opt, self.m_steps)):
            if optimizer is None:
                continue
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                value = objective()
                if not torch.isfinite(value):
                    raise FloatingPointError(
                        f"the ELBO became {float(value)} at iteration {iteration} of restart "
                        f"{init}; try a smaller lr"
                    )
                value.backward()
                optimizer.step()
                values.append(-float(value.detach()))

    def _fit_one(self, init: int, args: tuple, kwargs: dict, bar: tqdm) -> dict[str, Any]:
        # With the default loss, the factory gets the model marked for enumeration (a no-op
        # without discrete latents), so the guide leaves discrete sites to the ELBO.
        marked = self.model if self.loss is not None else config_enumerate(self.model, "parallel")
        guide = self.guide if isinstance(self.guide, nn.Module) else self.guide(marked)
        loss, model = self._loss_and_model(args, kwargs)

        def objective() -> torch.Tensor:
            return loss.differentiable_loss(model, guide, *args, **kwargs)

        guide_params = param_tensors(guide, args, kwargs)
        model_params = {
            k: v for k, v in param_tensors(model, args, kwargs).items() if k not in guide_params
        }
        e_opt = torch.optim.Adam(list(guide_params.values()), lr=self.lr) if guide_params else None
        m_opt = (
            torch.optim.Adam(list(model_params.values()), lr=self.m_lr) if model_params else None
        )
        bounds: list[float] = []
        previous = math.nan
        converged, n_iter, interrupted = False, 0, False
        tensors = {**guide_params, **model_params}
        for iteration in range(1, self.max_iter + 1):
            start = time.perf_counter()
            values: list[float] = []
            try:
                with _restored_on_error(guide, tensors):
                    self._iterate(iteration, init, objective, e_opt, m_opt, values)
            except KeyboardInterrupt:
                if not bounds:  # nothing completed: the state is the initial one again
                    raise
                interrupted = True
                break
            bound = sum(values) / len(values)
            bounds.append(bound)
            average = sum(bounds[-self.window :]) / len(bounds[-self.window :])
            self.history_.append(
                {
                    "init": init,
                    "iteration": iteration,
                    "lower_bound": bound,
                    "moving_average": average,
                    "seconds": time.perf_counter() - start,
                }
            )
            bar.update(1)
            bar.set_postfix(init=init, bound=f"{average:.4g}")
            n_iter = iteration
            if len(bounds) > self.window and abs(average - previous) < self.tol * max(
                1.0, abs(average)
            ):
                converged = True
                break
            previous = average
        bar.update(self.max_iter - n_iter)
        names = list(guide_params) + list(model_params)
        return {
            "guide": guide,
            "converged": converged,
            "interrupted": interrupted,
            "n_iter": n_iter,
            "lower_bound": sum(bounds[-self.window :]) / len(bounds[-self.window :]),
            "names": names,
            "model_names": list(model_params),
        }
