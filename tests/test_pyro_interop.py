"""pyroflows transforms inside plain Pyro: AutoNormalizingFlow, SVI, plates, dtypes."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormalizingFlow
from pyro.optim import ClippedAdam

from pyroflows.flows import build


def conjugate_model(data: torch.Tensor) -> None:
    """mu ~ N(0, 1), x_i ~ N(mu, 1): the posterior is N(sum(x) / (n + 1), 1 / (n + 1))."""
    mu = pyro.sample("mu", dist.Normal(torch.zeros(2, dtype=data.dtype), 1.0).to_event(1))
    with pyro.plate("data", len(data)):
        pyro.sample("x", dist.Normal(mu, 1.0).to_event(1), obs=data)


@pytest.mark.parametrize("name", ["iaf", "nsf-coupling"])
def test_auto_normalizing_flow_recovers_a_conjugate_posterior(name):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    data = torch.randn(9, 2, generator=torch.Generator().manual_seed(0)) + torch.tensor([1.0, -2.0])
    guide = AutoNormalizingFlow(
        conjugate_model, lambda dim: build(name, dim, transforms=2, hidden=(16, 16)).bijection
    )
    # A decaying step size, so the last iterate is not dominated by SGD noise; the particles
    # in one vectorised pass (the flows broadcast over the particle dim, as Pyro's do).
    elbo = Trace_ELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(conjugate_model, guide, ClippedAdam({"lr": 2e-2, "lrd": 0.993}), elbo)
    for _ in range(600):
        svi.step(data)
    samples = guide.get_posterior().sample((4000,))
    exact_mean, exact_sd = data.sum(0) / 10, (1 / 10) ** 0.5
    assert (samples.mean(0) - exact_mean).abs().max() < 0.05
    assert (samples.std(0) / exact_sd - 1).abs().max() < 0.1
    # The flow's parameters are in Pyro's param store, so SVI trained them.
    assert any("transform" in key for key in pyro.get_param_store().keys())


def test_flow_as_a_prior_inside_a_plate_expands():
    flow = build("maf", 2, transforms=1, hidden=(8,))

    def model() -> torch.Tensor:
        with pyro.plate("items", 5):
            return pyro.sample("z", flow())

    trace = pyro.poutine.trace(model).get_trace()
    site = trace.nodes["z"]
    assert site["value"].shape == (5, 2)
    assert site["fn"].batch_shape == (5,)
    assert torch.allclose(site["fn"].log_prob(site["value"]), flow().log_prob(site["value"]))


def test_float64_flow_gives_float64_everywhere():
    flow = build("nsf", 3, transforms=1, hidden=(8,)).double()
    d = flow()
    x, lp = d.rsample_and_log_prob((4,))
    assert x.dtype == torch.float64 and lp.dtype == torch.float64
    assert d.log_prob(x).dtype == torch.float64
