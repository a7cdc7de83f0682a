"""The numerical routines behind the destructors: incomplete Beta, Gaussian CDF clamps, the
batched monotone inverse with implicit gradients, and the mixture's EM in single precision."""

from __future__ import annotations

import pytest
import torch
from scipy import special as sp

import pyroflows
from pyroflows.destructors.mixture import MixtureDestructor, jittered_cholesky
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


def test_float32_mixture_fit_matches_float64():
    """EM on 50,000 rows with a nearly flat component (sd 3e-3 across a line of sd 30): summed
    in float32 its scatter matrix drifts (the fit lost 0.014 nats per row); EM's statistics
    are float64, so the float32 fit is the float64 one."""
    g = torch.Generator().manual_seed(0)
    n = 50_000
    t = 30 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    flat = 0.5 * t + 3e-3 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    x = torch.cat([t, flat, torch.randn(n, 1, generator=g, dtype=torch.float64)], 1)
    x[::2] += 100
    scores = []
    for dtype in (torch.float64, torch.float32):
        d = MixtureDestructor(3, components=2, max_iter=15, tol=0.0).to(dtype)
        scores.append(d.fit(x.to(dtype)).score(x.to(dtype)))
        assert d.loc.dtype == dtype
    assert abs(scores[0] - scores[1]) < 1e-4, scores


def test_jittered_cholesky_touches_only_failing_matrices():
    good = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
    singular = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    L = jittered_cholesky(torch.stack([good, singular]))
    assert torch.equal(L[0], torch.linalg.cholesky(good))
    rebuilt = L[1] @ L[1].T
    assert (rebuilt - singular).abs().max() < 1e-12  # a jitter of a few machine epsilons
    assert torch.linalg.cholesky_ex(rebuilt).info == 0
    with pytest.raises(ValueError, match="not positive definite"):
        jittered_cholesky(-good)


def test_beta_fit_reaches_the_maximum_likelihood_to_rounding():
    """The Newton fit of the Beta marginals converges to the MLE itself: weights changed in the
    14th digit (another summation order, as over several processes) move the fit by rounding
    only. Refusing steps whose gain lies below loglik's rounding stopped it at sqrt(eps),
    where such a change moved log a by up to 3e-8 (relative)."""
    g = torch.Generator().manual_seed(0)
    x = torch.special.ndtr(torch.randn(600, 3, generator=g, dtype=torch.float64) / 2 + 0.3)
    w = torch.rand(600, generator=g, dtype=torch.float64) + 0.2
    fits = []
    for noise in (0.0, 1e-14, -1e-14):
        changed = w * (1 + noise * torch.randn(600, generator=g, dtype=torch.float64))
        fits.append(pyroflows.destructors.build("beta", 3).double().fit(x, changed))
    for fit in fits[1:]:
        for name in ("log_a", "log_b"):
            torch.testing.assert_close(
                getattr(fit, name), getattr(fits[0], name), rtol=1e-12, atol=1e-14
            )
