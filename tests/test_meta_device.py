"""Device hygiene without a GPU: the computation runs with torch's default device set to
``meta``, so a tensor created without following its inputs (``torch.zeros(n)`` where
``torch.zeros(n, device=x.device)`` was meant) is a meta tensor, and the first operation that
mixes it with the CPU data fails loudly. On a GPU the same slip silently allocates on the CPU
(or fails far from its cause).

Modules are built before, with the default device as usual (a module's constructor follows
torch's default device, as ``nn.Linear``'s does); what runs under ``meta`` is what a user's
training or inference step runs, including the parts built lazily from the data (a guide's
first call, a deep destructor's layers).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from test_registry_properties import protocol_model

import pyroflows
from pyroflows import REGISTRY
from pyroflows.infer import (
    AutoAmortizedFlow,
    AutoFlow,
    AutoMeanFieldFlow,
    adaptive_importance,
    annealed_importance,
    fit,
    importance,
    posterior_predictive,
    rejection_sample,
    to_inference_data,
)
from pyroflows.infer.sampling.ratio import density_ratio
from pyroflows.rl import FlowPolicy

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="meta default device")


@contextmanager
def default_device_meta() -> Iterator[None]:
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def _adam_steps_under_meta() -> bool:
    """Whether torch's own Adam steps a CPU parameter with the default device set to meta:
    torch 2.11's Adam keeps its step counter on the default device (2.13's on the CPU)."""
    p = torch.zeros(2, device="cpu", requires_grad=True)
    p.grad = torch.ones(2, device="cpu")
    optimizer = torch.optim.Adam([p])
    with default_device_meta():
        try:
            optimizer.step()
        except (RuntimeError, NotImplementedError):
            return False
    return True


# The tests that train: they hold our code to the default device only where torch's does.
trains_with_adam = pytest.mark.skipif(
    not _adam_steps_under_meta(),
    reason="this torch's Adam allocates its step counter on the default device",
)


def on_cpu(*tensors: torch.Tensor) -> bool:
    return all(t.device.type == "cpu" for t in tensors)


@pytest.fixture(autouse=True)
def _clean() -> None:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)


def entry_id(entry) -> str:  # noqa: ANN001
    return f"{entry.family}-{entry.name}"


@pytest.mark.parametrize("entry", REGISTRY.entries(), ids=entry_id)
def test_registry_models_compute_on_their_own_device(entry):  # noqa: ANN001
    model = protocol_model(entry, 0).double()
    x = model().sample((4,))
    with default_device_meta():
        d = model()
        lp, y = d.log_prob(x), d.sample((3,))
    assert on_cpu(lp, y) and torch.isfinite(lp).all()


@pytest.mark.filterwarnings("ignore:the maximum of log p - log q lies on the edge")
@trains_with_adam
def test_fit_and_samplers_follow_the_data():
    flow = pyroflows.flows.build("maf", 2, transforms=1, hidden=(8,)).double()
    data = torch.randn(200, 2, dtype=torch.float64)
    weights = torch.rand(200, dtype=torch.float64)

    def log_p(z: torch.Tensor) -> torch.Tensor:
        return -0.5 * (z**2).sum(-1)

    q = dist.MultivariateNormal(torch.zeros(2, dtype=torch.float64), torch.eye(2).double())
    wide = dist.Normal(q.loc, 1.0).to_event(1)
    with default_device_meta():
        result = fit(flow, data, epochs=2, weights=weights, progress=False)
        r = importance(log_p, flow, 500, seed=0, warn=False)
        s = rejection_sample(log_p, flow, 50, seed=0)
        a = adaptive_importance(log_p, flow, 500, rounds=1, fit_options={"epochs": 1}, seed=0)
        smc = [
            annealed_importance(log_p, proposal, 100, seed=0, final_moves=1, warn=False)
            for proposal in (flow, q, wide)  # moves in the base space and in the data space
        ]
    assert math.isfinite(result.best_val_loglik) and on_cpu(r.log_weights, a.result.log_weights)
    assert all(on_cpu(t.samples, t.log_weights, t.ancestors) for t in smc)
    assert on_cpu(s.samples if hasattr(s, "samples") else s)


@trains_with_adam
def test_density_ratio_follows_the_data():
    a = torch.randn(300, 2, dtype=torch.float64)
    b = torch.randn(300, 2, dtype=torch.float64) + 0.5
    with default_device_meta():
        ratio = density_ratio(a, b, flow="maf", fit_options={"epochs": 1})
        log_ratio = ratio.log_ratio(a)
    assert on_cpu(ratio.log_weights, log_ratio) and torch.isfinite(log_ratio).all()


DESTRUCTOR_OPTIONS = {
    "deep": {"layer": "copula", "max_layers": 2, "layer_options": {"bins": 8}, "progress": False},
    "tree": {"max_leaves": 4, "min_leaf": 10},
    "mixture": {"components": 2},
}


@pytest.mark.parametrize("name", pyroflows.destructors.available())
def test_destructor_fits_follow_the_data(name):
    destructor = pyroflows.destructors.build(name, 2, **DESTRUCTOR_OPTIONS.get(name, {}))
    g = torch.Generator().manual_seed(0)
    x = 0.05 + 0.9 * torch.rand(300, 2, generator=g, dtype=torch.float64)
    with default_device_meta():
        destructor.fit(x)
        lp, u = destructor.log_prob(x), destructor.to_uniform(x)
    assert on_cpu(lp, u) and torch.isfinite(lp).all()


@pytest.mark.parametrize("rotation", ["random", "pca"])
def test_deep_destructor_with_rotations_follows_the_data(rotation):
    deep = pyroflows.destructors.DeepDestructor(
        2,
        layer="histogram",
        max_layers=2,
        rotation=rotation,
        layer_options={"bins": 8},
        progress=False,
    )
    x = torch.randn(300, 2, dtype=torch.float64)
    with default_device_meta():
        lp = deep.fit(x).log_prob(x)
    assert on_cpu(lp) and torch.isfinite(lp).all()


def logistic(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    w = pyro.sample(
        "w", dist.Normal(torch.zeros(3, dtype=x.dtype, device=x.device), 1.0).to_event(1)
    )
    s = pyro.sample("s", dist.LogNormal(torch.zeros((), dtype=x.dtype, device=x.device), 1.0))
    with pyro.plate("rows", x.shape[0]):
        pyro.sample("y", dist.Bernoulli(logits=x @ w * s), obs=y)


@trains_with_adam
@pytest.mark.parametrize("guide_class", [AutoFlow, AutoMeanFieldFlow])
def test_guides_train_and_summarise_on_the_data_device(guide_class):
    x = torch.randn(40, 3, dtype=torch.float64)
    y = torch.bernoulli(torch.sigmoid(x.sum(-1)))
    guide = guide_class(logistic, transforms=1, hidden=(8,), progress=False)
    svi = pyro.infer.SVI(logistic, guide, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO())
    with default_device_meta():
        losses = [svi.step(x, y) for _ in range(2)]  # the first call builds the guide
        r = importance(logistic, guide, 200, model_args=(x, y), seed=0, warn=False)
        idata = to_inference_data(guide, logistic, 20, x, y)
        draws = posterior_predictive(logistic, guide, 20, x)
        median = guide.median(x, y)
    assert all(math.isfinite(v) for v in losses) and on_cpu(r.log_weights, draws["y"])
    assert np.isfinite(idata.posterior["w"].values).all() and on_cpu(*median.values())


@trains_with_adam
def test_amortized_guide_on_the_data_device():
    def model(x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=x.dtype, device=x.device), 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[:, 0])

    x = torch.randn(30, 1, dtype=torch.float64)
    guide = AutoAmortizedFlow(model, torch.nn.Linear(1, 2).double(), transforms=1, hidden=(8,))
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), pyro.infer.Trace_ELBO())
    with default_device_meta():
        loss = svi.step(x)
    assert math.isfinite(loss)


def test_policy_acts_on_its_device():
    policy = FlowPolicy(3, 2, -1.0, 1.0, hidden=(8,))
    obs = torch.randn(4, 3)
    with default_device_meta():
        action, log_prob = policy(obs).rsample_and_log_prob()
        act = policy.act(np.zeros(3, dtype=np.float32))
    assert on_cpu(action, log_prob) and np.isfinite(act).all()
