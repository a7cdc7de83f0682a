"""to_inference_data: constrained posterior, log weights, PSIS k-hat, ArviZ functions."""

from __future__ import annotations

import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.optim import Adam

from pyroflows.infer import AutoFlow, guide_log_weights, to_inference_data

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import arviz as az

Y = torch.tensor([0.5, 1.5, 1.0, 2.0], dtype=torch.float64)


def model(y: torch.Tensor) -> None:
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=y.dtype), 5.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(torch.tensor(2.0, dtype=y.dtype)))
    with pyro.plate("schools", 3):
        theta = pyro.sample("theta", dist.Normal(mu, sigma))
    pyro.deterministic("theta_mean", theta.mean(-1))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


@pytest.fixture(autouse=True)
def _clean() -> None:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)


def test_inference_data_groups_shapes_and_support():
    guide = AutoFlow(model, model_args=(Y,), transforms=1, hidden=(8, 8))
    svi = SVI(model, guide, Adam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(50):
        svi.step(Y)
    idata = to_inference_data(guide, model, 500, Y)
    post = idata.posterior
    assert post["mu"].shape == (1, 500)
    assert post["theta"].shape == (1, 500, 3)
    assert post["theta_mean"].shape == (1, 500)
    assert (post["sigma"].values > 0).all()  # constrained space
    np.testing.assert_allclose(post["theta_mean"].values, post["theta"].values.mean(-1), rtol=1e-6)
    lw = idata.sample_stats["log_weight"].values
    assert lw.shape == (1, 500) and np.isfinite(lw).all()
    assert np.isfinite(idata.attrs["psis_khat"])
    np.testing.assert_allclose(idata.attrs["elbo"], lw.mean())
    np.testing.assert_allclose(idata.observed_data["y"].values, Y.numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = az.summary(idata, kind="stats")
    assert "mu" in summary.index and "theta[0]" in summary.index


def test_log_weights_are_exact_for_a_known_guide():
    # With the exact posterior as guide, log p(x, z) - log q(z) = log p(x) for every sample.
    def conjugate(y: torch.Tensor) -> None:
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    y = torch.tensor([1.0, 2.0])
    post_var = 1 / 3
    post_mean = post_var * float(y.sum())

    def exact(y: torch.Tensor) -> None:
        pyro.sample("mu", dist.Normal(post_mean, post_var**0.5))

    _, logw = guide_log_weights(conjugate, exact, 100, y)
    evidence = dist.MultivariateNormal(torch.zeros(2), torch.eye(2) + torch.ones(2, 2)).log_prob(y)
    assert torch.allclose(logw, evidence.expand(100), atol=1e-4)


def test_works_with_pyro_guides_too():
    guide = AutoNormal(model)
    guide(Y)
    idata = to_inference_data(guide, model, 100, Y)
    assert idata.posterior["theta"].shape == (1, 100, 3)


def test_rejects_bad_num_samples():
    guide = AutoFlow(model, model_args=(Y,), transforms=1, hidden=(8, 8))
    with pytest.raises(ValueError, match="num_samples"):
        to_inference_data(guide, model, 1, Y)
