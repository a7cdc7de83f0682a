"""The flow guides' structure (prototype trace, plates, guide lists, log-density), built with
Pyro's public API only: Pyro's protected autoguide hooks may change in any release."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoContinuous, AutoGuide, AutoGuideList
from pyro.optim import Adam
from torch import nn

import pyroflows
from pyroflows.infer import AutoAmortizedFlow, AutoFlow, AutoMeanFieldFlow

SMALL = {"transforms": 1, "hidden": (8, 8)}
Y = torch.tensor([1.3, 2.1, 0.4, 1.9, 2.7, 1.1, 0.8, 1.6], dtype=torch.float64)
PRIOR_SD, NOISE_SD = 10.0, 2.0
X = torch.randn(40, 1, generator=torch.Generator().manual_seed(0))
#: Pyro's protected autoguide hooks, none of which the flow guides may use.
PYRO_HOOKS = (
    "_setup_prototype",
    "_create_plates",
    "_unpack_latent",
    "_loc_scale",
    "_init_loc",
    "_prototype_hide_fn",
)


def conjugate_model(y: torch.Tensor = Y) -> None:
    mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), PRIOR_SD))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, NOISE_SD), obs=y)


def hierarchical_model(x: torch.Tensor = X, subsample: int | None = None) -> None:
    """A global ``a`` and local ``z_i`` in a (sub)sampled data plate."""
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x), subsample_size=subsample) as idx:
        z = pyro.sample("z", dist.Normal(a, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x[idx, 0])


@pytest.fixture(autouse=True)
def _clean() -> None:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)


def test_guides_override_no_protected_pyro_attribute():
    for cls, base in (
        (AutoFlow, AutoContinuous),
        (AutoMeanFieldFlow, AutoContinuous),
        (AutoAmortizedFlow, AutoGuide),
    ):
        for klass in cls.__mro__[: cls.__mro__.index(base)]:
            mine = {n for n in vars(klass) if n.startswith("_") and not n.startswith("__")}
            assert not mine & set(dir(base)), (klass.__name__, mine & set(dir(base)))


def test_guides_work_without_pyro_protected_hooks(monkeypatch):
    def forbidden(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a Pyro protected hook was used")

    for cls in (AutoGuide, AutoContinuous):
        for name in PYRO_HOOKS:
            if name in vars(cls):
                monkeypatch.setattr(cls, name, staticmethod(forbidden))
    for guide in (
        AutoFlow(hierarchical_model, **SMALL),
        AutoMeanFieldFlow(hierarchical_model, **SMALL),
    ):
        assert math.isfinite(
            SVI(hierarchical_model, guide, Adam({"lr": 1e-2}), Trace_ELBO()).step()
        )
        out = Predictive(hierarchical_model, guide=guide, num_samples=3)()
        assert out["z"].shape == (3, 40)
        assert guide.median()["z"].shape == (40,) and guide.quantiles([0.5])["a"].shape == (1,)
    amortized = AutoAmortizedFlow(
        poutine.block(hierarchical_model, hide=["a"]), nn.Linear(1, 2), model_args=(X, 8), **SMALL
    )
    assert amortized(X, 8)["z"].shape == (8,)


def test_vectorized_particles_and_parallel_predictive_with_local_latents():
    guide = AutoFlow(hierarchical_model, **SMALL)
    elbo = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    assert math.isfinite(SVI(hierarchical_model, guide, Adam({"lr": 1e-2}), elbo).step())
    out = Predictive(hierarchical_model, guide=guide, num_samples=5, parallel=True)()
    # Pyro's convention (as AutoDiagonalNormal): a global site keeps the model's plate dim.
    assert out["z"].shape == (5, 40) and out["a"].shape == (5, 1)
    trace = poutine.trace(guide).get_trace()
    assert trace.nodes["z"]["value"].shape == (40,)
    assert [f.name for f in trace.nodes["z"]["cond_indep_stack"]] == ["data"]


def test_auto_guide_list_shares_the_master_plates():
    """An AutoFlow for the global site and an amortized flow for the local ones in one
    AutoGuideList: both enter the list's (subsampled) plate and keep their own parameters."""
    guide = AutoGuideList(hierarchical_model)
    guide.append(
        AutoFlow(poutine.block(hierarchical_model, hide=["z"]), model_args=(X, 8), **SMALL)
    )
    guide.append(
        AutoAmortizedFlow(
            poutine.block(hierarchical_model, hide=["a"]),
            nn.Linear(1, 2),
            model_args=(X, 8),
            **SMALL,
        )
    )
    trace = poutine.trace(guide).get_trace(X, 8)
    assert trace.nodes["z"]["value"].shape == (8,) and trace.nodes["a"]["value"].shape == ()
    assert guide[1].plates is guide.plates
    assert "_AutoGuideList.0_latent" in trace.nodes
    svi = SVI(hierarchical_model, guide, Adam({"lr": 1e-2}), Trace_ELBO())
    assert math.isfinite(svi.step(X, 8))
    keys = set(pyro.get_param_store().keys())
    assert any(k.startswith("AutoGuideList.0.flow$$$") for k in keys)
    assert any(k.startswith("AutoGuideList.1.flow$$$") for k in keys)


