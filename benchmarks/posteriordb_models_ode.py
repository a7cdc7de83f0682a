"""Pyro models of the two ODE posteriors of posteriordb (see ``posteriordb_models.py`` for the
convention), solved with torchdiffeq's adaptive Dormand-Prince method (``dopri5``) and
differentiated through the solver's steps.

The models take latents with extra leading (particle) dimensions: the state and the
parameters broadcast through the right-hand side, and one adaptive solve serves every particle
(its steps are the ones the hardest particle needs).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from posteriordb_helpers import ModelFactory, as_tensor, stack_columns
from pyro.distributions import constraints
from torchdiffeq import odeint

__all__ = ["ODE_MODELS"]

# Tighter than the Stan programs' (rk45: 1e-5 relative, 1e-3 absolute; bdf: 1e-6, 1e-6), so
# the solver's error stays far below the posterior's scale.
RTOL, ATOL = 1e-7, 1e-7
#: Right-hand-side evaluations of one solve at most, over all output times together (about
#: 3,300 dopri5 steps). A solve at the reference draws takes 520-570 (Lotka-Volterra) and
#: 120-150 (one_comp), for one draw or a batch of 4,000. torchdiffeq's own ``max_num_steps``
#: counts per output interval: at 20,000 it let one solve at a wild point of Lotka-Volterra
#: (20 intervals) run for minutes, and a mode search's or a guide build's time with it.
MAX_RHS_CALLS = 20_000


class _TooManyStepsError(Exception):
    """Raised inside the right-hand side when a solve has spent ``MAX_RHS_CALLS``."""


def _solve(rhs: Callable, y0: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """The solution (T, ..., n) at ``times`` (T,) from ``y0`` (..., n) at ``times[0]``, or NaN
    where the solver gives up (a step size underflow or more than ``MAX_RHS_CALLS``
    right-hand-side evaluations, at the wild parameters of an early warm-up proposal or a
    random start): the density is then NaN, which NUTS rejects as a divergence, as Stan
    rejects a failed solve, and which a mode search backs off from."""
    calls = 0

    def counted(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls > MAX_RHS_CALLS:
            raise _TooManyStepsError
        return rhs(t, y)

    try:
        return odeint(counted, y0, times, method="dopri5", rtol=RTOL, atol=ATOL)
    except (AssertionError, _TooManyStepsError):  # torchdiffeq reports underflow by assertion
        nan = torch.full_like(y0, float("nan"))
        return nan.expand(len(times), *y0.shape) + 0 * y0  # still a function of y0


def lotka_volterra(data: dict, dtype: torch.dtype) -> tuple[Callable, Callable]:
    """Lynx-hare Lotka-Volterra: :math:`u' = (\\alpha - \\beta v) u`,
    :math:`v' = (-\\gamma + \\delta u) v` from ``z_init`` at t = 0; ``theta`` = (alpha, beta,
    gamma, delta) >= 0 with Normal(1, 0.5) priors on alpha, gamma and Normal(0.05, 0.05) on
    beta, delta (truncated at 0: a factor on the positive line); ``z_init`` ~ LogNormal(log 10,
    1), ``sigma`` ~ LogNormal(-1, 1); the initial and later counts are LogNormal around the
    populations with ``sigma[k]`` per species."""
    times = torch.cat([as_tensor([0.0], dtype), as_tensor(data["ts"], dtype)])
    y_init, y = as_tensor(data["y_init"], dtype), as_tensor(data["y"], dtype)  # (2,), (N, 2)
    prior_loc = as_tensor([1.0, 0.05, 1.0, 0.05], dtype)
    prior_scale = as_tensor([0.5, 0.05, 0.5, 0.05], dtype)

    def model() -> None:
        theta = pyro.sample("theta", dist.ImproperUniform(constraints.positive, (), (4,)))
        pyro.factor("theta_prior", dist.Normal(prior_loc, prior_scale).log_prob(theta).sum(-1))
        z_init = pyro.sample(
            "z_init", dist.LogNormal(as_tensor(np.log(10.0), dtype), 1.0).expand([2]).to_event(1)
        )
        sigma = pyro.sample(
            "sigma", dist.LogNormal(as_tensor(-1.0, dtype), 1.0).expand([2]).to_event(1)
        )
        alpha, beta, gamma, delta = theta.unbind(-1)

        def rhs(t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            u, v = z.unbind(-1)
            return torch.stack([(alpha - beta * v) * u, (-gamma + delta * u) * v], -1)

        z = _solve(rhs, z_init, times)[1:]  # (N, ..., 2)
        z = z.movedim(0, -2)  # (..., N, 2)
        first = dist.LogNormal(z_init.log(), sigma).log_prob(y_init).sum(-1)
        rest = dist.LogNormal(z.clamp_min(1e-300).log(), sigma[..., None, :]).log_prob(y)
        pyro.factor("counts", first + rest.sum((-2, -1)))

    def columns(s: dict) -> np.ndarray:
        return stack_columns(s["theta"], s["z_init"], s["sigma"])

    return model, columns


def one_comp_mm_elim_abs(data: dict, dtype: torch.dtype) -> tuple[Callable, Callable]:
    """One-compartment pharmacokinetics with first-order absorption and Michaelis-Menten
    elimination: :math:`C' = e^{-k_a t} D k_a / V - (V_m / V)\\, C / (K_m + C)`, C(t0) = 0;
    ``k_a``, ``K_m``, ``V_m``, ``sigma`` ~ HalfCauchy(1); ``C_hat`` ~ LogNormal(log C,
    sigma)."""
    dose, volume = float(data["D"]), float(data["V"])
    times = torch.cat([as_tensor([data["t0"]], dtype), as_tensor(data["times"], dtype)])
    c_hat = as_tensor(data["C_hat"], dtype)
    one = as_tensor(1.0, dtype)

    def model() -> None:
        k_a = pyro.sample("k_a", dist.HalfCauchy(one))
        K_m = pyro.sample("K_m", dist.HalfCauchy(one))
        V_m = pyro.sample("V_m", dist.HalfCauchy(one))
        sigma = pyro.sample("sigma", dist.HalfCauchy(one))

        def rhs(t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            absorbed = torch.exp(-k_a * t) * dose * k_a / volume
            eliminated = (V_m / volume) * c[..., 0] / (K_m + c[..., 0])
            return (absorbed - eliminated)[..., None]

        c0 = torch.zeros(k_a.shape + (1,), dtype=dtype)
        c = _solve(rhs, c0, times)[1:, ..., 0].movedim(0, -1)  # (..., N)
        log_c = c.clamp_min(1e-300).log()
        pyro.factor("C_hat", dist.LogNormal(log_c, sigma[..., None]).log_prob(c_hat).sum(-1))

    def columns(s: dict) -> np.ndarray:
        return stack_columns(s["k_a"], s["K_m"], s["V_m"], s["sigma"])

    return model, columns


ODE_MODELS: dict[str, ModelFactory] = {
    "hudson_lynx_hare-lotka_volterra": lotka_volterra,
    "one_comp_mm_elim_abs-one_comp_mm_elim_abs": one_comp_mm_elim_abs,
}
