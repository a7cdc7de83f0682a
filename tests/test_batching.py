"""Models written for one draw still run batched: ``torch.func.vmap`` where a particle plate
fails, in the model's log-density (importance, the guides), ``guide_log_weights`` (ArviZ) and
``posterior_predictive``; the per-draw loop only as the last resort, with a warning that says
why. Known answers: the log-weights against the per-draw loop and against a closed form."""

from __future__ import annotations

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyroflows.infer import (
    AutoFlow,
    AutoMeanFieldFlow,
    ModelTarget,
    guide_log_weights,
    importance,
    posterior_predictive,
)

N, P = 60, 4


@pytest.fixture(autouse=True)
def _clean() -> None:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)


def data(dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, P, generator=g, dtype=dtype)
    y = torch.bernoulli(torch.sigmoid(x @ torch.ones(P, dtype=dtype) / 2), generator=g)
    return x, y


calls = {"model": 0}


def logistic(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """Written as users write it: ``X @ w`` fails in a particle plate."""
    calls["model"] += 1
    w = pyro.sample("w", dist.Normal(torch.zeros(P, dtype=x.dtype), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(torch.tensor(0.0, dtype=x.dtype), 5.0))
    with pyro.plate("rows", N):
        pyro.sample("y", dist.Bernoulli(logits=x @ w + b), obs=y)


def log_joint(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The model's log p(y, w, b) in closed form, draws (S, P) and (S,) -> (S,)."""
    one, five = torch.ones((), dtype=w.dtype), torch.full((), 5.0, dtype=w.dtype)
    prior = dist.Normal(0 * one, one).log_prob(w).sum(-1) + dist.Normal(0 * five, five).log_prob(b)
    logits = w @ x.T + b[:, None]
    return prior + dist.Bernoulli(logits=logits).log_prob(y).sum(-1)


def test_importance_with_vmap_matches_the_per_draw_loop_in_four_model_runs():
    x, y = data()
    proposal = dist.MultivariateNormal(
        torch.zeros(P + 1, dtype=x.dtype), torch.eye(P + 1, dtype=x.dtype) * 0.3
    )
    batched = ModelTarget(logistic, (x, y))
    looped = ModelTarget(logistic, (x, y))
    looped.route = "loop"
    calls["model"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the vmap route does not warn
        fast = importance(batched, proposal, 400, seed=1, warn=False)
    runs = calls["model"]
    calls["model"] = 0
    slow = importance(looped, proposal, 400, seed=1, warn=False)
    assert batched.route == "vmap" and "plate" in batched.failures
    # The plate try, the first point unbatched (also vmap's check), the plate on copies of
    # that point (the failure is the plate's, not the values'), vmap's trace.
    assert runs <= 4 and calls["model"] == 400
    assert torch.allclose(fast.log_weights, slow.log_weights, rtol=0, atol=1e-10)
    # And against the closed form: u = (w, b) unconstrained (real supports).
    u = fast.samples
    expected = log_joint(x, y, u[:, :P], u[:, P]) - proposal.log_prob(u)
    assert torch.allclose(fast.log_weights, expected, rtol=0, atol=1e-9)


def test_guide_log_density_is_batched_and_differentiable():
    x, y = data()
    guide = AutoFlow(logistic, init="loc", transforms=1, hidden=(8,))
    guide(x, y)
    u = torch.randn(50, P + 1, dtype=torch.float64, requires_grad=True)
    out = guide.log_density(u, x, y)
    expected = log_joint(x, y, u[:, :P], u[:, P])
    assert torch.allclose(out, expected, rtol=0, atol=1e-10)
    (grad,) = torch.autograd.grad(out.sum(), u)
    (grad_expected,) = torch.autograd.grad(expected.sum(), u)
    assert torch.allclose(grad, grad_expected, rtol=0, atol=1e-9)


def test_guide_log_weights_under_vmap_are_the_closed_form():
    x, y = data()
    guide = AutoFlow(logistic, init="loc", transforms=1, hidden=(8,))
    guide(x, y)
    calls["model"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        samples, logw = guide_log_weights(logistic, guide, 300, x, y)
    assert calls["model"] <= 5  # not one run per draw
    w, b = samples["w"], samples["b"]
    assert w.shape == (300, P) and b.shape == (300,) and logw.shape == (300,)
    assert w.std(0).min() > 0.1  # 300 different draws, not one repeated
    log_q = guide.get_posterior().log_prob(torch.cat([w, b[:, None]], -1))
    assert torch.allclose(logw, log_joint(x, y, w, b) - log_q, rtol=0, atol=1e-9)


def test_posterior_predictive_draws_observed_sites_given_the_latents():
    x, y = data()
    guide = AutoFlow(logistic, init="loc", transforms=1, hidden=(8,))
    guide(x, y)
    draws = posterior_predictive(logistic, guide, 2000, x)
    assert draws["w"].shape == (2000, P) and draws["y"].shape == (2000, N)
    p = torch.sigmoid(draws["w"] @ x.T + draws["b"][:, None])
    # y | w, b ~ Bernoulli(p): the standardised residual is 0 +- 1/sqrt(n).
    z = (draws["y"] - p).sum() / (p * (1 - p)).sum().sqrt()
    assert abs(float(z)) < 4
    only = posterior_predictive(logistic, guide, 10, x, return_sites=["y"])
    assert list(only) == ["y"]
    with pytest.raises(ValueError, match="return_sites"):
        posterior_predictive(logistic, guide, 10, x, return_sites=["nope"])
    with pytest.raises(ValueError, match="num_samples"):
        posterior_predictive(logistic, guide, 0, x)


def positive_rate(rate_data: torch.Tensor) -> None:
    """Written for batches (no ``X @ w``), but invalid beyond ``log_rate = 5``: Pyro's
    validation raises for the observation's negative scale there, at any batch size."""
    log_rate = pyro.sample("log_rate", dist.Normal(torch.zeros((), dtype=rate_data.dtype), 1.0))
    with pyro.plate("rows", len(rate_data)):
        pyro.sample("y", dist.Normal(0.0, 5 - log_rate), obs=rate_data)


def test_an_error_at_some_values_is_raised_and_keeps_the_batched_route():
    rate_data = torch.linspace(-1, 1, 7, dtype=torch.float64)
    target = ModelTarget(positive_rate, (rate_data,))
    good = torch.tensor([[0.5], [-1.0], [2.0]], dtype=torch.float64)
    expected = dist.Normal(0.0, 1.0).log_prob(good[:, 0]) + dist.Normal(0.0, 5 - good).log_prob(
        rate_data
    ).sum(-1)
    assert torch.allclose(target(good), expected, rtol=0, atol=1e-12)
    assert target.route == "plate"
    bad = torch.tensor([[0.5], [6.0], [2.0]], dtype=torch.float64)
    calls["model"] = 0
    with pytest.raises(ValueError, match="scale"):
        target(bad)
    # Not a batching problem: the route stays the particle plate, and the next call is batched.
    assert target.route == "plate" and not target.failures
    assert torch.allclose(target(good), expected, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="scale"):  # a bad first point: its own error
        target(bad.flip(0).roll(1, 0))
    assert target.route == "plate"


def unbatchable(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """``.item()`` on a latent defeats both the particle plate and vmap."""
    w = pyro.sample("w", dist.Normal(torch.zeros(P, dtype=x.dtype), 1.0).to_event(1))
    scale = 1.0 + 0.0 * float(w.sum().item())
    with pyro.plate("rows", N):
        pyro.sample("y", dist.Bernoulli(logits=x @ w * scale), obs=y)


def test_the_loop_is_the_last_resort_and_says_why():
    x, y = data()
    target = ModelTarget(unbatchable, (x, y))
    proposal = dist.MultivariateNormal(torch.zeros(P, dtype=x.dtype), torch.eye(P, dtype=x.dtype))
    with pytest.warns(UserWarning, match=r"particle plate.*vmap"):
        result = importance(target, proposal, 20, seed=0, warn=False)
    assert target.route == "loop" and torch.isfinite(result.log_weights).all()
    guide = AutoFlow(unbatchable, init="loc", transforms=1, hidden=(8,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guide(x, y)
    with pytest.warns(UserWarning, match=r"particle plate.*vmap"):
        samples, logw = guide_log_weights(unbatchable, guide, 5, x, y)
    assert samples["w"].shape == (5, P) and torch.isfinite(logw).all()


def test_guide_initialisation_reports_what_it_did_and_keeps_to_its_time_budget():
    x, y = data()
    guide = AutoFlow(logistic, transforms=1, hidden=(8,), progress=False)
    guide(x, y)
    report = guide.init_report
    assert guide.init_choice == "laplace" and report["map_search"]["stopped"] == "converged"
    assert report["summary"].startswith("Laplace start: L-BFGS converged after")
    assert report["summary"].endswith(": laplace") and set(report["elbo"]) == {"loc", "laplace"}
    pyro.clear_param_store()
    hurried = AutoFlow(logistic, transforms=1, hidden=(8,), init_max_time=1e-9, progress=False)
    hurried(x, y)
    assert hurried.init_report["map_search"]["stopped"] == "max_time"
    assert hurried.init_choice == "loc" and "stopped at max_time" in hurried.init_report["summary"]
    with pytest.raises(ValueError, match="init_max_time"):
        AutoFlow(logistic, init_max_time=-1.0)


def test_mean_field_guide_is_an_importance_proposal():
    """AutoMeanFieldFlow's get_posterior is the product of its sites' flows over the latent
    vector (it raised NotImplementedError, so importance could not use the guide)."""
    x, y = data()
    guide = AutoMeanFieldFlow(logistic, init="loc", transforms=1, hidden=(8,), progress=False)
    guide(x, y)
    q = guide.get_posterior()
    u = q.sample((7,))
    parts = list(guide.site_posteriors().values())
    expected = parts[0].log_prob(u[:, :P]) + parts[1].log_prob(u[:, P:])
    assert u.shape == (7, P + 1) and torch.allclose(q.log_prob(u), expected, rtol=0, atol=1e-12)
    result = importance(logistic, guide, 300, model_args=(x, y), seed=0, warn=False)
    u = result.samples
    closed = log_joint(x, y, u[:, :P], u[:, P]) - q.log_prob(u)
    assert torch.allclose(result.log_weights, closed, rtol=0, atol=1e-9)
