"""The destructor registry-wide property test: every name in ``pyroflows.destructors.available()``.

Each destructor is fitted (small options) to data from its own model class and checked for the
properties every destructor must have: exact inverses, log-determinants equal to autograd's
and to the density, a normalised density, uniform output on its own training data (KS test),
``state_dict``/file/pickle round trips, a working ``as_flow()``, gradients for fine-tuning, and
clear errors on bad input.
"""

from __future__ import annotations

import io
import math
import pickle

import pytest
import torch
from helpers import jacobian_logdet
from scipy import stats

from pyroflows.destructors import available, build

FEATURES = 3
N = 2000

OPTIONS = {
    "histogram": {"bins": 10},
    "beta": {},
    "normal-cdf": {},
    "gaussian": {},
    "mixture": {"components": 3},
    "tree": {"max_leaves": 8, "min_leaf": 50},
    "copula": {"bins": 10},
    "deep": {"layer": "copula", "max_layers": 3, "layer_options": {"bins": 10}, "progress": False},
}


def _correlated(n: int, d: int, g: torch.Generator) -> torch.Tensor:
    A = torch.tensor([[1.0, 0.6, 0.0], [0.0, 0.8, 0.5], [0.0, 0.0, 0.7]], dtype=torch.float64)[
        :d, :d
    ]
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ A + torch.arange(
        d, dtype=torch.float64
    )


def sample_data(name: str, n: int = N, d: int = FEATURES, seed: int = 0) -> torch.Tensor:
    """Data from each destructor's own model class (so its transform must be uniform)."""
    g = torch.Generator().manual_seed(seed)
    if name == "histogram":
        probs = torch.tensor([4.0, 1, 1, 2, 3, 1, 1, 5, 1, 1])
        k = torch.multinomial(probs, n * d, replacement=True, generator=g).reshape(n, d)
        return (k + torch.rand(n, d, generator=g, dtype=torch.float64)) / 10
    if name == "beta":
        a = torch.tensor([2.0, 5.0, 1.5][:d], dtype=torch.float64)
        b = torch.tensor([5.0, 2.0, 1.5][:d], dtype=torch.float64)
        torch.manual_seed(seed)
        return torch.distributions.Beta(a, b).sample((n,))
    if name == "normal-cdf":
        scale = torch.tensor([0.5, 2.0, 1.0][:d], dtype=torch.float64)
        return 3 + scale * torch.randn(n, d, generator=g, dtype=torch.float64)
    if name in ("gaussian", "deep"):
        return _correlated(n, d, g)
    if name == "mixture":
        k = torch.randint(0, 3, (n,), generator=g)
        centres = torch.tensor([[0.0] * d, [4.0] * d, [0.0, 4.0, -4.0][:d]], dtype=torch.float64)
        return centres[k] + _correlated(n, d, g) - torch.arange(d, dtype=torch.float64)
    if name == "tree":
        # Piecewise-uniform: 70% of the mass on the box [0, 0.5] x [0, 1]^(d-1).
        x = torch.rand(n, d, generator=g, dtype=torch.float64)
        first = torch.where(torch.rand(n, generator=g) < 0.7, 0.5 * x[:, 0], 0.5 + 0.5 * x[:, 0])
        return torch.cat([first[:, None], x[:, 1:]], 1)
    if name == "copula":
        return torch.special.ndtr(_correlated(n, d, g) - torch.arange(d, dtype=torch.float64))
    raise KeyError(name)


def make(name: str, device, dtype, d: int = FEATURES):  # noqa: ANN001, ANN201
    x = sample_data(name, d=d).to(device, dtype)
    return build(name, d, **OPTIONS[name]).fit(x), x


@pytest.fixture(params=available())
def name(request: pytest.FixtureRequest) -> str:
    return request.param


def test_every_name_has_test_options():
    assert set(available()) <= set(OPTIONS)
    assert {"histogram", "beta", "normal-cdf", "gaussian", "mixture", "tree", "copula"} <= set(
        available()
    )


