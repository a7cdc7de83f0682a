"""Pyro models of the posteriordb posteriors in ``../shared/data/posteriordb`` (see its MODELS.md):
the first seven here, the regressions and hidden Markov models in ``posteriordb_models_more.py``,
the ODE models in ``posteriordb_models_ode.py``.

``MODELS[name](data, dtype)`` returns ``(model, columns)``: a Pyro model with no arguments (the
data are closed over, in ``dtype``) and ``columns(samples)``, which turns a dict of posterior
samples (site name -> (n, *shape)) into an (n, P) array in the order of the reference draws'
``param_names``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from posteriordb_helpers import ModelFactory, as_tensor, stack_columns
from posteriordb_models_more import MORE_MODELS
from posteriordb_models_ode import ODE_MODELS
from pyro.distributions import constraints

__all__ = ["MODELS"]


def eight_schools_noncentered(data: dict, dtype: torch.dtype) -> tuple[Callable, Callable]:
    y, sigma = as_tensor(data["y"], dtype), as_tensor(data["sigma"], dtype)
    J = len(y)

    def model() -> None:
        mu = pyro.sample("mu", dist.Normal(as_tensor(0, dtype), 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(as_tensor(5.0, dtype)))
        with pyro.plate("schools", J):
            theta_trans = pyro.sample("theta_trans", dist.Normal(as_tensor(0, dtype), 1.0))
            theta = pyro.deterministic("theta", mu + tau * theta_trans)
            pyro.sample("y", dist.Normal(theta, sigma), obs=y)

    def columns(s: dict) -> np.ndarray:
        theta = s["mu"][:, None] + s["tau"][:, None] * s["theta_trans"]
        return stack_columns(theta, s["mu"], s["tau"])

    return model, columns


def eight_schools_centered(data: dict, dtype: torch.dtype) -> tuple[Callable, Callable]:
    y, sigma = as_tensor(data["y"], dtype), as_tensor(data["sigma"], dtype)
    J = len(y)

    def model() -> None:
        mu = pyro.sample("mu", dist.Normal(as_tensor(0, dtype), 5.0))
        tau = pyro.sample("tau", dist.HalfCauchy(as_tensor(5.0, dtype)))
        with pyro.plate("schools", J):
            theta = pyro.sample("theta", dist.Normal(mu, tau))
            pyro.sample("y", dist.Normal(theta, sigma), obs=y)

    def columns(s: dict) -> np.ndarray:
        return stack_columns(s["theta"], s["mu"], s["tau"])

    return model, columns


def kidiq(data: dict, dtype: torch.dtype) -> tuple[Callable, Callable]:
    score, iq = as_tensor(data["kid_score"], dtype), as_tensor(data["mom_iq"], dtype)

    def model() -> None:
        beta = pyro.sample("beta", dist.ImproperUniform(constraints.real, (), (2,)))
        sigma = pyro.sample("sigma", dist.HalfCauchy(as_tensor(2.5, dtype)))
        with pyro.plate("data", len(score)):
            pyro.sample("y", dist.Normal(beta[..., 0] + beta[..., 1] * iq, sigma), obs=score)

    def columns(s: dict) -> np.ndarray:
        return stack_columns(s["beta"], s["sigma"])

    return model, columns


def ark(data: dict, dtype: torch.dtype) -> tuple[Callable, Callable]:
    y, K = as_tensor(data["y"], dtype), int(data["K"])
    T = len(y)
    # Lagged design: row t (t = K..T-1) holds y[t-1], ..., y[t-K].
    lags = torch.stack([y[K - k : T - k] for k in range(1, K + 1)], dim=-1)
    target = y[K:]

    def model() -> None:
        alpha = pyro.sample("alpha", dist.Normal(as_tensor(0, dtype), 10.0))
        beta = pyro.sample("beta", dist.Normal(as_tensor(0, dtype), 10.0).expand([K]).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfCauchy(as_tensor(2.5, dtype)))
        # Batch dims of the latents line up with the plate (written to vectorise over particles).
        mean = alpha + (lags * beta).sum(-1)
        with pyro.plate("time", T - K):
            pyro.sample("y", dist.Normal(mean, sigma), obs=target)

    def columns(s: dict) -> np.ndarray:
        return stack_columns(s["alpha"], s["beta"], s["sigma"])

    return model, columns


def sblrc(data: dict, dtype: torch.dtype) -> tuple[Callable, Callable]:
    X, y = as_tensor(data["X"], dtype), as_tensor(data["y"], dtype)
    D = X.shape[1]

    def model() -> None:
        beta = pyro.sample("beta", dist.Normal(as_tensor(0, dtype), 10.0).expand([D]).to_event(1))
        sigma = pyro.sample("sigma", dist.HalfNormal(as_tensor(10.0, dtype)))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal((X * beta).sum(-1), sigma), obs=y)

    def columns(s: dict) -> np.ndarray:
        return stack_columns(s["beta"], s["sigma"])

    return model, columns


def garch11(data: dict, dtype: torch.dtype) -> tuple[Callable, Callable]:
    y, sigma1 = as_tensor(data["y"], dtype), float(data["sigma1"])
    T = len(y)

    def model() -> None:
        mu = pyro.sample("mu", dist.ImproperUniform(constraints.real, (), ()))
        alpha0 = pyro.sample("alpha0", dist.ImproperUniform(constraints.positive, (), ()))
        alpha1 = pyro.sample("alpha1", dist.Uniform(as_tensor(0, dtype), 1.0))
        # 0 < beta1 < 1 - alpha1: uniform on the allowed interval (the flat prior restricted),
        # with the Jacobian of the rescaling kept so the joint prior stays flat.
        beta1_unit = pyro.sample("beta1_unit", dist.Uniform(as_tensor(0, dtype), 1.0))
        beta1 = pyro.deterministic("beta1", beta1_unit * (1 - alpha1))
        pyro.factor("beta1_jacobian", torch.log1p(-alpha1))
        sig2 = [torch.full_like(mu, sigma1**2)]
        for t in range(1, T):
            sig2.append(alpha0 + alpha1 * (y[t - 1] - mu) ** 2 + beta1 * sig2[-1])
        sigma = torch.stack(sig2, dim=-1).sqrt()
        if mu.dim() > 0:  # vectorised over particles: mu has shape (..., 1), the plate's dim
            sigma = sigma.squeeze(-2)
        with pyro.plate("time", T):
            pyro.sample("y", dist.Normal(mu, sigma), obs=y)

    def columns(s: dict) -> np.ndarray:
        return stack_columns(s["mu"], s["alpha0"], s["alpha1"], s["beta1_unit"] * (1 - s["alpha1"]))

    return model, columns


def diamonds(data: dict, dtype: torch.dtype) -> tuple[Callable, Callable]:
    X, Y = as_tensor(data["X"], dtype), as_tensor(data["Y"], dtype)
    Xc = X[:, 1:] - X[:, 1:].mean(0)
    K = Xc.shape[1]

    def model() -> None:
        b = pyro.sample("b", dist.Normal(as_tensor(0, dtype), 1.0).expand([K]).to_event(1))
        intercept = pyro.sample("Intercept", dist.StudentT(3.0, as_tensor(8.0, dtype), 10.0))
        # HalfStudentT(3, 0, 10): |StudentT| folded at 0.
        sigma = pyro.sample(
            "sigma", dist.FoldedDistribution(dist.StudentT(3.0, as_tensor(0.0, dtype), 10.0))
        )
        with pyro.plate("data", len(Y)):
            mean = intercept + (Xc * b).sum(-1)
            pyro.sample("Y", dist.Normal(mean, sigma), obs=Y)

    def columns(s: dict) -> np.ndarray:
        return stack_columns(s["b"], s["Intercept"], s["sigma"])

    return model, columns


MODELS: dict[str, ModelFactory] = {
    "eight_schools-eight_schools_noncentered": eight_schools_noncentered,
    "eight_schools-eight_schools_centered": eight_schools_centered,
    "kidiq-kidscore_momiq": kidiq,
    "arK-arK": ark,
    "sblrc-blr": sblrc,
    "garch-garch11": garch11,
    "diamonds-diamonds": diamonds,
    **MORE_MODELS,  # the regressions and hidden Markov models
    **ODE_MODELS,  # the two ODE models (torchdiffeq)
}
