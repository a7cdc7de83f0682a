"""The numerical routines behind the destructors: incomplete Beta, Gaussian CDF clamps, and the
batched monotone inverse with implicit gradients."""

from __future__ import annotations

import torch
from scipy import special as sp

from pyroflows.destructors.special import betainc, clamp_open_unit, normal_icdf
from pyroflows.numerics.bisection import monotone_inverse


def test_betainc_matches_scipy():
    g = torch.Generator().manual_seed(0)
    a = 0.3 + 20 * torch.rand(200, generator=g, dtype=torch.float64)
    b = 0.3 + 20 * torch.rand(200, generator=g, dtype=torch.float64)
    x = torch.rand(200, generator=g, dtype=torch.float64)
    expected = torch.as_tensor(sp.betainc(a.numpy(), b.numpy(), x.numpy()))
    assert (betainc(a, b, x) - expected).abs().max() < 1e-12
    assert betainc(a[:2], b[:2], torch.tensor([0.0, 1.0], dtype=torch.float64)).tolist() == [
        0.0,
        1.0,
    ]


def test_betainc_gradient_in_x_is_the_density():
    a, b = torch.tensor(2.5, dtype=torch.float64), torch.tensor(4.0, dtype=torch.float64)
    x = torch.tensor([0.1, 0.4, 0.8], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(betainc(a, b, x).sum(), x)
    density = torch.as_tensor(
        x.detach().numpy() ** 1.5 * (1 - x.detach().numpy()) ** 3 / sp.beta(2.5, 4.0)
    )
    assert torch.allclose(grad, density, atol=1e-12)


def test_icdf_clamp_is_symmetric_and_finite():
    u = torch.tensor([0.0, 1.0], dtype=torch.float64)
    z = normal_icdf(u)
    assert torch.isfinite(z).all() and abs(float(z[0] + z[1])) < 1e-6
    assert clamp_open_unit(torch.tensor([0.5])).item() == 0.5


def test_monotone_inverse_value_and_implicit_gradients():
    theta = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    u = torch.tensor([-3.0, 0.5, 10.0], dtype=torch.float64, requires_grad=True)

    def f(x):  # noqa: ANN001, ANN202
        return theta * x + x**3

    def df(x):  # noqa: ANN001, ANN202
        return theta + 3 * x**2

    lo, hi = torch.full_like(u, -10), torch.full_like(u, 10)
    for newton in (False, True):
        x = monotone_inverse(f, df, u, lo, hi, newton=newton)
        assert (f(x) - u).abs().max() < 1e-12
        gu, gt = torch.autograd.grad(x.sum(), (u, theta))
        slope = df(x.detach())
        assert torch.allclose(gu, 1 / slope)
        assert torch.allclose(gt, (-x.detach() / slope).sum())
