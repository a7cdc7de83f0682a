"""VariationalEM: a 2-D Gaussian mixture (enumerated assignments, a flow posterior over a latent
scale) and factor analysis (amortized flow over the factors, loadings by M-steps)."""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import config_enumerate
from torch import nn

from pyroflows.infer import AutoAmortizedFlow, AutoFlow, VariationalEM
from pyroflows.infer.guides.em import ConvergenceWarning

TRUE_LOCS = torch.tensor([[-3.0, 0.0], [3.0, 1.0]])
TRUE_SCALE = 0.7


def mixture_data(n: int = 300) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    k = torch.arange(n) % 2
    return TRUE_LOCS[k] + TRUE_SCALE * torch.randn(n, 2, generator=g)


def mixture_model(x: torch.Tensor) -> None:
    locs = pyro.param("locs", lambda: torch.randn(2, 2))
    weights = pyro.param("weights", torch.ones(2) / 2, constraint=constraints.simplex)
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        k = pyro.sample("k", dist.Categorical(weights))
        pyro.sample("x", dist.Normal(locs[k], scale).to_event(1), obs=x)


@pytest.fixture(autouse=True)
def _clean() -> None:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)


@pytest.mark.slow
def test_mixture_recovers_means_and_scale():
    x = mixture_data()
    em = VariationalEM(
        mixture_model,
        lambda m: AutoFlow(m, model_args=(x,), transforms=1, hidden=(8, 8)),
        n_init=2,
        max_iter=40,
        e_steps=10,
        m_steps=10,
        lr=5e-2,
        tol=1e-4,
        random_state=0,
        progress=False,
    )
    em.fit(x)
    locs = em.params_["locs"]
    order = locs[:, 0].argsort()
    assert torch.allclose(locs[order], TRUE_LOCS, atol=0.2)
    assert torch.allclose(em.params_["weights"], torch.full((2,), 0.5), atol=0.08)
    scale = em.guide_.median()["scale"]
    assert abs(float(scale) - TRUE_SCALE) < 0.1
    assert em.n_iter_ >= 1 and isinstance(em.converged_, bool)
    assert math.isfinite(em.lower_bound_)
    assert {h["init"] for h in em.history_} == {0, 1}
    assert set(em.history_[0]) == {"init", "iteration", "lower_bound", "moving_average", "seconds"}


def factor_model(x: torch.Tensor) -> None:
    d, k = x.shape[1], 2
    W = pyro.param("W", lambda: torch.randn(d, k))
    psi = pyro.param("psi", 0.1 * torch.ones(d), constraint=constraints.positive)
    with pyro.plate("data", len(x), subsample_size=200) as idx:
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([k]).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T, psi.sqrt()).to_event(1), obs=x[idx])


def principal_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    qa, _ = torch.linalg.qr(a)
    qb, _ = torch.linalg.qr(b)
    return torch.linalg.svdvals(qa.T @ qb)


@pytest.mark.slow
def test_factor_analysis_recovers_loading_subspace():
    g = torch.Generator().manual_seed(1)
    W_true = torch.randn(6, 2, generator=g)
    z = torch.randn(400, 2, generator=g)
    x = z @ W_true.T + 0.3 * torch.randn(400, 6, generator=g)
    encoder = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 4))
    guide = AutoAmortizedFlow(factor_model, encoder, model_args=(x,), transforms=1, hidden=(16, 16))
    em = VariationalEM(
        factor_model,
        guide,
        max_iter=50,
        e_steps=10,
        m_steps=10,
        lr=5e-2,
        tol=0.0,
        random_state=0,
        progress=False,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        em.fit(x)
    cosines = principal_cosines(em.params_["W"], W_true)
    assert cosines.min() > 0.98


def test_argument_checks_and_discrete_default_loss():
    x = mixture_data(20)
    with pytest.raises(ValueError, match="n_init > 1"):
        VariationalEM(
            mixture_model, AutoFlow(config_enumerate(mixture_model), model_args=(x,)), n_init=2
        )
    with pytest.raises(ValueError, match="max_iter"):
        VariationalEM(mixture_model, lambda m: m, max_iter=0)
    em = VariationalEM(
        mixture_model,
        lambda m: AutoFlow(m, model_args=(x,), transforms=1, hidden=(4, 4)),
        max_iter=2,
        e_steps=1,
        m_steps=1,
        progress=False,
    )
    loss, _ = em._loss_and_model((x,), {})
    assert type(loss).__name__ == "TraceEnum_ELBO"
    with pytest.warns(ConvergenceWarning):
        em.fit(x)
    assert em.n_iter_ == 2 and not em.converged_
