"""Flow-preconditioned NUTS (NeuTra): known posteriors through nonlinear, hand-set flows (the map
is exact whatever the flow), constrained sites, gradient counts, seeds and bad input."""

from __future__ import annotations

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import jacobian_logdet, perturb
from pyro.infer import MCMC, autoguide
from pyro.infer.autoguide import (
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
)

from pyroflows.infer import AutoAmortizedFlow, AutoFlow, AutoMeanFieldFlow
from pyroflows.infer.sampling.neutra import (
    BASE_SITE,
    GuideTransport,
    NeuTraMCMC,
    NeuTraPotential,
    neutra_mcmc,
)
from pyroflows.infer.sampling.targets_and_proposals import ModelTarget

MEAN = torch.tensor([1.0, -2.0], dtype=torch.float64)
# Correlation 0.9 and scales 1 and 5: plain NUTS with a diagonal mass matrix struggles.
COV = torch.tensor([[1.0, 0.9 * 5.0], [0.9 * 5.0, 25.0]], dtype=torch.float64)


def gaussian_model() -> None:
    pyro.sample("x", dist.MultivariateNormal(MEAN, COV))


def standard_normal() -> None:
    pyro.sample("x", dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))


def normal_normal(y: torch.Tensor) -> None:
    """mu ~ N(0, 2^2), y_i ~ N(mu, 1): the posterior of mu is N(2^2 sum(y) / (1 + 2^2 n), ...)."""
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=y.dtype), 2.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def constrained_model() -> None:
    """Prior only, so the marginals are known: loc_i ~ N(1, 2^2), scale ~ LogNormal(0, 0.5)."""
    with pyro.plate("groups", 3):
        pyro.sample("loc", dist.Normal(torch.tensor(1.0, dtype=torch.float64), 2.0))
    pyro.sample("scale", dist.LogNormal(torch.tensor(0.0, dtype=torch.float64), 0.5))


@pytest.fixture(autouse=True)
def fresh_param_store():
    """Pyro's guides keep their parameters in the global param store, under their class name."""
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def assert_moments(x: torch.Tensor, ess: torch.Tensor, mean: torch.Tensor, sd: torch.Tensor):
    """Mean and sd of draws x (N, d) within 4 Monte Carlo standard errors of the truth."""
    ess = ess.reshape(-1).clamp_min(1.0)
    mean_err = (x.mean(0) - mean).abs() / (sd / ess.sqrt())
    sd_err = (x.std(0) - sd).abs() / (sd / (2 * ess).sqrt())
    assert (mean_err < 4).all(), (x.mean(0), mean, ess)
    assert (sd_err < 4).all(), (x.std(0), sd, ess)


def nonlinear_autoflow(model, seed: int = 0) -> AutoFlow:  # noqa: ANN001
    """An AutoFlow at its Laplace start with every flow parameter moved: a mildly nonlinear map
    that is not the posterior's transport (the potential's exactness is checked against
    autograd's Jacobian in the tests below; these check the draws end to end)."""
    pyro.set_rng_seed(seed)
    guide = AutoFlow(model, flow="maf", init="laplace", transforms=1, hidden=(4,))
    perturb(guide.flow, 0.15, seed)  # its views of the guide's flat parameters
    return guide


def potential_of(model, guide) -> NeuTraPotential:  # noqa: ANN001
    transport = GuideTransport(guide, (), {})
    return NeuTraPotential(ModelTarget(model, order=transport.order), transport)


def test_potential_is_the_pulled_back_log_density():
    """U(z) = -log p(T(z)) - log|det dT/dz|, against autograd's Jacobian of the guide's map."""
    guide = nonlinear_autoflow(gaussian_model)
    potential = potential_of(gaussian_model, guide)
    T = guide.get_transform()
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = -(dist.MultivariateNormal(MEAN, COV).log_prob(T(z)) + jacobian_logdet(T, z))
    got = torch.stack([potential({BASE_SITE: row}) for row in z])
    assert torch.allclose(got, expected, atol=1e-8), (got, expected)
    assert potential.num_calls == 4 and potential.num_gradients == 0


