"""Gaussianization flows (``gf``): the marginal Gaussianization map, Householder rotations, the
greedy initialisation and joint training.

The registry-wide properties (round trips, log-determinants against autograd, shapes,
gradients, normalisation, save/load, Pyro interop, compilation) are checked for ``gf`` by
``tests/test_registry_properties.py -k gf``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import pyroflows
from pyroflows.data import toy
from pyroflows.flows import build, fit_logistic_mixture, init_gf
from pyroflows.transforms import GaussianizationMap, HouseholderRotation, MarginalGaussianization
from pyroflows.transforms.gaussianization import ndtri_log
from pyroflows.transforms.orthogonal import householder_product, householder_vectors


def logistic_params(
    m: GaussianizationMap, n: int, loc: float = 0.0, scale: float = 1.0
) -> torch.Tensor:
    """Raw parameters of a single standard-logistic component (K = 1), shape (n, 3)."""
    one = torch.ones(n, 1, dtype=torch.float64)
    return m.raw_params(one, loc * one, scale * one)


# -- the marginal map: known answers ----------------------------------------------------------


def test_single_logistic_is_probit_of_sigmoid():
    """K = 1, mu = 0, s = 1: z = Phi^{-1}(sigmoid(x)), log dz/dx = log sigmoid'(x) - log phi(z)."""
    m = GaussianizationMap(1).double()
    x = torch.linspace(-30, 30, 121, dtype=torch.float64)
    params = logistic_params(m, x.numel())
    z, log_slope = m(x, params)
    expected = torch.special.ndtri(torch.sigmoid(x))
    upper = x > 0  # 1 - sigmoid(x) is exact from the other side
    expected[upper] = -torch.special.ndtri(torch.sigmoid(-x[upper]))
    assert (z - expected).abs().max() < 1e-12
    log_sig_prime = F.logsigmoid(x) + F.logsigmoid(-x)
    expected_slope = log_sig_prime + 0.5 * expected.square() + 0.5 * math.log(2 * math.pi)
    assert (log_slope - expected_slope).abs().max() < 1e-10
    x_back, inverse_slope = m.inverse(z, params)
    assert (x_back - x).abs().max() < 1e-9
    assert (inverse_slope + log_slope).abs().max() < 1e-9


@pytest.mark.parametrize("dtype,far", [(torch.float64, 1e4), (torch.float32, 300.0)])
def test_tails_stay_finite_and_exact(dtype, far):
    """Far beyond the smallest normal number: log Phi(z) equals log F(x), the log-det is finite."""
    m = GaussianizationMap(1).to(dtype)
    x = torch.tensor([-far, -far / 3, far / 3, far], dtype=dtype)
    params = logistic_params(m, 4).to(dtype)
    z, log_slope = m(x, params)
    assert torch.isfinite(z).all() and torch.isfinite(log_slope).all()
    lower = torch.special.log_ndtr(z[:2])
    assert torch.allclose(
        lower, F.logsigmoid(x[:2]), rtol=1e-10 if dtype == torch.float64 else 1e-5
    )
    assert torch.allclose(z[2:], -z[:2].flip(0))  # symmetric mixture, symmetric z
    x_back, _ = m.inverse(z, params)
    assert torch.allclose(x_back, x, rtol=1e-8 if dtype == torch.float64 else 1e-4)


def test_ndtri_log_value_and_derivative():
    lp = torch.tensor(
        [-0.7, -5.0, -300.0, -706.0, -708.5, -2000.0], dtype=torch.float64, requires_grad=True
    )
    z = ndtri_log(lp)
    assert torch.allclose(torch.special.log_ndtr(z), lp, rtol=1e-13, atol=0)
    assert torch.allclose(z[:2], torch.special.ndtri(lp[:2].exp()), atol=1e-14)
    (grad,) = torch.autograd.grad(z.sum(), lp)
    expected = torch.exp(torch.special.log_ndtr(z) + 0.5 * z.square() + 0.5 * math.log(2 * math.pi))
    assert torch.allclose(grad, expected.detach(), rtol=1e-9)