def test_create_plates_sets_the_subsample():
    idx = torch.tensor([3, 1, 4, 15, 9, 26, 5, 35])

    def create_plates(x: torch.Tensor, subsample: int | None = None) -> pyro.plate:
        return pyro.plate("data", len(x), subsample=idx)

    block = poutine.block(hierarchical_model, hide=["a"])
    for guide in (
        AutoAmortizedFlow(
            block, nn.Linear(1, 2), model_args=(X, 8), create_plates=create_plates, **SMALL
        ),
        AutoFlow(hierarchical_model, model_args=(X, 8), create_plates=create_plates, **SMALL),
    ):
        trace = poutine.trace(guide).get_trace(X, 8)
        assert torch.equal(trace.nodes["data"]["value"], idx)


def test_sequential_plates_and_failed_builds():
    def sequential() -> None:
        for i in pyro.plate("seq", 3):
            pyro.sample(f"x{i}", dist.Normal(0.0, 1.0))

    with pytest.raises(NotImplementedError, match="sequential"):
        AutoFlow(sequential, **SMALL)

    def needs_data(y: torch.Tensor) -> None:
        conjugate_model(y)

    lazy = AutoFlow(needs_data, flow=pyroflows.flows.build("maf", 5))
    with pytest.raises(ValueError, match="features"):
        lazy(Y)
    assert lazy.prototype_trace is None  # a failed build leaves the guide unbuilt


def test_log_density_matches_model():
    guide = AutoFlow(conjugate_model, **SMALL)
    u = torch.tensor([[0.3], [1.2]], dtype=torch.float64)
    expected = torch.stack(
        [
            dist.Normal(0, PRIOR_SD).log_prob(m) + dist.Normal(m, NOISE_SD).log_prob(Y).sum()
            for m in u[:, 0]
        ]
    )
    assert torch.allclose(guide.log_density(u), expected)


def test_plate_free_model_log_density_is_vectorised():
    """A model without plates (nesting 0) evaluates all points in one particle-plate run."""
    calls = []

    def model() -> None:
        calls.append(1)
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.LogNormal(a, 1.0))

    guide = AutoFlow(model, init="loc", **SMALL)
    calls.clear()
    u = torch.randn(5, 2)
    out = guide.log_density(u)
    assert len(calls) == 1 and guide._density.vectorize
    b = u[:, 1].exp()
    expected = (
        dist.Normal(0.0, 1.0).log_prob(u[:, 0]) + dist.LogNormal(u[:, 0], 1.0).log_prob(b) + u[:, 1]
    )
    assert torch.allclose(out, expected, atol=1e-5)
