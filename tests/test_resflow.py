"""Family-specific checks of residual flows (i-ResNet, Residual Flows): the Lipschitz bound for
any parameter value, analytic Jacobians against autograd, the fixed-point inverse and its
implicit gradients, unbiasedness of the stochastic log-determinants, option validation. (The
registry-wide properties are in ``test_registry_properties.py``.)"""

from __future__ import annotations

import math

import pytest
import torch

from pyroflows.flows import build
from pyroflows.nn.lipschitz import LipschitzLinear, LipschitzMLP, LipSwish
from pyroflows.transforms.residual import ResidualBlock, roulette_weights

D = torch.float64


@torch.no_grad()
def randomize(module: torch.nn.Module, scale: float, seed: int = 0) -> torch.nn.Module:
    """Overwrite every parameter with N(0, scale^2) values: far from any initialisation."""
    generator = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.copy_(scale * torch.randn(p.shape, generator=generator, dtype=D))
    return module


# -- Lipschitz networks ------------------------------------------------------------------------


def test_lipschitz_linear_scales_down_only():
    layer = LipschitzLinear(4, 6, coefficient=0.9).double()
    with torch.no_grad():
        layer.weight.mul_(100.0)
    assert torch.linalg.matrix_norm(layer.normalized_weight(), 2).item() == pytest.approx(
        0.9, abs=1e-12
    )
    with torch.no_grad():
        layer.weight.mul_(0.5e-3 / torch.linalg.matrix_norm(layer.weight, 2))
    assert torch.equal(layer.normalized_weight(), layer.weight)  # sigma = 0.5e-3 < c: untouched


def test_lipswish_is_one_lipschitz_and_its_derivative_is_autograds():
    act = LipSwish().double()
    a = torch.linspace(-20, 20, 4001, dtype=D, requires_grad=True)
    for raw in [-3.0, 0.0, 0.5413, 3.0, 8.0]:
        with torch.no_grad():
            act.raw_beta.fill_(raw)
        (grad,) = torch.autograd.grad(act(a).sum(), a)
        assert torch.allclose(act.derivative(a), grad, atol=1e-14)
        assert grad.abs().max() <= 1.0


@pytest.mark.parametrize("seed", range(3))
def test_lipschitz_bound_holds_for_any_parameters(seed):
    """max singular value of autograd's Jacobian over random points and contexts < c."""
    c = 0.9
    g = randomize(LipschitzMLP(3, hidden=(16, 16), context=2, coefficient=c).double(), 3.0, seed)
    z = 3 * torch.randn(40, 3, dtype=D, generator=torch.Generator().manual_seed(seed))
    ctx = 3 * torch.randn(40, 2, dtype=D, generator=torch.Generator().manual_seed(seed + 10))
    jac = torch.stack(
        [
            torch.autograd.functional.jacobian(lambda v, ci=ci: g(v, ci), zi)
            for zi, ci in zip(z, ctx)
        ]
    )
    sigma = torch.linalg.matrix_norm(jac, 2)
    assert sigma.max() < c**3 + 1e-12  # three normalised layers: Lip <= c^3 < c
    # A large-scale parameter vector saturates the bound on every layer.
    for layer in g.layers:
        assert torch.linalg.matrix_norm(layer.normalized_weight(), 2).item() == pytest.approx(
            c, abs=1e-12
        )


def test_analytic_jacobian_matches_autograd():
    g = randomize(LipschitzMLP(4, hidden=(8, 5), context=2).double(), 1.0)
    z, ctx = torch.randn(6, 4, dtype=D), torch.randn(6, 2, dtype=D)
    _, weights, slopes = g.evaluate(z, ctx)
    expected = torch.stack(
        [
            torch.autograd.functional.jacobian(lambda v, ci=ci: g(v, ci), zi)
            for zi, ci in zip(z, ctx)
        ]
    )
    assert torch.allclose(LipschitzMLP.jacobian(weights, slopes), expected, atol=1e-14)


# -- the block: inverse and implicit gradients ----------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_inverse_under_random_parameters(seed):
    """Near-saturated Lipschitz constant (0.99 per layer, random weights): still a bijection."""
    torch.manual_seed(seed)
    t = randomize(ResidualBlock(4, context=2, hidden=(16,), coefficient=0.99).double(), 2.0, seed)
    z, ctx = 4 * torch.randn(100, 4, dtype=D), torch.randn(100, 2, dtype=D)
    x, ladj = t.call_and_ladj(z, ctx)
    z_back, inv_ladj = t.inverse_and_ladj(x, ctx)
    assert (z_back - z).abs().max() < 1e-12
    assert (ladj + inv_ladj).abs().max() < 1e-12