def test_default_parameters_are_close_to_identity():
    m = GaussianizationMap(8).double()
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    z, log_slope = m(x, torch.zeros(61, m.num_params, dtype=torch.float64))
    assert (z - x).abs().max() < 0.095 and log_slope.abs().max() < 0.14


# -- rotations ---------------------------------------------------------------------------------


@pytest.mark.parametrize("reflections", [1, 3, 5])
def test_rotation_is_orthogonal_with_zero_log_det(reflections):
    torch.manual_seed(0)
    t = HouseholderRotation(5, reflections).double()
    with torch.no_grad():
        t.vectors.mul_(3).add_(1)
    q = t.matrix()
    assert (q @ q.T - torch.eye(5, dtype=torch.float64)).abs().max() < 1e-10
    z = torch.randn(7, 5, dtype=torch.float64)
    x, ladj = t.call_and_ladj(z)
    assert torch.allclose(x, z @ q.T, atol=1e-12)
    z_back, inv_ladj = t.inverse_and_ladj(x)
    assert (z_back - z).abs().max() < 1e-12
    assert torch.equal(ladj, torch.zeros(7, dtype=torch.float64)) and torch.equal(inv_ladj, ladj)


@pytest.mark.parametrize("reflections", [2, 3, 4, 6])
def test_set_matrix_matches_up_to_column_signs(reflections):
    w = torch.linalg.qr(
        torch.randn(4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    )[0]
    t = HouseholderRotation(4, reflections).double()
    t.set_matrix(w)
    signs = (t.matrix() * w).sum(0)  # column-wise inner products: +-1 where the columns match
    matched = min(reflections, 4)
    assert (signs[:matched].abs() - 1).abs().max() < 1e-12


def test_householder_is_shared_with_sylvester():
    """Sylvester's Q (flip=False) is householder_product of its vectors."""
    torch.manual_seed(0)
    t = pyroflows.transforms.Sylvester(3, reflections=2).double()
    v = t._unpack(None)[0]
    y = torch.randn(4, 3, dtype=torch.float64)
    assert torch.equal(t._reflect(y, v, transpose=False), householder_product(y, v))
    assert torch.equal(t._reflect(y, v, transpose=True), householder_product(y, v, transpose=True))


# -- greedy initialisation and joint training ---------------------------------------------------


def test_fit_logistic_mixture_recovers_known_mixture():
    g = torch.Generator().manual_seed(0)
    n = 40000
    first = torch.rand(n, generator=g, dtype=torch.float64) < 0.3
    u = torch.rand(n, generator=g, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    logistic = torch.log(u) - torch.log1p(-u)
    x = torch.where(first, -3 + 0.5 * logistic, 2 + 1.0 * logistic)[:, None]
    weights, loc, scale = fit_logistic_mixture(x, 2, steps=50)
    order = loc[0].argsort()
    assert torch.allclose(
        weights[0, order], torch.tensor([0.3, 0.7], dtype=torch.float64), atol=0.01
    )
    assert torch.allclose(loc[0, order], torch.tensor([-3.0, 2.0], dtype=torch.float64), atol=0.05)
    assert torch.allclose(scale[0, order], torch.tensor([0.5, 1.0], dtype=torch.float64), atol=0.05)


def test_greedy_init_then_joint_training_on_moons():
    """Measured (seed 0, 2000 train / 2000 test points): standard normal -3.792, greedy -2.720,
    after 20 epochs of joint training -2.575 nats per point."""
    train, test = toy("moons", 2000, seed=0).double(), toy("moons", 2000, seed=1).double()
    baseline = torch.distributions.Normal(0.0, 1.0).log_prob(test).sum(-1).mean().item()
    torch.manual_seed(0)
    flow = build("gf", 2, transforms=4, components=8).double()
    assert init_gf(flow, train) is flow
    with torch.no_grad():
        greedy = flow().log_prob(test).mean().item()
    assert greedy > baseline + 0.9 and greedy > -2.80
    pyroflows.infer.fit(flow, train, epochs=20, lr=3e-3, progress=False, seed=0)
    with torch.no_grad():
        joint = flow().log_prob(test).mean().item()
    assert joint > greedy + 0.08


def test_init_of_conditional_flow_uses_context():
    x = toy("moons", 400, seed=0).double()
    c = x[:, :1].clone()
    flow = build("gf", 2, context=1, transforms=2, components=4, hidden=(8,)).double()
    init_gf(flow, x, c)
    lp = flow(c).log_prob(x)
    assert torch.isfinite(lp).all() and lp.mean() > -3.0
    with pytest.raises(ValueError, match="conditional"):
        init_gf(flow, x)


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"components": 0},
        {"reflections": 0},
        {"transforms": 0},
        {"hidden": ()},
        {"log_scale_bound": 0.0},
    ],
)
def test_bad_options_raise(options):
    with pytest.raises(ValueError):
        build("gf", 3, context=2, **options)


