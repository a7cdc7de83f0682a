"""Inference failures: every bad input a clear error, every interrupted loop a consistent state.

Importance sampling with one draw and with a perfect proposal, ``model_args`` that is not a
tuple, discrete sites a flow guide cannot model, an ``init_scale`` the dtype cannot resolve,
KeyboardInterrupt in variational EM and adaptive importance sampling, NaN data.
"""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO, TraceEnum_ELBO
from pyro.optim import Adam
from torch import nn

import pyroflows
from pyroflows.infer import (
    AutoAmortizedFlow,
    AutoFlow,
    AutoMeanFieldFlow,
    ModelTarget,
    VariationalEM,
    adaptive_importance,
    importance,
    rejection_sample,
)
from pyroflows.infer.guides.initialization import INIT_SCALE_ULPS
from pyroflows.infer.sampling import adaptive as adaptive_module
from pyroflows.infer.sampling.psis import psis

SMALL = {"transforms": 1, "hidden": (8, 8)}


@pytest.fixture(autouse=True)
def _clean() -> None:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)


def std_normal_log_p(x: torch.Tensor) -> torch.Tensor:
    return dist.Normal(0.0, 1.0).log_prob(x).sum(-1)


def std_normal(d: int = 2, dtype: torch.dtype = torch.float64) -> dist.Distribution:
    return dist.Normal(torch.zeros(d, dtype=dtype), 1.0).to_event(1)


def gaussian_model() -> None:
    pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))


# -- 1. one draw -----------------------------------------------------------------------------------


def test_one_draw_gives_a_result_with_unknown_reliability():
    """Made to work (it crashed inside ArviZ): log Z from one draw, SE and k-hat unknown."""
    with pytest.warns(UserWarning, match="too few draws"):
        r = importance(std_normal_log_p, std_normal(), 1, seed=0)
    assert r.num_samples == 1 and r.khat == math.inf and not r.reliable
    assert r.log_evidence == pytest.approx(0.0, abs=1e-12)  # the proposal is the target
    assert r.log_evidence_se == math.inf and r.ess == 1.0
    # One nonzero weight among many (every other target NaN) is the same case.
    smoothed, khat = psis(torch.tensor([-math.inf] * 99 + [0.3], dtype=torch.float64))
    assert khat == math.inf and smoothed[-1] == 0 and torch.isneginf(smoothed[:-1]).all()