def test_round_trip(name, device, dtype, tol):
    d, x = make(name, device, dtype)
    u, _ = d.call_and_ladj(x[:64])
    assert ((u >= 0) & (u <= 1)).all()
    assert (d.inverse_and_ladj(u)[0] - x[:64]).abs().max() < tol["roundtrip"]
    v = 0.01 + 0.98 * torch.rand(
        64, FEATURES, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    v = v.to(device, dtype)
    y = d.from_uniform(v)
    assert (d.to_uniform(y) - v).abs().max() < tol["roundtrip"]
    assert torch.allclose(d(x[:5]), u[:5]) and torch.allclose(d.inv(u[:5]), d.from_uniform(u[:5]))


def test_logdet_is_autograd_logdet_and_log_prob(name, device, dtype, tol):
    d, x = make(name, device, dtype)
    pts = x[:6].detach()
    u, ladj = d.call_and_ladj(pts)
    expected = jacobian_logdet(lambda v: d.call_and_ladj(v)[0], pts)
    assert (ladj - expected).abs().max() < tol["logdet"]
    assert torch.allclose(ladj, d.log_prob(pts))
    back, inv_ladj = d.inverse_and_ladj(u.detach())
    expected_inv = jacobian_logdet(lambda v: d.inverse_and_ladj(v)[0], u.detach())
    assert (inv_ladj - expected_inv).abs().max() < 10 * tol["logdet"]
    assert (ladj + inv_ladj).abs().max() < tol["logdet"]
    assert (d.log_abs_det_jacobian(pts, u) - ladj).abs().max() < tol["logdet"]


def _no_numerical_inverse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every bisection a destructor could run fail, so a single pass is checked as one."""
    import sys

    def refuse(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a numerical inverse ran in a direction declared a single pass")

    for module_name, module in list(sys.modules.items()):
        if module_name.startswith("pyroflows.destructors") and hasattr(module, "monotone_inverse"):
            monkeypatch.setattr(module, "monotone_inverse", refuse)


def _fast_direction_cases():  # noqa: ANN202
    """Every registered destructor, plus stacks whose layers have a slow inverse."""
    cases = [pytest.param(name, {}, id=name) for name in available()]
    cases.append(
        pytest.param(
            "deep",
            {
                "layer": "mixture",
                "max_layers": 2,
                "validation": 0,
                "layer_options": {"components": 2},
                "progress": False,
            },
            id="deep-of-mixtures",
        )
    )
    cases.append(
        pytest.param(
            "deep",
            {
                "layer": "beta",
                "init": "normal-cdf",
                "max_layers": 2,
                "validation": 0,
                "progress": False,
            },
            id="deep-of-betas",
        )
    )
    return cases


@pytest.mark.parametrize(("case", "options"), _fast_direction_cases())
def test_fast_direction_is_a_single_pass_and_agrees_with_the_other(
    case, options, device, dtype, tol, monkeypatch
):
    """``fast_direction`` as the transforms define it: the named pass of the bijection
    (``call_and_ladj`` for ``"forward"``, ``inverse_and_ladj`` for ``"inverse"``) runs no
    numerical inverse, ``log_abs_det_jacobian`` goes through it and agrees with the other
    direction; ``Inverse(d)``, the flow transform of ``as_flow``, has the swapped direction."""
    from pyroflows.transforms import Inverse

    x = sample_data("mixture" if case == "deep" and "layer" in options else case).to(device, dtype)
    d = build(case, FEATURES, **(options or OPTIONS[case])).fit(x)
    if case == "deep" and options:
        assert d.fast_direction == "forward"  # layers whose inverse bisects
    assert d.fast_direction in ("both", "forward", "inverse")
    pts = x[:6]
    with torch.no_grad():
        u, ladj = d.call_and_ladj(pts)
        _, inv_ladj = d.inverse_and_ladj(u)
        _no_numerical_inverse(monkeypatch)
        through_fast = d.log_abs_det_jacobian(pts, u)
        if d.fast_direction in ("both", "forward"):
            d.call_and_ladj(pts)
        if d.fast_direction in ("both", "inverse"):
            d.inverse_and_ladj(u)
        flow = d.as_flow()
        assert flow.transforms[0].fast_direction == {
            "forward": "inverse",
            "inverse": "forward",
        }.get(d.fast_direction, "both")
        assert Inverse(d).fast_direction == flow.transforms[0].fast_direction
        if d.fast_direction == "forward":
            # The flow's density runs D, the single pass: no bisection.
            assert torch.allclose(
                flow().log_prob(pts), ladj, atol=tol["logdet"], rtol=tol["logdet"]
            )
    assert (through_fast - ladj).abs().max() < tol["logdet"]
    assert (through_fast + inv_ladj).abs().max() < tol["logdet"]


def test_to_uniform_of_training_data_is_uniform(name, device, dtype):
    """Per-dimension KS test of D(x_train) against U(0, 1) (fixed seed, Bonferroni level)."""
    d, x = make(name, device, dtype)
    with torch.no_grad():
        u = d.to_uniform(x).double().cpu().numpy()
    for j in range(FEATURES):
        assert stats.kstest(u[:, j], "uniform").pvalue > 0.01 / FEATURES, (name, j)


def test_density_integrates_to_one_in_2d(name, device, dtype):
    if dtype != torch.float64:
        pytest.skip("quadrature check in float64 only")
    d, _ = make(name, device, dtype, d=2)
    flow = d.as_flow()
    if d.domain == "unit":
        grid = (torch.arange(400, dtype=dtype, device=device) + 0.5) / 400
        cell = 1 / 400**2
    else:
        grid = torch.linspace(-12, 12, 481, dtype=dtype, device=device)
        cell = float(grid[1] - grid[0]) ** 2
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    points = torch.stack([xx, yy], -1).reshape(-1, 2)
    with torch.no_grad():
        mass = flow().log_prob(points).exp().sum() * cell
    assert abs(float(mass) - 1) < 5e-3


def test_as_flow_matches_and_has_flow_shapes(name, device, dtype):
    d, x = make(name, device, dtype)
    for base in ("uniform", "normal"):
        flow = d.as_flow(base)
        dist = flow()
        with torch.no_grad():
            lp = dist.log_prob(x[:20])
        assert torch.allclose(lp, d.log_prob(x[:20]).detach(), atol=1e-6, rtol=1e-6)
        s = dist.sample((2, 3))
        assert s.shape == (2, 3, FEATURES) and s.dtype == dtype and torch.isfinite(s).all()
        xs, lps = dist.rsample_and_log_prob((5,))
        assert xs.shape == (5, FEATURES) and lps.shape == (5,)
        assert torch.allclose(lps, dist.log_prob(xs), atol=1e-5, rtol=1e-5)
    assert d.sample(7).shape == (7, FEATURES)
    # Inside plain Pyro: a TransformedDistribution over the inverse destructor.
    import pyro.distributions as pdist

    from pyroflows.transforms import Inverse

    zeros = torch.zeros(FEATURES, device=device, dtype=dtype)
    plain = pdist.TransformedDistribution(pdist.Uniform(zeros, zeros + 1).to_event(1), [Inverse(d)])
    with torch.no_grad():
        assert torch.allclose(plain.log_prob(x[:10]), d.log_prob(x[:10]), atol=1e-6, rtol=1e-6)


def test_state_dict_file_and_pickle_round_trips(name, device, dtype, tmp_path):
    d, x = make(name, device, dtype)
    expected = d.log_prob(x[:10])
    fresh = build(name, FEATURES, **OPTIONS[name]).to(device, dtype)
    fresh.load_state_dict(d.state_dict())
    assert torch.equal(fresh.log_prob(x[:10]), expected)
    torch.save(d.state_dict(), tmp_path / "d.pt")
    other = build(name, FEATURES, **OPTIONS[name]).to(device, dtype)
    other.load_state_dict(torch.load(tmp_path / "d.pt", weights_only=True))
    assert torch.equal(other.log_prob(x[:10]), expected)
    restored = pickle.loads(pickle.dumps(d))
    assert torch.equal(restored.log_prob(x[:10]), expected)
    buffer = io.BytesIO()
    torch.save(d, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False).log_prob(x[:10]), expected)


def test_float32_copy_agrees(name, device):
    d, x = make(name, device, torch.float64)
    single = pickle.loads(pickle.dumps(d)).to(torch.float32)
    lp = single.log_prob(x[:50].float())
    assert lp.dtype == torch.float32
    assert torch.allclose(lp.double(), d.log_prob(x[:50]), atol=1e-2, rtol=1e-3)


def test_gradients_for_fine_tuning(name, device, dtype):
    d, x = make(name, device, dtype)
    loss = -d.log_prob(x[:100]).mean() + d.inverse_and_ladj(torch.full_like(x[:4], 0.3))[0].sum()
    loss.backward()
    params = list(d.named_parameters())
    assert params, "a destructor must have parameters to fine-tune"
    for pname, p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_bad_input_gives_clear_errors(name, device, dtype):
    d, x = make(name, device, dtype)
    before = d.log_prob(x[:5]).detach()
    for bad, what in [(float("nan"), "NaN"), (float("inf"), "NaN or infinite")]:
        y = x[:5].clone()
        y[2, 1] = bad
        with pytest.raises(ValueError, match="NaN"):
            d.to_uniform(y)
        with pytest.raises(ValueError, match=what):
            d.log_prob(y)
        with pytest.raises(ValueError, match="NaN"):
            d.fit(torch.cat([x, y]))
    with pytest.raises(ValueError, match="features"):
        d.to_uniform(x[:, :2])
    with pytest.raises(ValueError, match=r"unit cube"):
        d.from_uniform(torch.full((3, FEATURES), 1.5, device=device, dtype=dtype))
    with pytest.raises(ValueError, match=r"unit cube"):
        d.from_uniform(torch.full((3, FEATURES), -0.1, device=device, dtype=dtype))
    if d.domain == "unit":
        with pytest.raises(ValueError, match=r"unit cube"):
            d.to_uniform(x[:5] + 2)
        with pytest.raises(ValueError, match=r"unit cube"):
            d.fit(x - 1)
    with pytest.raises(ValueError, match="at least"):
        d.fit(x[: d.min_points() - 1])
    with pytest.raises(ValueError, match="weights"):
        d.fit(x, weights=-torch.ones(len(x)))
    # Failed fits leave the fitted state untouched.
    assert torch.equal(d.log_prob(x[:5]).detach(), before)
    # Faces of the cube: a documented clamp, never NaN or inf.
    faces = torch.tensor(
        [[0.0, 1.0, 0.5], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], device=device, dtype=dtype
    )
    y = d.from_uniform(faces)
    assert torch.isfinite(y).all()
    assert torch.isfinite(d.log_prob(y)).all()
    with pytest.raises(RuntimeError, match="fit"):
        build(name, FEATURES, **OPTIONS[name]).to_uniform(x[:3])


def test_zero_variance_columns(name, device, dtype):
    d, x = make(name, device, dtype)
    y = x.clone()
    y[:, 1] = y[0, 1]
    if name in ("histogram", "tree"):
        # Documented: piecewise-constant densities accept a constant column (it falls in one
        # bin / leaf); results stay finite.
        d.fit(y)
        assert torch.isfinite(d.log_prob(y)).all() and torch.isfinite(d.to_uniform(y)).all()
    else:
        with pytest.raises(ValueError, match="zero-variance"):
            d.fit(y)


def test_weights(name, device, dtype, tol):
    x = sample_data(name, n=600).to(device, dtype)
    test = sample_data(name, n=50, seed=5).to(device, dtype)
    plain = build(name, FEATURES, **OPTIONS[name]).fit(x)
    scaled = build(name, FEATURES, **OPTIONS[name]).fit(x, weights=3 * torch.ones(600))
    assert torch.allclose(
        plain.log_prob(test), scaled.log_prob(test), atol=tol["logdet"], rtol=tol["logdet"]
    )
    if name in ("gaussian", "normal-cdf", "mixture", "beta"):
        # Unsmoothed estimators: weight 2 is the same as a repeated point.
        w = torch.ones(600, dtype=dtype, device=device)
        w[:200] = 2
        weighted = build(name, FEATURES, **OPTIONS[name]).fit(x, weights=w)
        repeated = build(name, FEATURES, **OPTIONS[name]).fit(torch.cat([x[:200], x]))
        atol = 1e-3 if name == "mixture" else tol["logdet"]
        assert torch.allclose(
            weighted.log_prob(test), repeated.log_prob(test), atol=atol, rtol=1e-4
        )


def test_domain_is_a_constraint_and_a_name(name):
    d = build(name, FEATURES, **OPTIONS[name])
    assert d.domain in ("real", "unit") and d.domain_kind in ("real", "unit")
    assert d.domain.event_dim == 1 and d.codomain == "unit"
    assert bool(d.codomain.check(torch.full((2, FEATURES), 0.5)).all())
    assert not math.isnan(float(d.domain.check(torch.zeros(2, FEATURES)).float().sum()))
