"""AutoAmortizedFlow: a known local posterior, subsampling, errors at construction."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam, ClippedAdam
from torch import nn

from pyroflows.infer import AutoAmortizedFlow

N = 200
X = torch.randn(N, 1, generator=torch.Generator().manual_seed(0)) * 2.0


def local_model(x: torch.Tensor, subsample: int | None = None) -> None:
    # z_i ~ N(0, 1), x_i | z_i ~ N(z_i, 1): z_i | x_i ~ N(x_i / 2, 1/2) exactly.
    with pyro.plate("data", len(x), subsample_size=subsample) as idx:
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x[idx, 0])


@pytest.fixture(autouse=True)
def _clean() -> None:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)


@pytest.mark.slow
def test_amortized_posterior_known_answer_with_subsampling():
    encoder = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 4))
    guide = AutoAmortizedFlow(
        local_model, encoder, model_args=(X, 50), transforms=1, hidden=(16, 16)
    )
    svi = SVI(local_model, guide, ClippedAdam({"lr": 1e-2, "lrd": 0.998}), Trace_ELBO())
    for _ in range(1500):
        svi.step(X, 50)
    x_test = torch.tensor([[-3.0], [0.0], [2.0]])
    samples = guide.sample_posterior(x_test, 4000)["z"]
    assert samples.shape == (4000, 3)
    assert torch.allclose(samples.mean(0), x_test[:, 0] / 2, atol=0.15)
    assert torch.allclose(samples.std(0), torch.full((3,), math.sqrt(0.5)), atol=0.1)


def test_plate_and_subsample_shapes():
    encoder = nn.Linear(1, 3)
    guide = AutoAmortizedFlow(local_model, encoder, model_args=(X, 32), transforms=1, hidden=(8, 8))
    trace = pyro.poutine.trace(guide).get_trace(X, 32)
    assert trace.nodes["z"]["value"].shape == (32,)
    idx = trace.nodes["data"]["value"]
    assert idx.shape == (32,)
    # The model replays the guide's subsample.
    model_trace = pyro.poutine.trace(pyro.poutine.replay(local_model, trace=trace)).get_trace(X, 32)
    assert torch.equal(model_trace.nodes["x"]["value"], X[idx, 0])
    svi = SVI(local_model, guide, Adam({"lr": 1e-2}), Trace_ELBO())
    assert math.isfinite(svi.step(X, 32))


def test_event_dim_local_latents():
    def model(x: torch.Tensor) -> None:
        with pyro.plate("data", len(x), subsample_size=16) as idx:
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z.sum(-1), s), obs=x[idx, 0])

    guide = AutoAmortizedFlow(model, nn.Linear(1, 4), model_args=(X,), transforms=1, hidden=(8, 8))
    assert guide.latent_dim == 3
    out = guide(X)
    assert out["z"].shape == (16, 2) and out["s"].shape == (16,) and (out["s"] > 0).all()
    svi = SVI(model, guide, Adam({"lr": 1e-2}), Trace_ELBO())
    assert math.isfinite(svi.step(X))


def test_errors_at_construction():
    import pyroflows

    with pytest.raises(ValueError, match="context"):
        flow = pyroflows.flows.build("maf", 1, context=5, transforms=1, hidden=(8, 8))
        AutoAmortizedFlow(local_model, nn.Linear(1, 3), flow=flow, model_args=(X,))
    with pytest.raises(ValueError, match="unknown flow"):
        AutoAmortizedFlow(local_model, nn.Linear(1, 3), flow="nope", model_args=(X,))
    with pytest.raises(ValueError, match=r"\(B, C\)"):
        AutoAmortizedFlow(local_model, nn.Flatten(0), model_args=(X,))

    def global_model(x: torch.Tensor) -> None:
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(mu, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[:, 0])

    with pytest.raises(ValueError, match="outside the plate"):
        AutoAmortizedFlow(global_model, nn.Linear(1, 3), model_args=(X,))
    with pytest.raises(TypeError, match="nn.Module"):
        AutoAmortizedFlow(local_model, lambda x: x, model_args=(X,))