def test_inverse_has_implicit_gradients():
    torch.manual_seed(0)
    t = randomize(ResidualBlock(3, hidden=(8,)).double(), 1.0)
    x = torch.randn(4, 3, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: t.inverse_and_ladj(v)[0], (x,))
    # Parameter gradients of the solved inverse equal central finite differences.
    p = t.net.layers[0].bias
    loss = lambda: t.inverse_and_ladj(x.detach())[0].square().sum()  # noqa: E731
    (grad,) = torch.autograd.grad(loss(), p)
    eps, fd = 1e-6, torch.zeros_like(p)
    with torch.no_grad():
        for i in range(p.numel()):
            p[i] += eps
            up = loss()
            p[i] -= 2 * eps
            fd[i] = (up - loss()) / (2 * eps)
            p[i] += eps
    assert torch.allclose(grad, fd, atol=1e-7)


def test_high_dimensional_path():
    """Above 64 features: no Newton steps, a Neumann-series implicit step, roulette log-det."""
    torch.manual_seed(0)
    t = ResidualBlock(70, hidden=(32,)).double()
    assert t.logdet == "roulette" and t.newton == 0
    z = torch.randn(8, 70, dtype=D)
    x, _ = t.call_and_ladj(z)
    assert (t.inverse_and_ladj(x)[0] - z).abs().max() < 1e-10
    jac_inv = torch.autograd.functional.jacobian(
        lambda v: t.inverse_and_ladj(v)[0], x[:1].detach()
    )[0, :, 0]
    jac_fwd = torch.autograd.functional.jacobian(lambda v: t.call_and_ladj(v)[0], z[:1])[0, :, 0]
    assert (jac_inv @ jac_fwd - torch.eye(70, dtype=D)).abs().max() < 1e-10


# -- log-determinant estimators -------------------------------------------------------------------


def _block(logdet: str, **options) -> ResidualBlock:  # noqa: ANN003
    """A block with a strongly non-identity Jacobian (spectral norm ~0.6, where random
    networks give ~0.3): rotations scaled by 0.8, pre-activations near the LipSwish's slope 1."""
    t = ResidualBlock(3, hidden=(3,), logdet=logdet, **options).double()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in t.net.layers:
            q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=D, generator=generator))
            layer.weight.copy_(0.8 * q)
            layer.bias.fill_(1.0)
    return t


def _draws(t: ResidualBlock, z: torch.Tensor, calls: int, batch: int) -> torch.Tensor:
    """``calls`` i.i.d. draws of the estimator (each the mean of ``batch`` rows at point z)."""
    rows = z.expand(batch, -1)
    with torch.no_grad():
        return torch.stack([t.call_and_ladj(rows)[1].mean() for _ in range(calls)])


def _exact(t: ResidualBlock, z: torch.Tensor) -> tuple[float, torch.Tensor]:
    _, weights, slopes = t.net.evaluate(z)
    jac = LipschitzMLP.jacobian(weights, slopes).detach()
    return torch.linalg.slogdet(torch.eye(3, dtype=D) + jac)[1].item(), jac


@pytest.mark.parametrize("roulette", ["geometric", "poisson"])
def test_roulette_is_unbiased(roulette):
    t = _block("roulette", roulette=roulette, n_terms=1, extra_terms=1.5)
    z = torch.tensor([[0.3, -0.2, 0.1]], dtype=D)
    exact, jac = _exact(t, z)
    assert torch.linalg.matrix_norm(jac, 2).item() > 0.5  # a problem where the tail matters
    torch.manual_seed(1)
    draws = _draws(t, z, calls=1500, batch=20)
    se = draws.std().item() / math.sqrt(draws.numel())
    assert abs(draws.mean().item() - exact) < 3 * se
    # The same estimator without its random tail is visibly biased at this precision.
    truncated = _draws(_block("series", n_terms=1), z, calls=1500, batch=20)
    assert abs(truncated.mean().item() - exact) > 10 * se


def test_roulette_gradient_is_unbiased():
    """Neumann-series gradient: mean over draws within 3 standard errors of the exact gradient,
    projected on the direction where the one-term series' gradient is wrong (which then fails)."""
    z = torch.tensor([[0.3, -0.2, 0.1]], dtype=D)
    grad = lambda f, ps: torch.autograd.grad(f, ps, allow_unused=True, materialize_grads=True)  # noqa: E731
    exact_t = _block("exact")
    exact = grad(exact_t.call_and_ladj(z)[1].sum(), list(exact_t.parameters()))
    _, weights, slopes = exact_t.net.evaluate(z)
    first_term = grad(
        torch.diagonal(LipschitzMLP.jacobian(weights, slopes), dim1=-2, dim2=-1).sum(),
        list(exact_t.parameters()),
    )
    direction = [e - f for e, f in zip(exact, first_term)]  # gradient of the terms k >= 2
    project = lambda grads: sum((g * d).sum() for g, d in zip(grads, direction)).item()  # noqa: E731
    rows = z.expand(50, -1)
    for logdet, unbiased in [("roulette", True), ("series", False)]:
        t = _block(logdet, n_terms=1, extra_terms=1.5)
        torch.manual_seed(2)
        draws = torch.tensor(
            [
                project(grad(t.call_and_ladj(rows)[1].mean(), list(t.parameters())))
                for _ in range(400)
            ]
        )
        se = draws.std().item() / math.sqrt(draws.numel())
        assert (abs(draws.mean().item() - project(exact)) < 3 * se) == unbiased, logdet


