"""The registry-wide property test: every vector preset, ``pyroflows.flows.available("vector")``
(the image presets, ``available("image")``, have the same checks on (C, H, W) events in
``test_image_flows.py``).

Each preset is built small, perturbed away from its identity initialisation and checked for
the properties every flow must have: exact inverses, log-determinants equal to autograd's,
batch and context shapes, gradients to every parameter, a normalised density, and identical
densities after ``state_dict``, file and pickle round trips.
"""

from __future__ import annotations

import io
import pickle

import pyro.distributions as dist
import pytest
import torch
from helpers import jacobian_logdet, perturb

import pyroflows
from pyroflows.flows import available, build

FEATURES = 3
CONTEXT = 2
SMALL = {"transforms": 2, "hidden": (16, 16)}


@pytest.fixture(params=available("vector"))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=[0, CONTEXT], ids=["unconditional", "conditional"])
def context_size(request: pytest.FixtureRequest) -> int:
    return request.param


def make(name: str, context: int, device, dtype, features: int = FEATURES, seed: int = 0):  # noqa: ANN001, ANN201
    torch.manual_seed(seed)
    flow = build(name, features, context=context, **SMALL)
    return perturb(flow, seed=seed).to(device, dtype)


def make_context(n: int, context: int, device, dtype):  # noqa: ANN001, ANN201
    if not context:
        return None
    return torch.randn(n, context, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(device, dtype)


def test_round_trip(name, context_size, device, dtype, tol):
    flow = make(name, context_size, device, dtype)
    c = make_context(64, context_size, device, dtype)
    T = flow.transform(c)
    z = torch.randn(64, FEATURES, device=device, dtype=dtype)
    x, _ = T.call_and_ladj(z)
    assert (T.inverse_and_ladj(x)[0] - z).abs().max() < tol["roundtrip"]
    data = 2 * torch.randn(64, FEATURES, device=device, dtype=dtype)
    z2, _ = T.inverse_and_ladj(data)
    assert (T.call_and_ladj(z2)[0] - data).abs().max() < tol["roundtrip"]
    # The torch Transform protocol (T(z), T.inv(x)) agrees with the explicit methods.
    assert torch.allclose(T(z), x) and torch.allclose(T.inv(data), z2)


def test_logdet_matches_autograd(name, context_size, device, dtype, tol):
    flow = make(name, context_size, device, dtype)
    c = make_context(1, context_size, device, dtype)
    T = flow.transform(c)
    z = torch.randn(6, FEATURES, device=device, dtype=dtype)
    x, ladj = T.call_and_ladj(z)
    expected = jacobian_logdet(lambda v: T.call_and_ladj(v)[0].reshape(-1), z)
    assert (ladj.reshape(-1) - expected).abs().max() < tol["logdet"]
    z_back, inv_ladj = T.inverse_and_ladj(x)
    expected_inv = jacobian_logdet(lambda v: T.inverse_and_ladj(v)[0].reshape(-1), x.detach())
    assert (inv_ladj.reshape(-1) - expected_inv).abs().max() < tol["logdet"]
    assert (ladj + inv_ladj).abs().max() < tol["logdet"]
    # log_abs_det_jacobian (the Pyro protocol, no cache) agrees too.
    assert (T.log_abs_det_jacobian(z, x) - ladj).abs().max() < tol["logdet"]


def test_shapes_without_context(name, device, dtype, tol):
    flow = make(name, 0, device, dtype)
    d = flow()
    assert d.batch_shape == () and d.event_shape == (FEATURES,)
    x = d.sample((2, 3))
    assert x.shape == (2, 3, FEATURES) and x.dtype == dtype and x.device.type == device.type
    assert d.log_prob(x).shape == (2, 3)
    xs, lp = d.rsample_and_log_prob((5,))
    assert xs.shape == (5, FEATURES) and lp.shape == (5,)
    assert torch.allclose(lp, d.log_prob(xs), atol=tol["logdet"], rtol=tol["logdet"])


def test_shapes_with_context(name, device, dtype, tol):
    flow = make(name, CONTEXT, device, dtype)
    c = make_context(4, CONTEXT, device, dtype)
    d = flow(c)
    assert d.batch_shape == (4,) and d.event_shape == (FEATURES,)
    x = d.sample((7,))
    assert x.shape == (7, 4, FEATURES)
    assert d.log_prob(x).shape == (7, 4)
    assert d.log_prob(x[0]).shape == (4,)
    xs, lp = d.rsample_and_log_prob((3,))
    assert xs.shape == (3, 4, FEATURES) and lp.shape == (3, 4)
    assert torch.allclose(lp, d.log_prob(xs), atol=tol["logdet"], rtol=tol["logdet"])
    # Two batch dims of contexts, and the context really changes the density.
    c2 = torch.randn(2, 4, CONTEXT, device=device, dtype=dtype)
    assert flow(c2).log_prob(x[0]).shape == (2, 4)
    assert not torch.allclose(flow(c2[0]).log_prob(x[0]), flow(c2[1]).log_prob(x[0]))


def test_gradients_reach_every_parameter(name, context_size, device, dtype):
    flow = make(name, context_size, device, dtype)
    c = make_context(32, context_size, device, dtype)
    x = torch.randn(32, FEATURES, device=device, dtype=dtype)
    xs, lp = flow(c).rsample_and_log_prob()
    loss = -flow(c).log_prob(x).mean() + (lp - xs.square().sum(-1)).mean()
    loss.backward()
    for pname, p in flow.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"no gradient reaches {pname}"


def test_density_integrates_to_one(name, device, dtype):
    """Known normalising constant: a 2-D flow's density integrates to 1 over the plane."""
    if dtype != torch.float64:
        pytest.skip("quadrature check in float64 only")
    flow = make(name, 0, device, dtype, features=2)
    grid = torch.linspace(-9, 9, 361, device=device, dtype=dtype)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    points = torch.stack([xx, yy], -1).reshape(-1, 2)
    with torch.no_grad():
        density = flow().log_prob(points).exp()
    mass = density.sum() * (grid[1] - grid[0]) ** 2
    assert abs(mass.item() - 1) < 5e-3


def test_state_dict_file_and_pickle_round_trips(name, context_size, device, dtype, tmp_path):
    flow = make(name, context_size, device, dtype)
    c = make_context(8, context_size, device, dtype)
    x = torch.randn(8, FEATURES, device=device, dtype=dtype)
    expected = flow(c).log_prob(x)

    other = build(name, FEATURES, context=context_size, **SMALL).to(device, dtype)
    assert not torch.allclose(other(c).log_prob(x), expected)
    other.load_state_dict(flow.state_dict())
    assert torch.equal(other(c).log_prob(x), expected)

    pyroflows.flows.save(flow, tmp_path / "model.pt")
    loaded = pyroflows.flows.load(tmp_path / "model.pt", map_location=device)
    assert torch.equal(loaded(c).log_prob(x), expected)

    buffer = io.BytesIO()
    pickle.dump(flow, buffer)
    restored = pickle.loads(buffer.getvalue())
    assert torch.equal(restored(c).log_prob(x), expected)


def test_works_inside_plain_pyro(name, context_size, device, dtype, tol):
    flow = make(name, context_size, device, dtype)
    base = dist.Normal(torch.zeros(FEATURES, device=device, dtype=dtype), 1.0).to_event(1)
    if not isinstance(flow.base, pyroflows.StandardNormal):
        base = flow.base()  # a preset's own base distribution (maf-mog's MADE MoG)
    x = torch.randn(5, FEATURES, device=device, dtype=dtype)
    if context_size:
        c = make_context(5, context_size, device, dtype)
        pyro_dist = dist.ConditionalTransformedDistribution(base, list(flow.transforms)).condition(c)
        expected = flow(c).log_prob(x)
    else:
        pyro_dist = dist.TransformedDistribution(base, list(flow.transforms))
        expected = flow().log_prob(x)
    assert torch.allclose(pyro_dist.log_prob(x), expected, atol=tol["logdet"], rtol=tol["logdet"])
    # Pyro's base has batch shape (), so the sample shape must carry the contexts' batch (5,).
    assert pyro_dist.sample((3, 5)).shape == (3, 5, FEATURES)


def test_options_are_honoured(name):
    small = build(name, FEATURES, transforms=1, hidden=(8, 8))
    large = build(name, FEATURES, transforms=3, hidden=(24, 24))
    count = lambda f: sum(p.numel() for p in f.parameters())  # noqa: E731
    assert count(small) < count(large)
    assert small.config == {"name": name, "features": FEATURES, "context": 0,
                            "standardize": False, "options": {"transforms": 1, "hidden": (8, 8)}}


# Presets that cannot be traced as one graph, and why (each is documented on its page).
COMPILE_EXEMPT = {
    # torchdiffeq branches on tensor values when it checks the time grid, its adaptive solver
    # accepts or rejects steps on data-dependent errors, and the exact trace calls
    # torch.autograd.grad inside the forward pass: all graph breaks by design of an ODE solve.
    "ffjord": "adaptive ODE solver (torchdiffeq): data-dependent step control",
}


@pytest.mark.slow
def test_compiles_without_graph_breaks(name, context_size, device, dtype):
    """Static shapes, no .item() or data-dependent Python branches: dynamo traces density and
    sampling as one graph each (``fullgraph=True`` fails on any graph break)."""
    if name in COMPILE_EXEMPT:
        pytest.skip(COMPILE_EXEMPT[name])
    torch._dynamo.reset()
    flow = make(name, context_size, device, dtype)
    c = make_context(4, context_size, device, dtype)
    x = torch.randn(4, FEATURES, device=device, dtype=dtype)

    def log_prob(x, c):  # noqa: ANN001, ANN202
        return flow(c).log_prob(x)

    def sample(c):  # noqa: ANN001, ANN202
        return flow(c).rsample_and_log_prob((5,))

    compiled = torch.compile(log_prob, backend="eager", fullgraph=True)
    assert torch.allclose(compiled(x, c), log_prob(x, c))
    xs, lp = torch.compile(sample, backend="eager", fullgraph=True)(c)
    assert xs.shape[-1] == FEATURES and torch.isfinite(lp).all()