# -- 2. a perfect proposal --------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["log_density", "model"])
def test_a_perfect_proposal_has_khat_minus_inf_and_no_warning(target):
    """Equal weights have no tail: k-hat = -inf (it was inf, with a heavy-tail warning)."""
    target_fn = std_normal_log_p if target == "log_density" else gaussian_model
    q = std_normal(dtype=torch.float64 if target == "log_density" else torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = importance(target_fn, q, 1000, seed=0)
    assert r.khat == -math.inf and r.reliable
    assert r.ess == pytest.approx(1000.0)
    assert torch.allclose(r.pareto_weights.double(), torch.full((1000,), 1e-3, dtype=torch.float64))


# -- 3. model_args must be a tuple ---------------------------------------------------------------------


def local_model(x: torch.Tensor) -> None:
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def test_model_args_that_is_not_a_tuple_is_a_type_error():
    x = torch.zeros(3)
    calls = {
        "importance": lambda **a: importance(local_model, std_normal(3, torch.float32), 10, **a),
        "rejection": lambda **a: rejection_sample(
            local_model, std_normal(3, torch.float32), 1, **a
        ),
        "adaptive": lambda **a: adaptive_importance(
            local_model, pyroflows.flows.build("maf", 3), 10, **a
        ),
        "AutoFlow": lambda **a: AutoFlow(local_model, **a, **SMALL),
        "AutoMeanFieldFlow": lambda **a: AutoMeanFieldFlow(local_model, **a, **SMALL),
        "AutoAmortizedFlow": lambda **a: AutoAmortizedFlow(local_model, nn.Linear(1, 2), **a),
        "ModelTarget": lambda **a: ModelTarget(local_model, **a),
    }
    for name, call in calls.items():
        for bad in (3, x):  # a tensor would have been split into its rows
            with pytest.raises(TypeError, match="model_args must be a tuple"):
                call(model_args=bad)
        with pytest.raises(TypeError, match="model_kwargs must be a dict"):
            call(model_args=(x,), model_kwargs=[("x", x)])
        assert name  # every entry point checked


# -- 4. discrete sites ------------------------------------------------------------------------------


def mixture(enumerate_k: bool):  # noqa: ANN201
    infer = {"enumerate": "parallel"} if enumerate_k else {}

    def model(x: torch.Tensor) -> None:
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            k = pyro.sample("k", dist.Bernoulli(0.5), infer=infer)
            pyro.sample("x", dist.Normal(z + 2 * k - 1, scale), obs=x)

    return model


def local_mixture(enumerate_k: bool):  # noqa: ANN201
    infer = {"enumerate": "parallel"} if enumerate_k else {}

    def model(x: torch.Tensor) -> None:
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            k = pyro.sample("k", dist.Bernoulli(0.5), infer=infer)
            pyro.sample("x", dist.Normal(z + 2 * k - 1, 1.0), obs=x[:, 0])

    return model


@pytest.mark.parametrize("kind", ["AutoFlow", "AutoMeanFieldFlow", "AutoAmortizedFlow"])
def test_a_discrete_site_that_is_not_enumerated_is_refused(kind):
    x = torch.randn(6, 1)

    def guide_of(model):  # noqa: ANN001, ANN202
        if kind == "AutoAmortizedFlow":
            return AutoAmortizedFlow(model, nn.Linear(1, 2), model_args=(x,), **SMALL)
        return {"AutoFlow": AutoFlow, "AutoMeanFieldFlow": AutoMeanFieldFlow}[kind](
            model, model_args=(x[:, 0],), **SMALL
        )

    make = local_mixture if kind == "AutoAmortizedFlow" else mixture
    data = x if kind == "AutoAmortizedFlow" else x[:, 0]
    plain = make(False)
    with pytest.raises(ValueError, match=r"'k'.*enumerate.*TraceEnum_ELBO"):
        SVI(plain, guide_of(plain), Adam({"lr": 1e-3}), Trace_ELBO()).step(data)
    # Enumerated, it stays allowed: the ELBO sums it out.
    pyro.clear_param_store()
    enumerated = make(True)
    svi = SVI(
        enumerated, guide_of(enumerated), Adam({"lr": 1e-3}), TraceEnum_ELBO(max_plate_nesting=1)
    )
    assert math.isfinite(svi.step(data))


# -- 5. init_scale and the dtype ---------------------------------------------------------------------


def small_model() -> None:
    z = pyro.sample("z", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
    pyro.sample("x", dist.Normal(z.sum(), s), obs=torch.tensor(2.0))


def inverse_and_forward_log_q(guide: AutoFlow, n: int = 2000) -> tuple[torch.Tensor, ...]:
    posterior = guide.get_posterior()
    x, log_q = posterior.rsample_and_log_prob((n,))
    return x, log_q, posterior.log_prob(x.detach().clone())


@pytest.mark.parametrize("scale", [1e-6, 1e-20])
def test_an_init_scale_float32_cannot_resolve_is_refused(scale):
    """It gave log q through the inverse off by percents (a loss of -3.8e8), NaN at 1e-20."""
    with pytest.raises(ValueError, match=r"init_scale=.*float32.*smallest usable"):
        AutoFlow(small_model, init_scale=scale, init="loc", stl=True)


def test_log_q_through_the_inverse_agrees_at_the_smallest_init_scale():
    limit = INIT_SCALE_ULPS * torch.finfo(torch.float32).eps  # the init point is near 0
    for seed in range(3):
        pyro.clear_param_store()
        torch.manual_seed(seed)
        guide = AutoFlow(small_model, init_scale=1.05 * limit, init="loc", stl=True)
        x, forward, inverse = inverse_and_forward_log_q(guide)
        assert torch.isfinite(x).all()
        assert ((forward - inverse).abs() / forward.abs()).max() < 1e-3
    # float64 resolves far smaller scales.
    torch.set_default_dtype(torch.float64)
    try:
        guide = AutoFlow(small_model, init_scale=1e-6, init="loc", stl=True)
        x, forward, inverse = inverse_and_forward_log_q(guide)
    finally:
        torch.set_default_dtype(torch.float32)
    assert x.dtype == torch.float64
    assert ((forward - inverse).abs() / forward.abs()).max() < 1e-6


# -- 5b. guide initialisation is a transaction ------------------------------------------------------


def two_site_model(x: torch.Tensor) -> None:
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    b = pyro.sample("b", dist.Normal(torch.zeros(2), 1.0).to_event(1))
    with pyro.plate("n", len(x)):
        pyro.sample("x", dist.Normal(a + b.sum(), 1.0), obs=x)


@pytest.mark.parametrize("guide_class", [AutoFlow, AutoMeanFieldFlow])
def test_a_failed_guide_initialisation_leaves_nothing_behind(guide_class):
    """An error inside the guide's first call (here the init_loc_fn at the second site) leaves
    no module and no param-store entry; the next call builds the guide as a fresh one would."""
    x = torch.randn(5)
    fail = {"b": True}

    def init(site: dict) -> torch.Tensor:
        if fail.get(site["name"]):
            fail[site["name"]] = False
            raise RuntimeError("init failed")
        return pyro.infer.autoguide.init_to_median(site)

    guide = guide_class(two_site_model, init_loc_fn=init, **SMALL)
    with pytest.raises(RuntimeError, match="init failed"):
        guide(x)
    assert list(pyro.get_param_store().keys()) == []
    assert list(guide.parameters()) == [] and list(guide.buffers()) == []
    pyro.set_rng_seed(1)
    retried = guide(x)
    pyro.clear_param_store()
    fresh = guide_class(two_site_model, init_loc_fn=init, **SMALL)
    pyro.set_rng_seed(1)
    expected = fresh(x)
    assert retried.keys() == expected.keys() == {"a", "b"}
    assert all(torch.equal(retried[k], expected[k]) for k in expected)


# -- 6. interrupted loops ---------------------------------------------------------------------------


def em_model(x: torch.Tensor) -> None:
    loc = pyro.param("loc", torch.tensor(0.0))
    z = pyro.sample("z", dist.Normal(loc, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def params_now() -> dict[str, torch.Tensor]:
    store = pyro.get_param_store()
    return {k: store[k].detach().clone() for k in store.keys()}


def test_variational_em_interrupted_keeps_the_last_completed_iteration(monkeypatch):
    x = torch.randn(20) + 1.0
    em = VariationalEM(
        em_model, AutoFlow(em_model, model_args=(x,), average=None, **SMALL),
        max_iter=10, e_steps=2, m_steps=2, progress=False,
    )  # fmt: skip
    iterate, seen = VariationalEM._iterate, {}

    def interrupted(self, iteration, *rest):  # noqa: ANN001, ANN002, ANN202
        if iteration == 3:
            seen["after 2"] = params_now()
            iterate(self, iteration, *rest)  # the parameters move, then Ctrl-C
            raise KeyboardInterrupt
        iterate(self, iteration, *rest)

    monkeypatch.setattr(VariationalEM, "_iterate", interrupted)
    with pytest.warns(RuntimeWarning, match="interrupted"):
        em.fit(x)
    assert em.interrupted_ and em.n_iter_ == 2 and not em.converged_
    assert len(em.history_) == 2 and math.isfinite(em.lower_bound_)
    after = params_now()
    assert after.keys() == seen["after 2"].keys()
    assert all(torch.equal(after[k], seen["after 2"][k]) for k in after)
    assert torch.equal(em.params_["loc"], seen["after 2"]["loc"])


def test_variational_em_interrupted_in_its_first_iteration_reraises(monkeypatch):
    x = torch.randn(20)
    em = VariationalEM(
        em_model, AutoFlow(em_model, model_args=(x,), **SMALL), max_iter=3, progress=False
    )
    iterate, seen = VariationalEM._iterate, {}

    def interrupted(self, *args):  # noqa: ANN001, ANN002, ANN202
        seen["before"] = params_now()
        iterate(self, *args)
        raise KeyboardInterrupt

    monkeypatch.setattr(VariationalEM, "_iterate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        em.fit(x)
    after = params_now()
    assert all(torch.equal(after[k], seen["before"][k]) for k in seen["before"])


@pytest.mark.parametrize("how", ["raises", "fit returns interrupted"])
def test_adaptive_importance_interrupted_returns_the_best_completed_round(monkeypatch, how):
    flow = pyroflows.flows.build("maf", 2, transforms=1, hidden=(8,)).double()
    before = {k: v.clone() for k, v in flow.state_dict().items()}

    def fake_fit(model, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)  # a refit that moved the flow, then Ctrl-C
        if how == "raises":
            raise KeyboardInterrupt

        class Outcome:
            interrupted = True

        return Outcome()

    monkeypatch.setattr(adaptive_module, "fit", fake_fit)
    narrow = lambda x: dist.Normal(0.0, 0.3).log_prob(x).sum(-1)  # noqa: E731
    with pytest.warns(RuntimeWarning, match="interrupted"):
        out = adaptive_importance(narrow, flow, 500, rounds=3, khat_goal=-1.0)
    assert out.interrupted and not out.converged and len(out.history) == 1
    assert out.result.num_samples == 500
    assert all(torch.equal(v, before[k]) for k, v in flow.state_dict().items())


# -- 7. NaN data ------------------------------------------------------------------------------------


def test_nan_data_is_named_in_the_error():
    data = torch.tensor([0.1, math.nan, 0.3])
    q = std_normal(3, torch.float32)
    with pytest.raises(ValueError, match=r"no NaN"):  # Pyro's validation catches it first
        importance(local_model, q, 50, model_args=(data,))
    pyro.enable_validation(False)
    try:
        with pytest.raises(ValueError, match=r"NaN .*at all 50 draws.*model_args\[0\]"):
            importance(local_model, q, 50, model_args=(data,))
        with pytest.raises(ValueError, match=r"NaN .*at all 50 draws.*model_kwargs\['x'\]"):
            importance(local_model, q, 50, model_kwargs={"x": data})
    finally:
        pyro.enable_validation(True)
    # A log-density callable that closes over NaN data: no argument to name, a hint instead.
    with pytest.raises(ValueError, match=r"NaN .*at all 50 draws.*data or parameters"):
        importance(lambda x: x.sum(-1) * math.nan, std_normal(), 50)