def test_series_mean_is_the_truncated_series_and_converges():
    t = _block("series", n_terms=3)
    z = torch.tensor([[0.3, -0.2, 0.1]], dtype=D)
    exact, jac = _exact(t, z)
    power = torch.eye(3, dtype=D)
    partial = []
    for k in range(1, 41):
        power = power @ jac[0]
        partial.append(
            (partial[-1] if partial else 0.0) + (-1) ** (k + 1) / k * torch.trace(power).item()
        )
    # Known answer of the expectation: the 3-term series, by Hutchinson's identity.
    torch.manual_seed(3)
    draws = _draws(t, z, calls=600, batch=20)
    se = draws.std().item() / math.sqrt(draws.numel())
    assert abs(draws.mean().item() - partial[2]) < 3 * se
    # The truncated series converges to the exact log-det at the bound's geometric rate.
    kappa = torch.linalg.matrix_norm(jac[0], 2).item()
    for n in (1, 5, 10, 40):
        assert abs(partial[n - 1] - exact) <= 3 * kappa ** (n + 1) / ((n + 1) * (1 - kappa)) + 1e-14
    errors = [abs(p - exact) for p in partial]
    assert errors[39] < 1e-10 < errors[0]
    # And the estimator with 40 terms is unbiased for the exact value.
    long = _draws(_block("series", n_terms=40), z, calls=400, batch=20)
    assert abs(long.mean().item() - exact) < 3 * long.std().item() / math.sqrt(long.numel())


def test_roulette_weights():
    assert roulette_weights(2, 0, "geometric", 1.0) == [1.0, 1.0]
    assert roulette_weights(1, 3, "geometric", 1.0) == [1.0, 2.0, 4.0, 8.0]  # 1 / 0.5^j
    w = roulette_weights(0, 2, "poisson", 2.0)
    assert w[0] == pytest.approx(1 / (1 - math.exp(-2)))
    assert w[1] == pytest.approx(1 / (1 - 3 * math.exp(-2)))


def test_stochastic_presets_round_trip_and_estimate():
    """Series and roulette flows invert exactly; their log-densities scatter around the exact one."""
    torch.manual_seed(0)
    exact = build("resflow", 3, transforms=2, hidden=(16,), logdet="exact").double()
    x = torch.randn(5, 3, dtype=D)
    for logdet in ["series", "roulette"]:
        flow = build("resflow", 3, transforms=2, hidden=(16,), logdet=logdet, n_terms=8).double()
        flow.load_state_dict(exact.state_dict())
        T = flow.transform()
        z, _ = T.inverse_and_ladj(x)
        assert (T.call_and_ladj(z)[0] - x).abs().max() < 1e-12
        with torch.no_grad():
            mean = torch.stack([flow().log_prob(x) for _ in range(200)]).mean(0)
        assert (mean - exact().log_prob(x)).abs().max() < 0.05


def test_preset_variants():
    torch.manual_seed(0)
    x = torch.randn(6, 2, dtype=D)
    for options in [
        {"fast": "sampling"},
        {"actnorm": False},
        {"coefficient": 0.5, "newton": 0, "iterations": 80},
    ]:
        flow = build("resflow", 2, context=1, transforms=2, hidden=(8,), **options).double()
        c = torch.randn(6, 1, dtype=D)
        T = flow.transform(c)
        z, inv_ladj = T.inverse_and_ladj(x)
        x_back, ladj = T.call_and_ladj(z)
        assert (x_back - x).abs().max() < 1e-10 and (ladj + inv_ladj).abs().max() < 1e-10


# -- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"logdet": "bogus"}, "logdet"),
        ({"coefficient": 1.0}, "coefficient"),
        ({"coefficient": 0}, "coefficient"),
        ({"coefficient": True}, "coefficient"),
        ({"n_terms": 0}, "n_terms"),
        ({"roulette": "binomial"}, "roulette"),
        ({"extra_terms": 0.0}, "extra_terms"),
        ({"fast": "both"}, "fast"),
        ({"iterations": -1}, "iterations"),
        ({"newton": 1.5}, "newton"),
        ({"hidden": ()}, "hidden"),
        ({"transforms": 0}, "transforms"),
    ],
)
def test_bad_options_raise(options, match):
    with pytest.raises(ValueError, match=match):
        build("resflow", 3, **options)


def test_actnorm_must_be_a_flag():
    with pytest.raises(TypeError, match="actnorm"):
        build("resflow", 3, actnorm="yes")


def test_newton_needs_a_dense_jacobian():
    with pytest.raises(ValueError, match="newton"):
        ResidualBlock(65, newton=2)