@pytest.mark.parametrize("name", ["AutoDiagonalNormal", "AutoIAFNormal"])
def test_potential_through_pyros_get_transform(name: str):
    """Pyro's guides: their get_transform() (elementwise, or an IAF with a summed log-det);
    in float32, as Pyro's IAF networks ignore the model's dtype."""
    mean, cov = MEAN.float(), COV.float()

    def model() -> None:
        pyro.sample("x", dist.MultivariateNormal(mean, cov))

    pyro.set_rng_seed(2)
    guide = getattr(autoguide, name)(model)
    guide()
    potential = potential_of(model, guide)
    with torch.no_grad():
        T = guide.get_transform()
    z = torch.randn(3, 2, generator=torch.Generator().manual_seed(2))
    expected = -(dist.MultivariateNormal(mean, cov).log_prob(T(z)) + jacobian_logdet(T, z))
    got = torch.stack([potential({BASE_SITE: row}) for row in z])
    assert got.dtype == torch.float32
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-4), (got, expected)


def test_mean_field_potential_with_constrained_sites():
    """Per-site flows and the sites' supports: u = (loc (3), log scale), each block its flow."""
    pyro.set_rng_seed(1)
    guide = AutoMeanFieldFlow(constrained_model, flow="maf", init="loc", transforms=1, hidden=(4,))
    perturb(guide.flows, 0.3, 1)
    potential = potential_of(constrained_model, guide)
    q = guide.site_posteriors()

    def T(z: torch.Tensor) -> torch.Tensor:
        return torch.cat([q["loc"].transform(z[..., :3]), q["scale"].transform(z[..., 3:])], -1)

    def log_p(u: torch.Tensor) -> torch.Tensor:
        loc = dist.Normal(torch.tensor(1.0, dtype=u.dtype), 2.0).log_prob(u[..., :3]).sum(-1)
        scale = dist.LogNormal(torch.tensor(0.0, dtype=u.dtype), 0.5).log_prob(u[..., 3].exp())
        return loc + scale + u[..., 3]  # + log|d scale / d u|

    z = torch.randn(4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = -(log_p(T(z)) + jacobian_logdet(T, z))
    got = torch.stack([potential({BASE_SITE: row}) for row in z])
    assert torch.allclose(got, expected, atol=1e-8), (got, expected)
    sites = potential.to_model_sites(z.reshape(2, 2, 4))
    assert sites["loc"].shape == (2, 2, 3) and sites["scale"].shape == (2, 2)
    assert torch.allclose(sites["scale"], T(z)[:, 3].exp().reshape(2, 2))


def test_correlated_gaussian_through_a_nonlinear_flow():
    guide = nonlinear_autoflow(gaussian_model)
    mcmc = neutra_mcmc(gaussian_model, guide, 200, 100, seed=1)
    assert isinstance(mcmc, MCMC) and isinstance(mcmc, NeuTraMCMC)
    x = mcmc.get_samples()["x"]
    assert x.shape == (200, 2) and x.dtype == torch.float64
    assert_moments(x, mcmc.diagnostics()["x"]["n_eff"], MEAN, COV.diagonal().sqrt())
    corr = torch.corrcoef(x.T)[0, 1]
    assert abs(corr - 0.9) < 0.05, corr
    assert mcmc.base_samples().shape == (200, 2)
    # The map is nonlinear: its log-determinant varies (an affine map's is constant).
    with torch.no_grad():
        _, ladj = mcmc.potential.transport(torch.tensor([[0.0, 0.0], [1.5, -1.5]]).double())
    assert abs(ladj[0] - ladj[1]) > 0.05, ladj


def test_conjugate_normal_with_pyros_multivariate_normal_guide():
    pyro.set_rng_seed(0)
    y = torch.tensor([0.3, 1.8, 1.1, 2.4, 0.9], dtype=torch.float64)
    guide = AutoMultivariateNormal(normal_normal)
    guide(y)  # built at the init point, N(median, 0.1^2): a badly scaled preconditioner
    mcmc = neutra_mcmc(normal_normal, guide, 300, 150, model_args=(y,), seed=2)
    precision = 1 / 4 + len(y)
    mean, sd = y.sum() / precision, precision**-0.5
    mu = mcmc.get_samples()["mu"]
    assert mu.shape == (300,)
    assert_moments(mu[:, None], mcmc.diagnostics()["mu"]["n_eff"], mean, torch.tensor(sd))
    assert mcmc.diagnostics()["divergences"] == {"chain 0": []}


@pytest.mark.slow
def test_constrained_sites_keep_names_shapes_and_supports():
    pyro.set_rng_seed(3)
    guide = AutoMeanFieldFlow(
        constrained_model, flow="maf", init="laplace", transforms=1, hidden=(4,)
    )
    perturb(guide.flows, 0.15, 3)
    mcmc = neutra_mcmc(constrained_model, guide, 150, 75, seed=3)
    samples = mcmc.get_samples()
    assert set(samples) == {"loc", "scale"}
    assert samples["loc"].shape == (150, 3) and samples["scale"].shape == (150,)
    assert (samples["scale"] > 0).all()
    diag = mcmc.diagnostics()
    assert BASE_SITE not in diag and {"loc", "scale", "divergences"} <= set(diag)
    assert_moments(samples["loc"], diag["loc"]["n_eff"], torch.tensor(1.0), torch.tensor(2.0))
    assert_moments(
        samples["scale"].log()[:, None],
        diag["scale"]["n_eff"],
        torch.tensor(0.0),
        torch.tensor(0.5),
    )
    grouped = mcmc.get_samples(group_by_chain=True)
    assert grouped["loc"].shape == (1, 150, 3) and grouped["scale"].shape == (1, 150)
    assert mcmc.get_samples(7)["loc"].shape == (7, 3)


def test_gradient_evaluations_are_counted():
    calls = []

    def counted() -> None:
        calls.append(1)
        standard_normal()

    pyro.set_rng_seed(0)
    guide = AutoMultivariateNormal(counted, init_scale=1.0)
    guide()
    before = len(calls)
    # max_tree_depth=1: one leapfrog step, so one gradient, per iteration.
    mcmc = neutra_mcmc(counted, guide, 30, 20, max_tree_depth=1, seed=0)
    counts = mcmc.gradient_evaluations
    assert counts["sampling"] == 30
    assert counts["warmup"] >= 20
    assert counts["total"] == counts["warmup"] + counts["sampling"]
    assert counts["total"] == mcmc.potential.num_gradients
    assert len(calls) - before >= counts["total"]  # every gradient runs the model once
    deep = neutra_mcmc(counted, guide, 30, 20, seed=0).gradient_evaluations
    assert deep["sampling"] >= 30 and deep["total"] == deep["warmup"] + deep["sampling"]


def test_seed_reproduces_and_restores_the_global_rng():
    guide = AutoMultivariateNormal(standard_normal, init_scale=1.0)
    guide()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = neutra_mcmc(standard_normal, guide, 20, 10, seed=5).get_samples()["x"]
    assert torch.equal(torch.get_rng_state(), state)
    b = neutra_mcmc(standard_normal, guide, 20, 10, seed=5).get_samples()["x"]
    c = neutra_mcmc(standard_normal, guide, 20, 10, seed=6).get_samples()["x"]
    assert torch.equal(a, b) and not torch.equal(a, c)


def half_normal_model() -> None:  # at the top level: spawned chain processes unpickle it
    pyro.sample("s", dist.HalfNormal(torch.tensor(1.0)).expand([2]).to_event(1))


def test_float32_and_two_chains():
    guide = AutoFlow(half_normal_model, init="loc", transforms=1, hidden=(4,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "chains will be drawn sequentially"
        mcmc = neutra_mcmc(half_normal_model, guide, 15, 10, num_chains=2, seed=0)
    s = mcmc.get_samples(group_by_chain=True)["s"]
    assert s.shape == (2, 15, 2) and s.dtype == torch.float32 and (s > 0).all()
    assert mcmc.get_samples()["s"].shape == (30, 2)
    counts = mcmc.gradient_evaluations  # None when Pyro ran the chains in worker processes
    assert counts is None or counts["sampling"] >= 30


@pytest.mark.slow
def test_chains_in_spawned_worker_processes(monkeypatch):
    # Pyro runs the chains in worker processes when it sees a CPU for each; spawned ones (the
    # start method where torch sees a GPU) must unpickle the hook, which once held the MCMC
    # object and its locks.
    monkeypatch.setattr(pyro.infer.mcmc.api.mp, "cpu_count", lambda: 3)
    guide = AutoFlow(half_normal_model, init="loc", transforms=1, hidden=(4,))
    mcmc = neutra_mcmc(half_normal_model, guide, 15, 10, num_chains=2, seed=0, mp_context="spawn")
    s = mcmc.get_samples(group_by_chain=True)["s"]
    assert s.shape == (2, 15, 2) and (s > 0).all()
    assert not torch.equal(s[0], s[1])
    assert mcmc.gradient_evaluations is None  # counted in the workers, not here


def other_model() -> None:
    pyro.sample("x", dist.Normal(torch.zeros(3, dtype=torch.float64), 1.0).to_event(1))


def renamed_model() -> None:
    pyro.sample("w", dist.MultivariateNormal(MEAN, COV))


def discrete_model() -> None:
    pyro.sample("x", dist.MultivariateNormal(MEAN, COV))
    pyro.sample("k", dist.Bernoulli(0.5))


def test_bad_input_is_refused():
    guide = AutoMultivariateNormal(gaussian_model)
    with pytest.raises(ValueError, match="not been fitted"):
        neutra_mcmc(gaussian_model, guide, 10, 10)
    lazy = AutoFlow(normal_normal)  # built at its first call, which never came
    with pytest.raises(ValueError, match="not been fitted"):
        neutra_mcmc(normal_normal, lazy, 10, 10, model_args=(torch.zeros(3),))
    guide()
    with pytest.raises(ValueError, match="num_samples"):
        neutra_mcmc(gaussian_model, guide, 0, 10)
    with pytest.raises(ValueError, match="warmup_steps"):
        neutra_mcmc(gaussian_model, guide, 10, -1)
    with pytest.raises(ValueError, match="dimension mismatch"):
        neutra_mcmc(other_model, guide, 10, 10)
    with pytest.raises(ValueError, match="differ from the model's"):
        neutra_mcmc(renamed_model, guide, 10, 10)
    with pytest.raises(TypeError, match="discrete"):
        neutra_mcmc(discrete_model, guide, 10, 10)
    with pytest.raises(TypeError, match="model_args must be a tuple"):
        neutra_mcmc(normal_normal, guide, 10, 10, model_args=torch.zeros(3))
    normal = AutoNormal(gaussian_model)
    normal()
    with pytest.raises(TypeError, match="AutoNormal"):
        neutra_mcmc(gaussian_model, normal, 10, 10)
    low_rank = AutoLowRankMultivariateNormal(gaussian_model)
    low_rank()
    with pytest.raises(TypeError, match="no get_transform"):
        neutra_mcmc(gaussian_model, low_rank, 10, 10)


def test_amortized_guide_is_refused_with_the_reason():
    def local(x: torch.Tensor) -> None:
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    x = torch.randn(4, 2)
    guide = AutoAmortizedFlow(
        local, torch.nn.Linear(2, 3), transforms=1, hidden=(4,), model_args=(x,)
    )
    with pytest.raises(TypeError, match="amortized"):
        neutra_mcmc(local, guide, 10, 10, model_args=(x,))


def test_summary_prints_the_model_sites(capsys: pytest.CaptureFixture):
    guide = AutoMultivariateNormal(standard_normal, init_scale=1.0)
    guide()
    mcmc = neutra_mcmc(standard_normal, guide, 10, 5, seed=0)
    mcmc.summary()
    out = capsys.readouterr().out
    assert "x[0]" in out and BASE_SITE not in out and "divergences" in out
    assert math.isfinite(float(mcmc.get_samples()["x"].sum()))
