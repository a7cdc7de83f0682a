"""AutoFlow and AutoMeanFieldFlow: known answers, dtype/device, ELBO variants, errors."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import (
    SVI,
    JitTrace_ELBO,
    Predictive,
    RenyiELBO,
    Trace_ELBO,
    TraceMeanField_ELBO,
    config_enumerate,
)
from pyro.optim import Adam, ClippedAdam

import pyroflows
from pyroflows.flows.variational import inverse_autoregressive, nsf_iaf
from pyroflows.infer import AutoFlow, AutoMeanFieldFlow
from pyroflows.transforms.affine_spline import AffineSplineMap

SMALL = {"transforms": 1, "hidden": (16, 16)}

# Conjugate model: mu ~ N(0, 10), y_i ~ N(mu, 2), so mu | y ~ N(m, s^2) exactly.
Y = torch.tensor([1.3, 2.1, 0.4, 1.9, 2.7, 1.1, 0.8, 1.6], dtype=torch.float64)
PRIOR_SD, NOISE_SD = 10.0, 2.0
POST_VAR = 1 / (1 / PRIOR_SD**2 + len(Y) / NOISE_SD**2)
POST_MEAN = POST_VAR * float(Y.sum()) / NOISE_SD**2


def conjugate_model(y: torch.Tensor = Y) -> None:
    mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype, device=y.device), PRIOR_SD))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, NOISE_SD), obs=y)


def two_site_model() -> None:
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    pyro.sample("b", dist.LogNormal(a, 0.5).expand([2]).to_event(1))


def fit(guide, model, steps: int, loss=None, lr: float = 5e-3, args=()):  # noqa: ANN001, ANN201
    svi = SVI(model, guide, ClippedAdam({"lr": lr, "lrd": 0.999}), loss or Trace_ELBO())
    for _ in range(steps):
        loss_value = svi.step(*args)
    return loss_value


@pytest.fixture(autouse=True)
def _clean() -> None:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)


def test_conjugate_posterior_known_answer():
    guide = AutoFlow(conjugate_model, **SMALL)
    # A Gaussian posterior: the Laplace start is exact, and training keeps it there.
    assert guide.init_choice == "laplace"
    fit(guide, conjugate_model, 300)
    samples = guide.sample_posterior(8000)["mu"]
    assert samples.shape == (8000,)
    assert abs(float(samples.mean()) - POST_MEAN) < 0.1 * math.sqrt(POST_VAR)
    assert abs(float(samples.std()) / math.sqrt(POST_VAR) - 1) < 0.1
    median = guide.median()["mu"]
    q = guide.quantiles([0.1, 0.9])["mu"]
    assert abs(float(median) - POST_MEAN) < 0.15 * math.sqrt(POST_VAR)
    assert q.shape == (2,) and float(q[0]) < float(median) < float(q[1])
    assert abs(float(q[1] - q[0]) / (2 * 1.2816 * math.sqrt(POST_VAR)) - 1) < 0.15


def test_float64_model_gives_float64_guide():
    guide = AutoFlow(conjugate_model, **SMALL)
    assert all(p.dtype == torch.float64 for p in guide.parameters())
    assert guide.sample_posterior(5)["mu"].dtype == torch.float64
    assert guide()["mu"].dtype == torch.float64
    assert guide.median()["mu"].dtype == torch.float64


def test_float32_model_gives_float32_guide():
    guide = AutoFlow(conjugate_model, model_args=(Y.float(),), **SMALL)
    assert guide()["mu"].dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in guide.parameters())


def test_follows_model_device(device):
    y = Y.to(device)
    guide = AutoFlow(conjugate_model, model_args=(y,), **SMALL)
    assert all(p.device.type == device.type for p in guide.parameters())
    assert guide(y)["mu"].device.type == device.type


def test_built_eagerly_and_lazily():
    guide = AutoFlow(conjugate_model, **SMALL)  # no required arguments: built now
    assert guide.prototype_trace is not None and guide.latent_dim == 1

    def needs_data(y):  # noqa: ANN001, ANN202
        return conjugate_model(y)

    lazy = AutoFlow(needs_data, **SMALL)
    assert lazy.prototype_trace is None
    lazy(Y)
    assert lazy.latent_dim == 1
    eager = AutoFlow(needs_data, model_args=(Y,), **SMALL)
    assert eager.prototype_trace is not None


@pytest.mark.parametrize(
    "loss",
    [
        TraceMeanField_ELBO(),
        RenyiELBO(alpha=0.5, num_particles=4),
        RenyiELBO(alpha=0.0, num_particles=8),  # the importance-weighted (IWAE) bound
        Trace_ELBO(num_particles=4, vectorize_particles=True),
    ],
    ids=["meanfield", "renyi0.5", "iwae", "vectorized"],
)
def test_elbo_variants(loss):
    guide = AutoFlow(conjugate_model, **SMALL)
    value = fit(guide, conjugate_model, 30, loss)
    assert math.isfinite(value)
    samples = guide.sample_posterior(2000)["mu"]
    assert abs(float(samples.mean()) - POST_MEAN) < 0.5 * math.sqrt(POST_VAR)


def test_jit_trace_elbo():
    guide = AutoFlow(two_site_model, **SMALL)
    svi = SVI(two_site_model, guide, Adam({"lr": 1e-2}), JitTrace_ELBO())
    values = [svi.step() for _ in range(20)]
    assert all(math.isfinite(v) for v in values)


def test_predictive_and_deterministic():
    guide = AutoFlow(two_site_model, **SMALL)
    fit(guide, two_site_model, 10)
    out = Predictive(two_site_model, guide=guide, num_samples=7)()
    assert out["a"].shape == (7,) and out["b"].shape == (7, 2)
    assert (out["b"] > 0).all()


def test_param_store_save_load(tmp_path):
    guide = AutoFlow(two_site_model, **SMALL)
    fit(guide, two_site_model, 20, lr=5e-2)
    path = tmp_path / "params.pt"
    pyro.get_param_store().save(path)
    pyro.set_rng_seed(1)
    expected = guide.sample_posterior(50)

    pyro.clear_param_store()
    pyro.set_rng_seed(5)
    fresh = AutoFlow(two_site_model, **SMALL)
    pyro.get_param_store().load(path)
    with torch.no_grad():
        fresh()  # the first call takes the loaded parameters (and their running average)
    pyro.set_rng_seed(1)
    got = fresh.sample_posterior(50)
    for name in expected:
        assert torch.allclose(expected[name], got[name], atol=1e-6)


def test_constrained_sites_and_shapes():
    guide = AutoFlow(two_site_model, **SMALL)
    assert guide.latent_dim == 3
    samples = guide.sample_posterior(100)
    assert samples["a"].shape == (100,) and samples["b"].shape == (100, 2)
    assert (samples["b"] > 0).all()
    q = guide.quantiles([0.25, 0.5, 0.75])
    assert q["b"].shape == (3, 2)


@pytest.mark.parametrize("flow", ["maf", "nsf", "realnvp", "nsf-coupling", "iaf"])
def test_registry_flows(flow):
    guide = AutoFlow(two_site_model, flow=flow, transforms=2, hidden=(8, 8))
    assert math.isfinite(fit(guide, two_site_model, 5))
    # Density-fast layers are used in their sampling-fast orientation.
    body = guide.flow.transforms[1:-1]
    assert all(t.fast_direction != "inverse" for t in body)


def test_flow_object_and_factory():
    flow = pyroflows.flows.build("realnvp", 3, transforms=2, hidden=(8, 8))
    guide = AutoFlow(two_site_model, flow=flow)
    assert math.isfinite(fit(guide, two_site_model, 5))
    guide = AutoFlow(
        two_site_model, flow=lambda d: pyroflows.flows.build("maf", d, transforms=1, hidden=(8, 8))
    )
    assert math.isfinite(fit(guide, two_site_model, 5))


def test_initialisation_from_init_loc_fn_and_init_scale():
    from pyro.infer.autoguide import init_to_value

    guide = AutoFlow(
        two_site_model,
        init="loc",
        init_scale=0.05,
        init_loc_fn=init_to_value(values={"a": torch.tensor(1.5)}),
        **SMALL,
    )
    samples = guide.sample_posterior(4000)
    assert abs(float(samples["a"].mean()) - 1.5) < 0.01
    assert abs(float(samples["a"].std()) - 0.05) < 0.005


def test_laplace_start_on_badly_scaled_regression():
    # y = 100 + 0.5 x + noise with x ~ 100: the posterior of (intercept, slope) is correlated
    # at about -0.99 with scales 100x apart; the Laplace start captures it at once.
    g = torch.Generator().manual_seed(0)
    x = 100 + 15 * torch.randn(200, generator=g, dtype=torch.float64)
    y = 20 + 0.5 * x + 5 * torch.randn(200, generator=g, dtype=torch.float64)

    def model() -> None:
        b = pyro.sample("b", dist.Normal(torch.zeros(2, dtype=torch.float64), 1000.0).to_event(1))
        with pyro.plate("n", len(x)):
            pyro.sample("y", dist.Normal(b[..., 0] + b[..., 1] * x, 5.0), obs=y)

    guide = AutoFlow(model, **SMALL)
    assert guide.init_choice == "laplace"
    X = torch.stack([torch.ones_like(x), x], -1)
    cov = torch.linalg.inv(X.T @ X / 25 + torch.eye(2, dtype=torch.float64) / 1000**2)
    mean = cov @ X.T @ y / 25
    s = guide.sample_posterior(8000)["b"]
    assert ((s.mean(0) - mean).abs() / cov.diagonal().sqrt()).max() < 0.1
    assert ((s.std(0) / cov.diagonal().sqrt()) - 1).abs().max() < 0.1


def test_errors_at_construction():
    def no_latents() -> None:
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=torch.tensor(0.0))

    def only_discrete() -> None:
        pyro.sample("k", dist.Categorical(torch.ones(3)))

    with pytest.raises(ValueError, match="no continuous latent"):
        AutoFlow(no_latents)
    with pytest.raises(ValueError, match="cannot guide the discrete latent site.*'k'"):
        AutoFlow(only_discrete)
    with pytest.raises(ValueError, match="no continuous latent"):
        AutoFlow(config_enumerate(only_discrete))
    with pytest.raises(ValueError, match="unknown flow"):
        AutoFlow(conjugate_model, flow="no-such-flow")
    with pytest.raises(TypeError, match="unknown options"):
        AutoFlow(conjugate_model, bogus=3)
    with pytest.raises(ValueError, match="features"):
        AutoFlow(two_site_model, flow=pyroflows.flows.build("maf", 5))
    with pytest.raises(ValueError, match="init_scale"):
        AutoFlow(conjugate_model, init_scale=-1.0)
    with pytest.raises(ValueError, match="init must be"):
        AutoFlow(conjugate_model, init="median")


def test_discrete_sites_are_left_to_enumeration():
    def model() -> None:
        scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
        k = pyro.sample("k", dist.Categorical(torch.ones(2) / 2), infer={"enumerate": "parallel"})
        pyro.sample("y", dist.Normal(torch.tensor([-1.0, 1.0])[k], scale), obs=torch.tensor(0.9))

    guide = AutoFlow(model, **SMALL)
    assert guide.latent_dim == 1
    assert "k" not in guide()


def test_mean_field_flow():
    guide = AutoMeanFieldFlow(two_site_model, **SMALL)
    assert [f.features for f in guide.flows] == [1, 2]
    value = fit(guide, two_site_model, 20, TraceMeanField_ELBO())
    assert math.isfinite(value)
    trace = pyro.poutine.trace(guide).get_trace()
    aux = [
        n
        for n, s in trace.nodes.items()
        if s["type"] == "sample" and s["infer"].get("is_auxiliary")
    ]
    assert len(aux) == 2  # one flow, one auxiliary site per latent site
    samples = guide.sample_posterior(10)
    assert samples["b"].shape == (10, 2)
    with pytest.raises(TypeError, match="one flow per site"):
        AutoMeanFieldFlow(two_site_model, flow=pyroflows.flows.build("maf", 3))


def test_mean_field_conjugate():
    guide = AutoMeanFieldFlow(conjugate_model, **SMALL)
    fit(guide, conjugate_model, 200)
    s = guide.sample_posterior(8000)["mu"]
    assert abs(float(s.mean()) - POST_MEAN) < 0.15 * math.sqrt(POST_VAR)
    assert abs(float(s.std()) / math.sqrt(POST_VAR) - 1) < 0.15


def test_nsf_iaf_layers_round_trip():
    torch.manual_seed(0)
    flow = nsf_iaf(3, transforms=2, hidden=(8, 8)).double()
    for p in flow.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    z = torch.randn(5, 3, dtype=torch.float64)
    T = flow.transform()
    x, ladj = T.call_and_ladj(z)
    z2, inv_ladj = T.inverse_and_ladj(x)
    assert torch.allclose(z, z2, atol=1e-8) and torch.allclose(ladj, -inv_ladj, atol=1e-8)
    layer = inverse_autoregressive(3, AffineSplineMap(bins=4), hidden=(8, 8)).double()
    assert layer.fast_direction == "forward"
    for p in layer.parameters():
        p.data.add_(0.1 * torch.randn_like(p))
    J = torch.autograd.functional.jacobian(lambda v: layer.call_and_ladj(v)[0], z[0])
    assert torch.allclose(layer.call_and_ladj(z[:1])[1], torch.linalg.slogdet(J)[1], atol=1e-8)


def test_nsf_iaf_layer_types_and_affine_first_option():
    """The guides' default: an affine layer at the base side, spline layers after it; one
    layer (or ``affine_first=False``) is spline layers only."""
    from pyroflows.transforms import AffineMap

    def maps(flow):  # noqa: ANN001, ANN202
        return [type(layer.bijection.map.map) for layer in flow.transforms]

    assert maps(nsf_iaf(3, transforms=3)) == [AffineMap, AffineSplineMap, AffineSplineMap]
    assert maps(nsf_iaf(3, transforms=2, affine_first=False)) == [AffineSplineMap] * 2
    assert maps(nsf_iaf(3, transforms=1)) == [AffineSplineMap]
    with pytest.raises(TypeError, match="affine_first"):
        nsf_iaf(3, affine_first="yes")


def test_stl_auto_and_parameter_average():
    guide = AutoFlow(two_site_model, **SMALL)
    assert guide._stl  # 3 dims: the path gradient's Jacobians are small
    big = AutoFlow(
        lambda: pyro.sample("z", dist.Normal(0.0, 1.0).expand([300]).to_event(1)),
        init="loc",
        **SMALL,
    )
    assert not big._stl  # 300 x 300 Jacobians per sample: off
    coupling = AutoFlow(
        lambda: pyro.sample("z", dist.Normal(0.0, 1.0).expand([300]).to_event(1)),
        flow="realnvp",
        init="loc",
        affine="diag",
        transforms=2,
        hidden=(8,),
    )
    assert coupling._stl and not coupling._path_gradient  # one inverse pass: on
    assert not AutoFlow(two_site_model, stl=False, **SMALL)._stl
    with pytest.raises(ValueError, match="stl"):
        AutoFlow(two_site_model, stl="sometimes")
    fit(guide, two_site_model, 30, lr=5e-2)
    live = dict(guide.flow.named_parameters())
    average = dict(guide.averages[0].flow.named_parameters())
    assert guide.averages[0].steps == 30
    assert any(not torch.equal(live[k], average[k]) for k in live)
    # Without gradients the posterior is the average's; while training, the live flow's.
    with torch.no_grad():
        assert guide._posterior_flows()[0] is guide.averages[0].flow
    assert guide._posterior_flows()[0] is guide.flow
    no_average = AutoFlow(two_site_model, average=None, **SMALL)
    with torch.no_grad():
        assert no_average._posterior_flows()[0] is no_average.flow


def _stl_gradients(guide, value_map):  # noqa: ANN001, ANN202
    """Per-parameter gradient of log p(x) - log q(x) for one draw, log_prob receiving value_map(x)."""
    guide.train()
    q = guide.get_posterior()
    x = q.rsample((4,))
    log_p = dist.Normal(0.0, 1.0).log_prob(x).sum(-1)
    (log_p - q.log_prob(value_map(x))).sum().backward()
    return [p.grad.clone() for p in guide.parameters() if p.grad is not None]


def test_stl_log_prob_depends_on_the_value_not_the_tensor():
    """The STL estimator is a function of the value: the sampled tensor and an equal copy
    (what a poutine replay or a Pyro copy hands back) give the same gradient. The sampled
    tensor's comes from the sampling pass's Jacobians, the copy's from the inverse flow: two
    computations of one gradient, so in float64 to compare them closely."""

    def model() -> None:
        pyro.sample("z", dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))

    guide = AutoFlow(model, init="loc", init_scale=0.5, average=None, stl=True, **SMALL)
    with torch.no_grad():
        for p in guide.flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    torch.manual_seed(0)
    same = _stl_gradients(guide, lambda x: x)
    guide.zero_grad()
    torch.manual_seed(0)
    copied = _stl_gradients(guide, lambda x: x.clone())
    assert len(same) == len(copied) > 0
    for a, b in zip(same, copied):
        assert torch.allclose(a, b, atol=1e-6)


def test_stl_gradient_is_zero_at_an_exact_guide():
    """At q = p every particle's STL gradient of log p - log q vanishes (the score term, which
    does not, is dropped)."""

    def model() -> None:
        pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    from pyro.infer.autoguide import init_to_mean

    # init="loc" at the prior mean with scale 1: the guide is exactly the posterior N(0, I).
    guide = AutoFlow(
        model, init="loc", init_loc_fn=init_to_mean, init_scale=1.0, average=None, stl=True, **SMALL
    )
    guide.train()
    q = guide.get_posterior()
    x = q.rsample((16,))
    log_w = dist.Normal(0.0, 1.0).log_prob(x).sum(-1) - q.log_prob(x.clone())
    params = [p for p in guide.parameters() if p.requires_grad]  # the flat flow parameters
    assert params
    for s in range(16):  # every particle, not only their mean
        grads = torch.autograd.grad(log_w[s], params, retain_graph=True, allow_unused=True)
        assert all(g is None or g.abs().max() < 1e-5 for g in grads)