def test_bad_init_input_raises():
    flow = build("gf", 2, transforms=2, components=4).double()
    good = toy("moons", 100).double()
    with pytest.raises(ValueError, match="shape"):
        init_gf(flow, good[:, :1])
    with pytest.raises(ValueError):
        init_gf(flow, torch.full((100, 2), float("nan")))
    with pytest.raises(ValueError, match="at least"):
        init_gf(flow, good[:5])
    with pytest.raises(ValueError, match="constant"):
        init_gf(flow, torch.cat([good[:, :1], torch.ones(100, 1)], 1))
    with pytest.raises(ValueError, match="rotation"):
        init_gf(flow, good, rotation="ica")
    with pytest.raises(TypeError):
        init_gf(build("maf", 2), good)


def test_bad_rotation_and_mixture_raise():
    t = HouseholderRotation(3)
    with pytest.raises(ValueError, match="orthogonal"):
        t.set_matrix(torch.ones(3, 3))
    with pytest.raises(ValueError, match="shape"):
        t.set_matrix(torch.eye(2))
    with pytest.raises(ValueError, match="square"):
        householder_vectors(torch.ones(2, 3), 2)
    m = MarginalGaussianization(3, components=2)
    with pytest.raises(ValueError, match="shape"):
        m.set_mixture(torch.ones(3, 3), torch.zeros(3, 2), torch.ones(3, 2))
    with pytest.raises(ValueError, match="features"):
        m.inv(torch.zeros(4, 2))


def test_set_mixture_rejects_bad_values_and_changes_nothing():
    layer = MarginalGaussianization(2, components=3)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    good = (torch.full((2, 3), 1 / 3), torch.zeros(2, 3), torch.ones(2, 3))
    for index, bad, match in [
        (0, torch.tensor([[0.5, -0.1, 0.6], [1.0, 0.0, 0.0]]), "non-negative"),
        (0, torch.zeros(2, 3), "positive sum"),
        (1, torch.full((2, 3), math.nan), "NaN"),
        (2, torch.zeros(2, 3), "positive"),
    ]:
        args = list(good)
        args[index] = bad
        with pytest.raises(ValueError, match=match):
            layer.set_mixture(*args)
        assert all(torch.equal(v, before[k]) for k, v in layer.state_dict().items())
    # A zero weight is allowed (a component switched off) and keeps the map finite.
    layer.set_mixture(torch.tensor([[1.0, 0.0, 0.0]] * 2), torch.zeros(2, 3), torch.ones(2, 3))
    z, ladj = layer.inverse_and_ladj(torch.randn(5, 2))
    assert torch.isfinite(z).all() and torch.isfinite(ladj).all()


def test_greedy_init_in_float32_with_many_features():
    """eigh in float32 is orthogonal to only ~1e-6: the PCA rotation must still be accepted."""
    for seed in range(5):
        torch.manual_seed(seed)
        flow = build("gf", 16, transforms=2)
        x = torch.randn(1000, 16, dtype=torch.float32)
        init_gf(flow, x)
        assert torch.isfinite(flow().log_prob(x[:10])).all()
