"""The particle objectives (IWAE, Renyi, ChiSquare) on known answers.

Two conjugate Gaussian models give every answer in closed form:

* ``model1``: z ~ N(0, 1), x_i ~ N(z, 1): the posterior N(sum x / (n + 1), 1 / (n + 1)) is in a
  Gaussian guide's family, so every objective's optimum is the posterior itself; and for a
  fixed Gaussian guide q every bound has a closed form (Gaussian integrals of q^a p^b).
* ``model2``: z ~ N(0, I_2), x_i ~ N(z_1 + z_2, 1): a correlated posterior (correlation -0.8)
  that a mean-field guide cannot hold. KL(q || p) (the ELBO) gives sds 1 / sqrt(Lambda_ii),
  chi-square's optimum (closed form, minimised numerically here) is wider, and IWAE's lies
  between them.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, RenyiELBO, Trace_ELBO
from pyro.optim import Adam

from pyroflows import Flow
from pyroflows.infer import (
    AutoAmortizedFlow,
    AutoFlow,
    AutoMeanFieldFlow,
    fit_guide,
    guide_log_weights,
)
from pyroflows.infer.objectives import IWAE, ChiSquare, ParticleObjective, Renyi
from pyroflows.transforms import ElementwiseAffine

X1 = torch.tensor([0.5, 1.2, -0.3, 0.9], dtype=torch.float64)
X2 = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)


@pytest.fixture(autouse=True)
def _clean() -> None:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)


def model1(x: torch.Tensor) -> None:
    z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def model2(x: torch.Tensor) -> None:
    z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z.sum(-1), 1.0), obs=x)


def normal_guide(x: torch.Tensor) -> None:
    """A Gaussian guide over model1's z: the posterior's family."""
    loc = pyro.param("loc", x.new_tensor(0.0))
    scale = pyro.param("scale", x.new_tensor(1.0), constraint=dist.constraints.positive)
    pyro.sample("z", dist.Normal(loc, scale))


def diagonal_guide(x: torch.Tensor) -> None:
    """A mean-field Gaussian guide over model2's z: it cannot hold the posterior."""
    loc = pyro.param("loc", x.new_zeros(2))
    scale = pyro.param("scale", x.new_ones(2), constraint=dist.constraints.positive)
    pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def posterior1(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (1,) and covariance (1, 1) of model1's posterior."""
    precision = 1.0 + len(x)
    return (x.sum() / precision).reshape(1), x.new_full((1, 1), 1 / precision)


def posterior2(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    precision = torch.eye(2).to(x) + len(x) * torch.ones(2, 2).to(x)
    cov = torch.linalg.inv(precision)
    return cov @ (x.sum() * torch.ones(2).to(x)), cov


def log_evidence1(x: torch.Tensor) -> float:
    cov = torch.eye(len(x)).to(x) + torch.ones(len(x), len(x)).to(x)
    return float(dist.MultivariateNormal(torch.zeros_like(x), cov).log_prob(x))


def log_integral(terms: list[tuple[float, torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    r""":math:`\log \int \prod_i N(z; m_i, \Sigma_i)^{c_i} dz` for ``terms`` ``(c_i, m_i, Sigma_i)``
    (needs :math:`\sum_i c_i \Sigma_i^{-1}` positive definite); differentiable."""
    A = 0
    b = 0
    const = 0
    for c, m, cov in terms:
        P = torch.linalg.inv(cov)
        A = A + c * P
        b = b + c * P @ m
        const = const + c * (-0.5 * m @ P @ m - 0.5 * torch.logdet(2 * math.pi * cov))
    d = len(b)
    return (
        const
        + 0.5 * b @ torch.linalg.solve(A, b)
        + 0.5 * d * math.log(2 * math.pi)
        - 0.5 * torch.logdet(A)
    )


def renyi_bound(alpha: float, q: tuple, post: tuple, log_evidence: float) -> float:
    """L_alpha = log p(x) + log int q^alpha post^(1 - alpha) / (1 - alpha)."""
    integral = log_integral([(alpha, *q), (1 - alpha, *post)])
    return log_evidence + float(integral) / (1 - alpha)


def steps(svi: SVI, n: int, *args: torch.Tensor) -> None:
    for _ in range(n):
        svi.step(*args)


OBJECTIVES = {
    "iwae": lambda: IWAE(8),
    "renyi-0.5": lambda: Renyi(0.5, 8),
    "renyi-2": lambda: Renyi(2.0, 8),
    "chi-square": lambda: ChiSquare(16),
}


# -- optima ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OBJECTIVES)
def test_every_objective_finds_an_exact_posterior(name, device):
    """The posterior is in the family: DReG's gradient is exactly zero there for every draw,
    so the iterates converge to it with no Monte Carlo noise left (to 1e-6; ~1e-9 observed),
    and every weight is then p(x), so the loss is -log p(x) (log p(x) for the upper bound)."""
    x = X1.to(device)
    objective = OBJECTIVES[name]()
    svi = SVI(model1, normal_guide, Adam({"lr": 0.05}), objective)
    steps(svi, 300, x)
    mean, cov = posterior1(x)
    assert abs(pyro.param("loc").item() - float(mean)) < 1e-6
    assert abs(pyro.param("scale").item() - float(cov.sqrt())) < 1e-6
    sign = 1 if isinstance(objective, ChiSquare) else -1
    assert abs(svi.evaluate_loss(x) - sign * log_evidence1(x)) < 1e-6


def affine(features: int) -> Flow:
    return Flow([ElementwiseAffine(features)])


def test_a_flow_guide_reaches_the_posterior_with_fit_guide():
    """fit_guide takes the objectives as ``loss=``; the affine flow guide is Gaussian, so its
    mean and sd (read off its transform: no sampling error; no parameter averaging, which
    would lag behind the converged parameters) are the posterior's, to 1e-3: fit_guide keeps
    the state at the end of its best window (by mean loss), about 150 steps in here, where
    the parameters are within 2e-4 of the optimum."""
    guide = AutoFlow(model1, affine, init="loc", average=None, model_args=(X1,))
    result = fit_guide(
        model1,
        guide,
        X1,
        loss=IWAE(8),
        lr=0.05,
        max_steps=300,
        window=50,
        check_draws=0,
        progress=False,
    )
    assert result.steps > 0
    with torch.no_grad():
        q = guide.get_posterior(X1)
        points = torch.tensor([[0.0], [1.0]], dtype=torch.float64)  # base points 0 and 1
        for t in q.transforms:
            points = t(points)
    mean, cov = posterior1(X1)
    assert abs(float(points[0, 0]) - float(mean)) < 1e-3
    assert abs(abs(float(points[1, 0] - points[0, 0])) - float(cov.sqrt())) < 1e-3


def chi_square_optimum(post: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean-field Gaussian minimising the closed-form CUBO (Nelder-Mead over means and
    log-sds; infinite where E[w^2] diverges): (mean, sd), each (2,)."""
    from scipy.optimize import minimize

    def cubo(theta) -> float:  # noqa: ANN001
        theta = torch.as_tensor(theta, dtype=torch.float64)
        cov = torch.diag(torch.exp(2 * theta[2:]))
        A = 2 * torch.linalg.inv(post[1]) - torch.linalg.inv(cov)
        if torch.linalg.eigvalsh(A).min() <= 0:
            return math.inf
        return float(log_integral([(-1.0, theta[:2], cov), (2.0, *post)]))

    start = torch.cat([post[0], post[1].diag().sqrt().log()]).tolist()
    found = minimize(cubo, start, method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12})
    assert found.success
    theta = torch.as_tensor(found.x, dtype=torch.float64)
    return theta[:2], theta[2:].exp()


def averaged_fit(loss, n: int = 800, lr: float = 0.03) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit the diagonal guide to model2 with Adam at a constant step size; the average of the
    second half's iterates, ``(loc_1, loc_2, mean sd)``, and its Monte Carlo standard error
    (ArviZ's, which accounts for the iterates' autocorrelation). The two sds are averaged: by
    symmetry every objective's optimum has them equal."""
    import arviz

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svi = SVI(model2, diagonal_guide, Adam({"lr": lr}), loss)
    kept = []
    for i in range(n):
        svi.step(X2)
        if i >= n // 2:
            loc, scale = pyro.param("loc").detach(), pyro.param("scale").detach()
            kept.append(torch.cat([loc, scale.mean().reshape(1)]))
    kept = torch.stack(kept)
    # .item(): on the GPU machine (NumPy 2.5.2, ArviZ 0.23.4) this was a one-element array,
    # which float() refuses.
    mcse = [np.asarray(arviz.mcse(kept[:, j].numpy())).item() for j in range(3)]
    return kept.mean(0), torch.tensor(mcse, dtype=kept.dtype)


@pytest.mark.slow
def test_a_mean_field_guide_is_narrow_under_kl_and_wide_under_chi_square():
    """On a correlated posterior a diagonal Gaussian cannot be exact: the ELBO's sds are
    1/sqrt(Lambda_ii) (closed form), chi-square's the closed-form CUBO minimiser (wider than
    the marginal sds), and IWAE's lie between (its large-K gap is chi^2/2K). Each fit is the
    average of 400 iterates; it must match its closed form within 4 Monte Carlo standard
    errors (those of the sds at most 0.03, so the check has teeth), and the order must hold by
    more than 3 of them."""
    post = posterior2(X2)
    elbo_sd = float(torch.linalg.inv(post[1]).diag().rsqrt()[0])
    chi_mean, chi_sd = chi_square_optimum(post)
    assert torch.allclose(chi_mean, post[0], atol=1e-6)  # symmetric: the mean stays
    assert torch.allclose(chi_sd[0], chi_sd[1], atol=1e-6)
    assert (chi_sd > post[1].diag().sqrt()).all()  # wider than the marginals
    fits = {
        "elbo": averaged_fit(Trace_ELBO(num_particles=16, vectorize_particles=True)),
        "iwae": averaged_fit(IWAE(4)),
        "chi": averaged_fit(ChiSquare(32)),
    }
    for value, se in fits.values():
        assert se[2] < 0.03
        assert ((value[:2] - post[0]).abs() < 4 * se[:2]).all()
    (elbo, elbo_se), (iwae, iwae_se), (chi, chi_se) = fits.values()
    assert abs(elbo[2] - elbo_sd) < 4 * elbo_se[2]
    assert abs(chi[2] - float(chi_sd[0])) < 4 * chi_se[2]
    assert elbo[2] + 3 * math.hypot(elbo_se[2], iwae_se[2]) < iwae[2]
    assert iwae[2] + 3 * math.hypot(iwae_se[2], chi_se[2]) < chi[2]


# -- the bounds at a fixed guide ---------------------------------------------------------------


def gaussian_guide(loc: float, sd: float):  # noqa: ANN201
    """A fixed Gaussian guide N(loc, sd^2) over model1's z, and its (mean, cov)."""

    def guide(x: torch.Tensor) -> None:
        pyro.sample("z", dist.Normal(x.new_tensor(loc), sd))

    q = (torch.tensor([loc], dtype=torch.float64), torch.tensor([[sd**2]], dtype=torch.float64))
    return guide, q


def kl(q: tuple, p: tuple) -> torch.Tensor:
    """KL(q || p) of two Gaussians (mean, cov); differentiable."""
    P = torch.linalg.inv(p[1])
    d = p[0] - q[0]
    return 0.5 * (
        torch.trace(P @ q[1]) - len(d) + d @ P @ d + torch.logdet(p[1]) - torch.logdet(q[1])
    )


def test_iwae_is_the_elbo_at_one_particle_grows_with_k_and_stays_below_log_evidence():
    """E[IWAE_1] is the closed-form ELBO (300 estimates of ``loss``, within 4 standard
    errors); E[IWAE_K] increases with K and stays below log p(x): the estimator on 256,000
    weights of a fixed guide in blocks of K, each step by more than 4 standard errors."""
    guide, q = gaussian_guide(0.3, 0.6)  # wider than the posterior (sd 0.447)
    log_z = log_evidence1(X1)
    elbo = log_z - float(kl(q, posterior1(X1)))
    k1 = -torch.tensor([IWAE(1).loss(model1, guide, X1) for _ in range(300)])
    assert abs(float(k1.mean()) - elbo) < 4 * float(k1.std()) / math.sqrt(300)
    _, log_weights = guide_log_weights(model1, guide, 256_000, X1)
    mean, se = {}, {}
    for K in (1, 4, 16):
        bounds = -IWAE(K).objective(log_weights.reshape(-1, K).T)[0]  # one per block
        mean[K], se[K] = float(bounds.mean()), float(bounds.std()) / math.sqrt(len(bounds))
    assert abs(mean[1] - elbo) < 4 * se[1]
    assert mean[1] + 4 * math.hypot(se[1], se[4]) < mean[4]
    assert mean[4] + 4 * math.hypot(se[4], se[16]) < mean[16]
    assert mean[16] + 4 * se[16] < log_z


@pytest.mark.parametrize("alpha, sd", [(0.5, 0.6), (2.0, 0.4), (-1.0, 0.6)])
def test_large_k_estimates_match_the_closed_form_bounds(alpha, sd):
    """With K = 20000 the log-mean-exp estimate is within 5 delta-method errors (the relative
    sd of the weights' mean, from the closed-form moments, over |1 - alpha|) of the closed
    form: the Renyi bound log p(x) - D_alpha(q || p) or, for alpha = -1, CUBO_2. The guide's
    sd makes w^(1 - alpha) square-integrable (wider than the posterior's 0.447 for alpha < 1,
    narrower for alpha > 1)."""
    K = 20_000
    guide, q = gaussian_guide(0.3, sd)
    objective = ChiSquare(K) if alpha == -1 else Renyi(alpha, K)
    post = posterior1(X1)
    closed = renyi_bound(alpha, q, post, log_evidence1(X1))
    sign = 1 if alpha == -1 else -1
    estimate = sign * objective.loss(model1, guide, X1)
    log_m1 = log_integral([(alpha, *q), (1 - alpha, *post)])
    log_m2 = log_integral([(2 * alpha - 1, *q), (2 - 2 * alpha, *post)])
    relative_sd = math.sqrt(math.expm1(float(log_m2 - 2 * log_m1)) / K)
    assert 0 < relative_sd < 0.01
    assert abs(estimate - closed) < 5 * relative_sd / abs(1 - alpha)


# -- gradient estimators -----------------------------------------------------------------------


def gradient_draws(objective: ParticleObjective, model, guide, x, repeats: int) -> torch.Tensor:
    """``repeats`` gradient estimates (repeats, P) of the guide's unconstrained parameters."""
    out = []
    for _ in range(repeats):
        params = [pyro.get_param_store().get_param(n).unconstrained() for n in ("loc", "scale")]
        for p in params:
            p.grad = None
        objective.loss_and_grads(model, guide, x)
        params = [pyro.get_param_store().get_param(n).unconstrained() for n in ("loc", "scale")]
        out.append(torch.cat([p.grad.reshape(-1) for p in params]))
    return torch.stack(out)


def set_guide(loc: list[float], scale: list[float]) -> None:
    pyro.clear_param_store()
    pyro.param("loc", torch.tensor(loc, dtype=torch.float64).squeeze())
    pyro.param(
        "scale",
        torch.tensor(scale, dtype=torch.float64).squeeze(),
        constraint=dist.constraints.positive,
    )


@pytest.mark.parametrize(
    "make", [lambda g: IWAE(4, gradient=g), lambda g: Renyi(0.5, 4, gradient=g)]
)
def test_dreg_is_unbiased_and_less_noisy_than_the_total_gradient(make):
    """At a mean-field guide off the optimum, DReG and the total (score-including) gradient
    estimate the same gradient: their means over 200 draws agree within 4 standard errors;
    DReG's variance is the smaller."""
    set_guide([0.2, 0.9], [0.5, 0.7])
    dreg = gradient_draws(make("dreg"), model2, diagonal_guide, X2, 200)
    total = gradient_draws(make("total"), model2, diagonal_guide, X2, 200)
    se = (dreg.var(0) / len(dreg) + total.var(0) / len(total)).sqrt()
    assert ((dreg.mean(0) - total.mean(0)).abs() < 4 * se).all()
    assert dreg.var(0).sum() < total.var(0).sum()


def test_the_estimators_have_the_closed_form_gradients():
    """Renyi with K = 1 is the ELBO, and ChiSquare's estimate is the gradient of the CUBO when
    its scale reference is the CUBO: both against autograd of the closed forms, within 4
    standard errors of 200 draws."""
    x, post, log_z = X1, posterior1(X1), log_evidence1(X1)
    loc = torch.tensor([0.2], dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor(math.log(0.6), dtype=torch.float64, requires_grad=True)
    q = (loc, torch.exp(2 * log_scale).reshape(1, 1))
    elbo = log_z - kl(q, post)
    cubo = log_z + 0.5 * log_integral([(-1.0, *q), (2.0, *post)])
    expected_elbo = torch.autograd.grad(-elbo, [loc, log_scale], retain_graph=True)
    expected_cubo = torch.autograd.grad(cubo, [loc, log_scale])
    chi = ChiSquare(4)
    chi.reference, chi.reference_rate = float(cubo.detach()), 0.0
    for objective, expected in ((Renyi(0.5, 1), expected_elbo), (chi, expected_cubo)):
        set_guide([0.2], [0.6])
        draws = gradient_draws(objective, model1, normal_guide, x, 200)
        expected = torch.cat([e.reshape(-1) for e in expected])
        se = draws.std(0) / math.sqrt(len(draws))
        assert ((draws.mean(0) - expected).abs() < 4 * se).all(), (draws.mean(0), expected, se)


@pytest.mark.parametrize("name", OBJECTIVES)
def test_dreg_gradient_is_zero_at_the_exact_posterior(name):
    """At q = p every log-weight is log p(x) whatever the draw, so its path derivative, DReG's
    gradient, is zero for every draw; the total gradient is not (its score term)."""
    mean, cov = posterior1(X1)
    set_guide([float(mean)], [float(cov.sqrt())])
    dreg = gradient_draws(OBJECTIVES[name](), model1, normal_guide, X1, 5)
    make_total = {
        "iwae": lambda: IWAE(8, gradient="total"),
        "renyi-0.5": lambda: Renyi(0.5, 8, gradient="total"),
        "renyi-2": lambda: Renyi(2.0, 8, gradient="total"),
        "chi-square": lambda: ChiSquare(16, gradient="total"),
    }[name]
    total = gradient_draws(make_total(), model1, normal_guide, X1, 5)
    assert dreg.abs().max() < 1e-10
    assert total.abs().max() > 1e-3


def test_total_gradient_is_pyros_renyi_elbo():
    """gradient='total' is Pyro's RenyiELBO estimator: the same draws give the same
    gradient."""
    set_guide([0.2, 0.9], [0.5, 0.7])
    pyro.set_rng_seed(1)
    objective = IWAE(8, gradient="total", max_plate_nesting=1)
    ours = gradient_draws(objective, model2, diagonal_guide, X2, 1)
    set_guide([0.2, 0.9], [0.5, 0.7])
    pyro.set_rng_seed(1)
    pyros = gradient_draws(
        RenyiELBO(alpha=0, num_particles=8, vectorize_particles=True, max_plate_nesting=1),
        model2,
        diagonal_guide,
        X2,
        1,
    )
    assert torch.allclose(ours, pyros, rtol=1e-10, atol=1e-12)


def flow_gradients(make_guide, objective: ParticleObjective, seed: int = 0) -> list[torch.Tensor]:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = make_guide()
    pyro.set_rng_seed(seed + 1)
    guide.zero_grad()
    objective.loss_and_grads(model2, guide, X2)
    grads = [p.grad.clone() for p in guide.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().max() > 0 for g in grads)
    return grads


@pytest.mark.parametrize("cls", [AutoFlow, AutoMeanFieldFlow])
@pytest.mark.parametrize("make", list(OBJECTIVES.values()), ids=list(OBJECTIVES))
def test_flow_guides_give_the_same_dreg_gradient_with_and_without_stl(cls, make):
    """DReG needs log q with the guide's parameters fixed: an STL guide gives it, a live one
    gets its score term subtracted. Both give the same gradient for the same draws."""

    def guide(stl: bool):  # noqa: ANN202
        return lambda: cls(
            model2, "realnvp", init="loc", stl=stl, transforms=2, hidden=(8,), model_args=(X2,)
        )

    with_stl = flow_gradients(guide(True), make())
    live = flow_gradients(guide(False), make())
    assert len(with_stl) == len(live)
    for a, b in zip(with_stl, live):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-10)


def test_the_total_gradient_refuses_an_stl_guide():
    guide = AutoFlow(model1, affine, init="loc", stl=True, model_args=(X1,))
    with pytest.raises(ValueError, match="stl=False"):
        IWAE(4, gradient="total").loss_and_grads(model1, guide, X1)
    live = AutoFlow(model1, affine, init="loc", stl=False, model_args=(X1,))
    assert math.isfinite(IWAE(4, gradient="total").loss_and_grads(model1, live, X1))


# -- amortized guides, model parameters, batching ---------------------------------------------


def local_model(x: torch.Tensor) -> None:
    with pyro.plate("data", len(x)):
        z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 2), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


@pytest.mark.parametrize("make", list(OBJECTIVES.values()), ids=list(OBJECTIVES))
def test_amortized_guide_with_and_without_stl(make):
    """A conditional flow guide of local latents: 3 SVI steps (the coupling nets start at the
    identity, so the context matters only after a step), then the DReG gradients, encoder
    included, are the same with STL on and off."""
    x = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = {}
    for stl in (True, False):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        encoder = torch.nn.Linear(2, 3).double()
        guide = AutoAmortizedFlow(
            local_model, encoder, "realnvp", stl=stl, transforms=1, hidden=(8,), model_args=(x,)
        )
        objective = make()
        svi = SVI(local_model, guide, Adam({"lr": 0.05}), objective)
        steps(svi, 3, x)
        guide.zero_grad()
        assert math.isfinite(objective.loss_and_grads(local_model, guide, x))
        grads[stl] = [p.grad.clone() for p in guide.parameters()]
        assert encoder.weight.grad.abs().max() > 0
    for a, b in zip(grads[True], grads[False], strict=True):
        assert torch.isfinite(a).all() and torch.allclose(a, b, rtol=1e-8, atol=1e-10)


def model_with_parameter(x: torch.Tensor) -> None:
    prior_loc = pyro.param("prior_loc", x.new_tensor(0.5))
    z = pyro.sample("z", dist.Normal(prior_loc, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def test_model_parameters_get_the_standard_gradient():
    """The model's own parameters get sum_k dF/dl_k grad log p, not DReG's weights: for the
    same draws DReG and the total gradient agree on them exactly (and differ on the
    guide's)."""
    grads = {}
    for gradient in ("dreg", "total"):
        set_guide([0.2], [0.6])
        pyro.set_rng_seed(3)
        IWAE(8, gradient=gradient).loss_and_grads(model_with_parameter, normal_guide, X1)
        store = pyro.get_param_store()
        grads[gradient] = [
            store.get_param(n).unconstrained().grad.clone() for n in ("prior_loc", "loc")
        ]
    assert torch.allclose(grads["dreg"][0], grads["total"][0], rtol=1e-10)
    assert not torch.allclose(grads["dreg"][1], grads["total"][1])
    with pytest.raises(ValueError, match="upper bound"):
        ChiSquare(4).loss_and_grads(model_with_parameter, normal_guide, X1)


def single_draw_model(features: torch.Tensor, y: torch.Tensor) -> None:
    w = pyro.sample("w", dist.Normal(features.new_zeros(2), 1.0).to_event(1))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Normal(features @ w, 1.0), obs=y)


def test_a_model_written_for_one_draw_falls_back_to_a_loop():
    X = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = X.sum(-1)
    guide = pyro.infer.autoguide.AutoNormal(single_draw_model)
    objective = IWAE(4)
    with pytest.warns(UserWarning, match="one at a time"):
        assert math.isfinite(objective.loss_and_grads(single_draw_model, guide, X, y))
    assert objective.vectorize_particles is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isfinite(objective.loss(single_draw_model, guide, X, y))


def test_a_failing_draw_is_redrawn_and_keeps_the_particle_plate():
    # The model raises once (as an ODE model at a wild draw): the batch is redrawn and the
    # particles stay batched. Two batches failing in a row read as a model that does not
    # broadcast: the particles are then drawn one at a time.
    X = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = X.sum(-1)
    failures = {"left": 0}

    def flaky_model(features: torch.Tensor, y: torch.Tensor) -> None:
        w = pyro.sample("w", dist.Normal(features.new_zeros(2), 1.0).to_event(1))
        if failures["left"]:
            failures["left"] -= 1
            raise ValueError("the solver gave up")
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal((features * w).sum(-1), 1.0), obs=y)

    guide = pyro.infer.autoguide.AutoNormal(flaky_model)
    guide(X, y)
    objective = IWAE(4, max_plate_nesting=1)
    failures["left"] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fall-back warning
        assert math.isfinite(objective.loss(flaky_model, guide, X, y))
    assert objective.vectorize_particles is True and failures["left"] == 0
    failures["left"] = 2
    with pytest.warns(UserWarning, match="one at a time"):
        assert math.isfinite(objective.loss(flaky_model, guide, X, y))
    assert objective.vectorize_particles is False


def test_a_diverged_guide_raises_and_keeps_the_particle_plate():
    # Parameters gone NaN (a pilot run at too large a step size) fail in the plate and out of
    # it: the error is raised and the particles stay batched for the steps after a restore.
    X = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = X.sum(-1)
    guide = pyro.infer.autoguide.AutoNormal(single_draw_model)
    guide(X, y)
    objective = IWAE(4, max_plate_nesting=1)
    loc = pyro.get_param_store().get_param("AutoNormal.locs.w")
    saved = loc.detach().clone()
    with torch.no_grad():
        loc.fill_(float("nan"))
    with pytest.raises(ValueError, match="invalid values"):
        objective.loss(single_draw_model, guide, X, y)
    assert objective.vectorize_particles is True
    with torch.no_grad():
        loc.copy_(saved)
    with pytest.warns(UserWarning, match="one at a time"):  # this model needs the loop
        assert math.isfinite(objective.loss(single_draw_model, guide, X, y))
    assert objective.vectorize_particles is False


def test_an_objective_is_an_elbo_for_pyro():
    objective = IWAE(4)
    assert isinstance(objective, pyro.infer.ELBO)
    module = objective(model1, normal_guide)
    loss = module(X1)
    assert loss.requires_grad and loss.shape == ()


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: IWAE(0), "num_particles"),
        (lambda: IWAE(2.5), "num_particles"),
        (lambda: Renyi(1.0), "ELBO"),
        (lambda: Renyi(-1.0), "ChiSquare"),
        (lambda: Renyi(float("nan")), "alpha"),
        (lambda: Renyi(True), "alpha"),
        (lambda: ChiSquare(4, gradient="score"), "gradient"),
    ],
)
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def poisson_model(x: torch.Tensor) -> None:
    k = pyro.sample("k", dist.Poisson(x.new_tensor(3.0)))
    pyro.sample("x", dist.Normal(k, 1.0), obs=x[0])


def poisson_guide(x: torch.Tensor) -> None:
    pyro.sample(
        "k",
        dist.Poisson(pyro.param("rate", x.new_tensor(3.0), constraint=dist.constraints.positive)),
    )


def test_guides_the_weights_cannot_use():
    with pytest.raises(TypeError, match="reparameteris"):
        IWAE(2).loss_and_grads(poisson_model, poisson_guide, X1)
    with pytest.raises(ValueError, match="does not sample"):
        IWAE(2).loss_and_grads(model1, lambda x: None, X1)


def test_objectives_follow_the_data_device():
    """Run with torch's default device set to ``meta``: a tensor made without following the
    data would be a meta tensor, and the first operation mixing it with the data would fail."""
    guides = [
        AutoFlow(
            model2, "realnvp", init="loc", stl=stl, transforms=1, hidden=(8,), model_args=(X2,)
        )
        for stl in (True, False)
    ] + [diagonal_guide]
    objectives = [IWAE(4), Renyi(2.0, 4), ChiSquare(4)]
    for guide in guides:  # the plate nesting is guessed on the first call
        for objective in objectives:
            objective.loss_and_grads(model2, guide, X2)
    torch.set_default_device("meta")
    try:
        for guide in guides:
            for objective in objectives:
                assert math.isfinite(objective.loss_and_grads(model2, guide, X2))
                assert math.isfinite(objective.loss(model2, guide, X2))
    finally:
        torch.set_default_device(None)
