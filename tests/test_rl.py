"""Flow policies: the tanh squash, densities on the action box, bounds, gradients, errors."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

import pyroflows
from pyroflows.rl import FlowPolicy, TanhSquash, log_dtanh


def _perturbed(policy: FlowPolicy, seed: int = 0, scale: float = 0.3) -> FlowPolicy:
    """Random, non-identity parameters (flows start as the identity: zero-initialised heads)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return policy


# -- the squash -----------------------------------------------------------------------------


def test_log_dtanh_matches_the_direct_formula() -> None:
    u = torch.linspace(-8, 8, 101, dtype=torch.float64)
    assert torch.allclose(log_dtanh(u), torch.log1p(-(torch.tanh(u) ** 2)), atol=1e-10)
    # Far tails: log(1 - tanh^2 u) = log 4 - 2|u| + O(e^{-2|u|}); the direct formula gives -inf.
    big = torch.tensor([-60.0, 60.0, 1e4])
    assert torch.allclose(log_dtanh(big), math.log(4) - 2 * big.abs(), rtol=1e-6)


def test_squash_logdet_matches_autograd_jacobian_and_round_trips() -> None:
    t = TanhSquash(3, low=[-2.0, 0.0, -1.0], high=[1.0, 5.0, 1.0]).double()
    z = torch.randn(3, dtype=torch.float64) * 2
    x, ladj = t.call_and_ladj(z)
    jac = torch.autograd.functional.jacobian(lambda v: t.call_and_ladj(v)[0], z)
    assert torch.allclose(ladj, torch.linalg.slogdet(jac)[1], atol=1e-10)
    z2, iladj = t.inverse_and_ladj(x)
    assert torch.allclose(z2, z, atol=1e-10) and torch.allclose(iladj, -ladj, atol=1e-10)
    # As a pyroflows Bijection it composes and works as a torch Transform.
    assert torch.allclose(t.inv(t(z)), z, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_squash_stays_in_box_and_finite_at_the_bounds(dtype: torch.dtype) -> None:
    low, high = torch.tensor([-2.0, 0.1]), torch.tensor([0.7, 3.0])
    t = TanhSquash(2, low, high).to(dtype)
    u = torch.tensor([[-1e4, 1e4], [-50.0, 50.0], [-9.0, 9.0], [20.0, -20.0]], dtype=dtype)
    x, ladj = t.call_and_ladj(u)
    assert ((x >= t.low) & (x <= t.high)).all()
    assert torch.isfinite(ladj).all()
    edges = torch.stack([t.low, t.high, torch.stack([t.low[0], t.high[1]])])
    z, iladj = t.inverse_and_ladj(edges)
    assert torch.isfinite(z).all() and torch.isfinite(iladj).all()


# -- densities on the box -------------------------------------------------------------------


def test_density_integrates_to_one_and_matches_samples_1d() -> None:
    torch.manual_seed(0)
    policy = _perturbed(
        FlowPolicy(2, 1, -1.5, 0.5, hidden=(16, 16), flow_options={"hidden": (16, 16)})
    ).double()
    obs = torch.tensor([[0.3, -0.2], [1.0, 0.5]], dtype=torch.float64)
    d = policy(obs)
    edges = torch.linspace(-1.5, 0.5, 20 * 1000 + 1, dtype=torch.float64)
    mid = ((edges[1:] + edges[:-1]) / 2).reshape(-1, 1, 1)  # (G, 1, 1) against batch (2,)
    density = d.log_prob(mid).exp()  # (G, 2)
    width = edges[1] - edges[0]
    assert torch.allclose((density * width).sum(0), torch.ones(2, dtype=torch.float64), atol=2e-3)
    # Histogram of rsample against the density's mass in 20 bins.
    n = 40_000
    a, lp = d.rsample_and_log_prob(torch.Size([n]))
    assert torch.allclose(lp, d.log_prob(a), atol=1e-8)
    bins = torch.bucketize(a[..., 0], edges[::1000][1:-1].contiguous())  # (n, 2) bin index 0..19
    for b in range(2):
        freq = torch.bincount(bins[:, b], minlength=20).double() / n
        mass = (density[:, b] * width).reshape(20, 1000).sum(1)
        sd = (mass * (1 - mass) / n).sqrt()
        assert ((freq - mass).abs() <= 5 * sd + 1e-3).all(), (freq, mass)


def test_density_integrates_to_one_and_matches_samples_2d() -> None:
    torch.manual_seed(1)
    policy = _perturbed(
        FlowPolicy(
            3, 2, [-1.0, 0.0], [1.0, 2.0], hidden=(16, 16), flow_options={"hidden": (16, 16)}
        ),
        seed=1,
        scale=0.15,
    ).double()
    d = policy(torch.tensor([0.2, -0.4, 0.9], dtype=torch.float64))
    g = 400
    ex = torch.linspace(-1.0, 1.0, g + 1, dtype=torch.float64)
    ey = torch.linspace(0.0, 2.0, g + 1, dtype=torch.float64)
    mx, my = (ex[1:] + ex[:-1]) / 2, (ey[1:] + ey[:-1]) / 2
    grid = torch.stack(torch.meshgrid(mx, my, indexing="ij"), -1)  # (g, g, 2)
    cell = (ex[1] - ex[0]) * (ey[1] - ey[0])
    mass = d.log_prob(grid).exp() * cell
    assert abs(float(mass.detach().sum()) - 1.0) < 2e-3
    n = 40_000
    a, lp = d.rsample_and_log_prob(torch.Size([n]))
    assert torch.allclose(lp, d.log_prob(a), atol=1e-8)
    k = 8  # 8 x 8 histogram
    ix = torch.bucketize(a[:, 0].contiguous(), ex[:: g // k][1:-1].contiguous())
    iy = torch.bucketize(a[:, 1].contiguous(), ey[:: g // k][1:-1].contiguous())
    freq = torch.bincount(ix * k + iy, minlength=k * k).double().reshape(k, k) / n
    coarse = mass.reshape(k, g // k, k, g // k).sum((1, 3))
    sd = (coarse * (1 - coarse) / n).sqrt()
    assert ((freq - coarse).abs() <= 5 * sd + 2e-3).all()


def test_entropy_estimate_matches_quadrature() -> None:
    torch.manual_seed(2)
    policy = _perturbed(FlowPolicy(1, 1, -1.0, 1.0, hidden=(8,)), seed=2, scale=0.1).double()
    d = policy(torch.zeros(1, dtype=torch.float64))
    edges = torch.linspace(-1, 1, 200_001, dtype=torch.float64)
    mid = ((edges[1:] + edges[:-1]) / 2).unsqueeze(-1)
    with torch.no_grad():
        lp = d.log_prob(mid)
        exact = float(-(lp.exp() * lp).sum() * (edges[1] - edges[0]))
        torch.manual_seed(3)
        estimate = float(d.entropy(num_samples=40_000))
        sd = float(d.log_prob(d.sample((40_000,))).std()) / math.sqrt(40_000)
    assert abs(float((lp.exp() * (edges[1] - edges[0])).sum()) - 1) < 1e-3  # the grid resolves it
    assert abs(estimate - exact) < 5 * sd


@pytest.mark.parametrize("name", pyroflows.flows.available("vector"))
def test_any_conditional_registry_flow(name: str) -> None:
    torch.manual_seed(0)
    policy = _perturbed(
        FlowPolicy(4, 2, -1.0, 1.0, flow=name, hidden=(16,), flow_options={"hidden": (8, 8)}),
        scale=0.1,
    ).double()
    d = policy(torch.randn(5, 4, dtype=torch.float64))
    a, lp = d.rsample_and_log_prob(torch.Size([3]))
    assert a.shape == (3, 5, 2) and lp.shape == (3, 5)
    assert torch.allclose(lp, d.log_prob(a), atol=1e-6)


# -- bounds, shapes, gradients, devices -------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_actions_in_bounds_near_the_edges(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    policy = FlowPolicy(2, 2, [-2.0, 0.0], [2.0, 1e-3], hidden=(8,)).to(dtype)
    affine = policy.flow.transforms[-2]
    with torch.no_grad():  # push the pre-tanh actions to +-25 (float32 tanh rounds to +-1)
        affine.conditioner.output.bias.copy_(torch.tensor([25.0, 0.0, -25.0, 0.0]))
    d = policy(torch.randn(64, 2, dtype=dtype))
    a, lp = d.rsample_and_log_prob(torch.Size([16]))
    assert ((a >= policy.low) & (a <= policy.high)).all()
    assert torch.isfinite(lp).all() and torch.isfinite(d.log_prob(a)).all()
    if dtype == torch.float32:
        assert (a[..., 0] == 2.0).any() and (a[..., 1] == 0.0).any()  # really on the bounds
    for m in (d.deterministic_sample, d.mode):
        assert ((m >= policy.low) & (m <= policy.high)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_prob_finite_on_the_bounds_and_minus_inf_outside(dtype: torch.dtype) -> None:
    policy = _perturbed(FlowPolicy(3, 2, -1.0, 3.0, hidden=(8,))).to(dtype)
    d = policy(torch.zeros(3, dtype=dtype))
    on = torch.tensor([[-1.0, -1.0], [3.0, 3.0], [-1.0, 3.0], [1.0, 3.0]], dtype=dtype)
    assert torch.isfinite(d.log_prob(on)).all()
    outside = torch.tensor([[-1.01, 0.0], [0.0, 3.5]], dtype=dtype)
    assert torch.isneginf(d.log_prob(outside)).all()
    assert not d.support.check(outside).any() and d.support.check(on).all()


def test_gradients_reach_every_parameter_through_rsample_and_log_prob() -> None:
    torch.manual_seed(0)
    policy = _perturbed(FlowPolicy(3, 2, -1.0, 1.0, hidden=(16, 16), flow_options={"hidden": (8,)}))
    a, lp = policy(torch.randn(32, 3)).rsample_and_log_prob()
    (lp.mean() + (a**2).sum(-1).mean()).backward()
    for name, p in policy.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_shapes_batching_and_numpy_observations() -> None:
    policy = FlowPolicy(3, 2, -1.0, 1.0, hidden=(8,))
    d = policy(np.zeros(3, np.float32))
    assert d.batch_shape == () and d.event_shape == (2,) and d.sample().shape == (2,)
    d = policy(torch.randn(4, 5, 3))
    assert d.batch_shape == (4, 5) and d.rsample((2,)).shape == (2, 4, 5, 2)
    assert d.log_prob(torch.zeros(4, 5, 2)).shape == (4, 5)
    assert d.mode.shape == (4, 5, 2) and d.deterministic_sample.shape == (4, 5, 2)
    assert d.entropy(8).shape == (4, 5)
    assert policy.act(np.zeros((7, 3))).shape == (7, 2)


def test_mode_is_at_least_as_probable_as_the_deterministic_sample() -> None:
    torch.manual_seed(0)
    d = _perturbed(FlowPolicy(2, 2, -1.0, 1.0, hidden=(8,))).double()(torch.randn(6, 2).double())
    assert (d.log_prob(d.mode) >= d.log_prob(d.deterministic_sample) - 1e-12).all()


def test_device_and_dtype_follow_the_module(device: torch.device) -> None:
    policy = FlowPolicy(3, 2, -1.0, 1.0, hidden=(8,)).to(device, torch.float64)
    d = policy(np.ones((2, 3), np.float32))  # numpy float32 in: module device and dtype out
    a = d.sample()
    assert a.device.type == device.type and a.dtype == torch.float64
    d = policy(torch.ones(2, 3, device=device))
    assert d.log_prob(a).dtype == torch.float64


def test_state_dict_and_pickle_round_trip(tmp_path) -> None:  # noqa: ANN001
    policy = _perturbed(FlowPolicy(3, 2, -1.0, 1.0, hidden=(8,)))
    obs, a = torch.randn(4, 3), torch.rand(4, 2) * 2 - 1
    other = FlowPolicy(3, 2, -1.0, 1.0, hidden=(8,))
    other.load_state_dict(policy.state_dict())
    assert torch.allclose(other(obs).log_prob(a), policy(obs).log_prob(a))
    clone = pickle.loads(pickle.dumps(policy))
    assert torch.allclose(clone(obs).log_prob(a), policy(obs).log_prob(a))


# -- bad input --------------------------------------------------------------------------------


def test_bad_observations_raise() -> None:
    policy = FlowPolicy(3, 2, -1.0, 1.0, hidden=(8,))
    with pytest.raises(ValueError, match="expected"):
        policy(torch.zeros(5, 4))
    with pytest.raises(ValueError, match="expected"):
        policy(torch.tensor(1.0))
    with pytest.raises(ValueError, match="NaN"):
        policy(torch.tensor([[0.0, float("nan"), 1.0]]))
    with pytest.raises(ValueError, match="NaN"):
        policy(np.array([0.0, np.inf, 1.0]))
    with pytest.raises(ValueError, match="expected a last dimension"):
        policy(torch.zeros(3)).log_prob(torch.zeros(3))


@pytest.mark.parametrize(
    ("low", "high", "match"),
    [
        (1.0, 1.0, "low must be < high"),
        ([0.0, 2.0], [1.0, 1.0], r"dimensions \[1\]"),
        (-np.inf, 1.0, "finite"),
        ([0.0, 0.0, 0.0], 1.0, "shape"),
    ],
)
def test_bad_bounds_raise(low, high, match: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=match):
        FlowPolicy(3, 2, low, high)


def test_bad_options_raise() -> None:
    with pytest.raises(ValueError, match="1-D action space"):
        FlowPolicy(3, 1, -1.0, 1.0, flow="realnvp")
    with pytest.raises(ValueError, match="unknown flow"):
        FlowPolicy(3, 2, -1.0, 1.0, flow="nope")
    with pytest.raises(ValueError, match="obs_dim"):
        FlowPolicy(0, 2, -1.0, 1.0)
    with pytest.raises(ValueError, match="needs a flow"):
        FlowPolicy(3, 2, -1.0, 1.0, flow=None, affine=False)
    with pytest.raises(TypeError, match="unknown options"):
        FlowPolicy(3, 2, -1.0, 1.0, flow_options={"colour": 1})
    with pytest.raises(ValueError, match="num_samples"):
        FlowPolicy(3, 2, -1.0, 1.0)(torch.zeros(3)).entropy(0)


def test_option_checks_name_the_argument() -> None:
    from pyroflows.rl.sac import SACConfig

    with pytest.raises(ValueError, match="act_dim must be an integer >= 1"):
        FlowPolicy(3, True, -1.0, 1.0)
    with pytest.raises(ValueError, match="hidden must be a non-empty tuple"):
        FlowPolicy(3, 2, -1.0, 1.0, hidden=(16, 0))
    assert FlowPolicy(np.int64(3), 2, -1.0, 1.0, flow=None, hidden=(8,)).obs_dim == 3
    with pytest.raises(ValueError, match="learning_starts must be an integer >= 1"):
        SACConfig(learning_starts=0)
    with pytest.raises(ValueError, match="alpha must be a positive finite number"):
        SACConfig(alpha=0.0)
