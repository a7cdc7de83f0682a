"""The registry-wide property test: every flow preset, ``pyroflows.flows.available()``, vector
and image presets in one parametrization (the event shape follows the preset's kind:
``(3,)`` for vectors, ``(2, 4, 4)`` for images), and the :class:`~pyroflows.DensityModel`
protocol over every entry of the one registry (flows, density models, PixelCNN, destructors'
``as_flow()``).

Each preset is built small, its ActNorms (image presets) initialised from a batch, perturbed
away from its identity initialisation and checked for the properties every flow must have:
exact inverses, log-determinants equal to autograd's, batch and context shapes, gradients to
every parameter, a normalised density (a 2-D grid for vectors, a 4-D one for a (1, 2, 2)
image), and identical densities after ``state_dict``, file and pickle round trips.
"""

from __future__ import annotations

import io
import pickle

import pyro.distributions as dist
import pytest
import torch
from helpers import jacobian_logdet, perturb
from pyro.distributions.torch_distribution import TorchDistributionMixin

import pyroflows
from pyroflows import REGISTRY, DensityModel
from pyroflows.flows import available, build, kind

FEATURES = 3
IMAGE = (2, 4, 4)
CONTEXT = 2
SMALL = {"transforms": 2, "hidden": (16, 16)}


@pytest.fixture(params=available())
def name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=[0, CONTEXT], ids=["unconditional", "conditional"])
def context_size(request: pytest.FixtureRequest) -> int:
    return request.param


def shape_of(name: str) -> tuple[int, ...]:
    """The event shape the tests use for a preset: from its kind."""
    return IMAGE if kind(name) == "image" else (FEATURES,)


def features_of(shape: tuple[int, ...]) -> int | tuple[int, ...]:
    """``build``'s ``features`` for an event shape: an int for vectors, the shape for images."""
    return shape[0] if len(shape) == 1 else shape


def make_context(n: int, context: int, device, dtype):  # noqa: ANN001, ANN201
    if not context:
        return None
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, context, generator=g, dtype=torch.float64).to(device, dtype)


def make(
    name: str,
    context: int,
    device,
    dtype,
    shape: tuple[int, ...] | None = None,
    seed: int = 0,
    **options,
):  # noqa: ANN001, ANN003, ANN201
    """Built, (images:) ActNorm-initialised on a batch, then perturbed away from the identity."""
    shape = shape_of(name) if shape is None else shape
    torch.manual_seed(seed)
    flow = build(name, features_of(shape), context=context, **(options or SMALL))
    if len(shape) == 1:
        return perturb(flow, seed=seed).to(device, dtype)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        x = 1.5 * torch.randn(32, *shape, generator=g) + 0.3
        flow(make_context(32, context, "cpu", torch.float32)).log_prob(x)  # data-dependent init
    # 0.05: a 3x3 convolution of 16 channels sums 144 inputs; 0.1 (the vector scale) would give
    # log-scales at the soft bound and an ill-conditioned map.
    return perturb(flow, scale=0.05, seed=seed).to(device, dtype)


def close(name: str, tol: dict[str, float]) -> float:
    """Tolerance of ``log_prob`` against ``rsample_and_log_prob`` and plain Pyro (the image
    presets have always been held to 1e-6)."""
    return 1e-6 if kind(name) == "image" else tol["logdet"]


def sum_event(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    return x.flatten(x.dim() - len(shape)).sum(-1)


def test_registry_kinds_and_errors():
    assert set(available("image")) == {"glow", "realnvp-image"}
    assert not set(available("image")) & set(available("vector"))
    assert sorted(available("image") + available("vector")) == available()
    assert pyroflows.flows.kind("glow") == "image" and pyroflows.flows.kind("maf") == "vector"
    # The views agree with the one registry.
    assert available() == REGISTRY.available("flow")
    assert pyroflows.density.available() == REGISTRY.available("density")
    assert pyroflows.destructors.available() == REGISTRY.available("destructor")
    assert "pixelcnn" in pyroflows.density.available("image")
    assert {e.kind for e in REGISTRY.entries("destructor")} == {"vector"}
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build("glow", 16)
    with pytest.raises(ValueError, match="multiples of 4"):
        build("glow", (1, 6, 6), levels=2)
    with pytest.raises(ValueError, match="standardize"):
        build("glow", (1, 4, 4), standardize=torch.randn(10, 16))
    with pytest.raises(TypeError, match="unknown options"):
        build("realnvp-image", (1, 4, 4), bins=3)
    with pytest.raises(ValueError, match="kind"):
        available("images")
    with pytest.raises(ValueError, match="features must be an integer"):
        build("maf", (1, 4, 4))
    with pytest.raises(ValueError, match="already registered"):
        pyroflows.flows.register("maf")(lambda features, context=0: None)


def test_round_trip(name, context_size, device, dtype, tol):
    shape = shape_of(name)
    n = 64 if len(shape) == 1 else 16
    flow = make(name, context_size, device, dtype)
    c = make_context(n, context_size, device, dtype)
    T = flow.transform(c)
    z = torch.randn(n, *flow.bijection.base_shape, device=device, dtype=dtype)
    x, _ = T.call_and_ladj(z)
    assert x.shape == (n, *shape)
    assert (T.inverse_and_ladj(x)[0] - z).abs().max() < tol["roundtrip"]
    data = 2 * torch.randn(n, *shape, device=device, dtype=dtype)
    z2, _ = T.inverse_and_ladj(data)
    assert (T.call_and_ladj(z2)[0] - data).abs().max() < tol["roundtrip"]
    # The torch Transform protocol (T(z), T.inv(x)) agrees with the explicit methods.
    assert torch.allclose(T(z), x) and torch.allclose(T.inv(data), z2)
    assert T.forward_shape(z.shape) == x.shape and T.inverse_shape(x.shape) == z.shape


def test_logdet_matches_autograd(name, context_size, device, dtype, tol):
    shape = shape_of(name)
    flow = make(name, context_size, device, dtype)
    c = make_context(1, context_size, device, dtype)
    T = flow.transform(c)
    base = flow.bijection.base_shape
    z = torch.randn(6 if len(shape) == 1 else 3, *base, device=device, dtype=dtype)
    x, ladj = T.call_and_ladj(z)
    expected = jacobian_logdet(
        lambda v: T.call_and_ladj(v.reshape(base))[0].reshape(-1), z.flatten(1)
    )
    assert (ladj.reshape(-1) - expected).abs().max() < tol["logdet"]
    xd = x.detach()
    _, inv_ladj = T.inverse_and_ladj(xd)
    expected_inv = jacobian_logdet(
        lambda v: T.inverse_and_ladj(v.reshape(shape))[0].reshape(-1), xd.flatten(1)
    )
    assert (inv_ladj.reshape(-1) - expected_inv).abs().max() < tol["logdet"]
    assert (ladj + inv_ladj).abs().max() < tol["logdet"]
    # log_abs_det_jacobian (the Pyro protocol, no cache) agrees too.
    assert (T.log_abs_det_jacobian(z, x) - ladj).abs().max() < tol["logdet"]


def test_shapes_without_context(name, device, dtype, tol):
    shape = shape_of(name)
    flow = make(name, 0, device, dtype)
    d = flow()
    assert d.batch_shape == () and d.event_shape == shape and flow.event_shape == shape
    x = d.sample((2, 3))
    assert x.shape == (2, 3, *shape) and x.dtype == dtype and x.device.type == device.type
    assert d.log_prob(x).shape == (2, 3)
    xs, lp = d.rsample_and_log_prob((5,))
    assert xs.shape == (5, *shape) and lp.shape == (5,)
    assert torch.allclose(lp, d.log_prob(xs), atol=close(name, tol), rtol=close(name, tol))
    with pytest.raises(ValueError, match="expected"):
        d.log_prob(torch.randn(5, 32 + 1, device=device, dtype=dtype))


def test_shapes_with_context(name, device, dtype, tol):
    shape = shape_of(name)
    flow = make(name, CONTEXT, device, dtype)
    c = make_context(4, CONTEXT, device, dtype)
    d = flow(c)
    assert d.batch_shape == (4,) and d.event_shape == shape
    x = d.sample((7,))
    assert x.shape == (7, 4, *shape)
    assert d.log_prob(x).shape == (7, 4)
    assert d.log_prob(x[0]).shape == (4,)
    xs, lp = d.rsample_and_log_prob((3,))
    assert xs.shape == (3, 4, *shape) and lp.shape == (3, 4)
    assert torch.allclose(lp, d.log_prob(xs), atol=close(name, tol), rtol=close(name, tol))
    # Two batch dims of contexts, and the context really changes the density.
    c2 = torch.randn(2, 4, CONTEXT, device=device, dtype=dtype)
    assert flow(c2).log_prob(x[0]).shape == (2, 4)
    assert not torch.allclose(flow(c2[0]).log_prob(x[0]), flow(c2[1]).log_prob(x[0]))


def test_gradients_reach_every_parameter(name, context_size, device, dtype):
    shape = shape_of(name)
    n = 32 if len(shape) == 1 else 8
    flow = make(name, context_size, device, dtype)
    c = make_context(n, context_size, device, dtype)
    x = torch.randn(n, *shape, device=device, dtype=dtype)
    xs, lp = flow(c).rsample_and_log_prob()
    loss = -flow(c).log_prob(x).mean() + (lp - sum_event(xs.square(), shape)).mean()
    loss.backward()
    for pname, p in flow.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"no gradient reaches {pname}"


def test_density_integrates_to_one(name, device, dtype):
    """Known normalising constant: a 2-D vector flow's density integrates to 1 over the plane,
    a (1, 2, 2) image flow's over R^4."""
    if dtype != torch.float64:
        pytest.skip("quadrature check in float64 only")
    if kind(name) == "vector":
        flow = make(name, 0, device, dtype, shape=(2,))
        grid = torch.linspace(-9, 9, 361, device=device, dtype=dtype)
        points = torch.cartesian_prod(grid, grid)
    else:
        flow = make(name, 0, device, dtype, shape=(1, 2, 2), levels=1, transforms=1, hidden=(4,))
        grid = torch.linspace(
            -6.4, 6.4, 17, device=device, dtype=dtype
        )  # trapezoid rule, 17^4 points
        points = torch.cartesian_prod(grid, grid, grid, grid).reshape(-1, 1, 2, 2)
    with torch.no_grad():
        density = torch.cat([flow().log_prob(p).exp() for p in points.split(65536)])
    mass = density.sum() * (grid[1] - grid[0]) ** points[0].numel()
    assert abs(mass.item() - 1) < 5e-3


def test_state_dict_file_and_pickle_round_trips(name, context_size, device, dtype, tmp_path):
    shape = shape_of(name)
    flow = make(name, context_size, device, dtype)
    n = 8 if len(shape) == 1 else 4
    c = make_context(n, context_size, device, dtype)
    x = torch.randn(n, *shape, device=device, dtype=dtype)
    expected = flow(c).log_prob(x)

    other = build(name, features_of(shape), context=context_size, **SMALL).to(device, dtype)
    assert not torch.allclose(other(c).log_prob(x), expected)
    other.load_state_dict(flow.state_dict())  # also marks an image preset's ActNorms initialised
    assert torch.equal(other(c).log_prob(x), expected)

    pyroflows.flows.save(flow, tmp_path / "model.pt")
    loaded = pyroflows.flows.load(tmp_path / "model.pt", map_location=device)
    assert loaded.config["features"] == features_of(shape)
    assert torch.equal(loaded(c).log_prob(x), expected)

    buffer = io.BytesIO()
    pickle.dump(flow, buffer)
    restored = pickle.loads(buffer.getvalue())
    assert torch.equal(restored(c).log_prob(x), expected)


def test_works_inside_plain_pyro(name, context_size, device, dtype, tol):
    shape = shape_of(name)
    flow = make(name, context_size, device, dtype)
    base_shape = flow.bijection.base_shape
    base = dist.Normal(torch.zeros(base_shape, device=device, dtype=dtype), 1.0).to_event(
        len(base_shape)
    )
    if not isinstance(flow.base, pyroflows.StandardNormal):
        base = flow.base()  # a preset's own base distribution (maf-mog's MADE MoG)
    x = torch.randn(5, *shape, device=device, dtype=dtype)
    if context_size:
        c = make_context(5, context_size, device, dtype)
        pyro_dist = dist.ConditionalTransformedDistribution(base, list(flow.transforms)).condition(
            c
        )
        expected = flow(c).log_prob(x)
    else:
        pyro_dist = dist.TransformedDistribution(base, list(flow.transforms))
        expected = flow().log_prob(x)
    assert torch.allclose(
        pyro_dist.log_prob(x), expected, atol=close(name, tol), rtol=close(name, tol)
    )
    # Pyro's base has batch shape (), so the sample shape must carry the contexts' batch (5,).
    assert pyro_dist.sample((3, 5)).shape == (3, 5, *shape)


def test_options_are_honoured(name):
    if kind(name) == "vector":
        features, small_options, large_options = FEATURES, {}, {}
    else:
        features, small_options, large_options = (1, 8, 8), {"levels": 2}, {"levels": 3}
    small = build(name, features, transforms=1, hidden=(8, 8), **small_options)
    large = build(name, features, transforms=3, hidden=(24, 24), **large_options)
    count = lambda f: sum(p.numel() for p in f.parameters())  # noqa: E731
    assert count(small) < count(large)
    assert small.config == {
        "name": name,
        "features": features,
        "context": 0,
        "standardize": False,
        "options": {"transforms": 1, "hidden": (8, 8), **small_options},
    }


# Presets that cannot be traced as one graph, and why (each is documented on its page).
COMPILE_EXEMPT = {
    # torchdiffeq branches on tensor values when it checks the time grid, its adaptive solver
    # accepts or rejects steps on data-dependent errors, and the exact trace calls
    # torch.autograd.grad inside the forward pass: all graph breaks by design of an ODE solve.
    "ffjord": "adaptive ODE solver (torchdiffeq): data-dependent step control",
}


#: Presets whose inverse is a fixed number of root-finding steps: dynamo unrolls the loop, so the
#: compile test traces 4 steps (the same code, and as static, as the default's 30 to 60).
ITERATIVE = {"bnaf", "gf", "naf", "planar", "resflow", "sylvester", "umnn"}


@pytest.mark.slow
def test_compiles_without_graph_breaks(name, context_size, device, dtype):
    """Static shapes, no .item() or data-dependent Python branches: dynamo traces density and
    sampling as one graph each (``fullgraph=True`` fails on any graph break)."""
    if name in COMPILE_EXEMPT:
        pytest.skip(COMPILE_EXEMPT[name])
    shape = shape_of(name)
    torch._dynamo.reset()
    options = {**SMALL, "iterations": 4} if name in ITERATIVE else SMALL
    flow = make(name, context_size, device, dtype, **options)
    c = make_context(4, context_size, device, dtype)
    x = torch.randn(4, *shape, device=device, dtype=dtype)

    def log_prob(x, c):  # noqa: ANN001, ANN202
        return flow(c).log_prob(x)

    def sample(c):  # noqa: ANN001, ANN202
        return flow(c).rsample_and_log_prob((5,))

    compiled = torch.compile(log_prob, backend="eager", fullgraph=True)
    assert torch.allclose(compiled(x, c), log_prob(x, c))
    xs, lp = torch.compile(sample, backend="eager", fullgraph=True)(c)
    assert xs.shape[-len(shape) :] == shape and torch.isfinite(lp).all()


# -- the DensityModel protocol over every registry entry ------------------------------------------

#: Small options per entry (an entry not listed is built with its defaults).
PROTOCOL_OPTIONS = {
    ("density", "made"): {"hidden": (8,)},
    ("density", "made-mog"): {"hidden": (8,), "components": 2},
    ("density", "made-bernoulli"): {"hidden": (8,)},
    ("density", "nade"): {"hidden": 8},
    ("density", "rnade"): {"hidden": 8, "components": 2},
    ("density", "pixelcnn"): {"hidden": 8, "blocks": 1, "first_kernel_size": 3},
    ("destructor", "histogram"): {"bins": 10},
    ("destructor", "mixture"): {"components": 2},
    ("destructor", "tree"): {"max_leaves": 4, "min_leaf": 20},
    ("destructor", "copula"): {"bins": 10},
    ("destructor", "deep"): {
        "layer": "copula",
        "max_layers": 2,
        "layer_options": {"bins": 10},
        "progress": False,
    },
}


def protocol_model(entry, context: int) -> DensityModel:  # noqa: ANN001
    """A small model of ``entry`` meeting the protocol (a fitted destructor's ``as_flow()``)."""
    torch.manual_seed(0)
    shape = IMAGE if entry.kind == "image" else (FEATURES,)
    if entry.family == "flow":
        return make(entry.name, context, "cpu", torch.float64, shape=shape)
    options = PROTOCOL_OPTIONS.get((entry.family, entry.name), {})
    if entry.family == "density":
        return pyroflows.density.build(entry.name, features_of(shape), context, **options).double()
    destructor = pyroflows.destructors.build(entry.name, FEATURES, **options)
    g = torch.Generator().manual_seed(0)
    data = torch.rand(400, FEATURES, generator=g, dtype=torch.float64)
    if destructor.domain != "unit":
        data = torch.special.ndtri(0.01 + 0.98 * data) @ torch.tensor(
            [[1.0, 0.5, 0], [0, 1, 0.3], [0, 0, 1]], dtype=torch.float64
        )
    return destructor.fit(data).as_flow()


@pytest.mark.parametrize("entry", REGISTRY.entries(), ids=lambda e: f"{e.family}-{e.name}")
def test_every_entry_meets_the_density_protocol(entry):
    context = CONTEXT if entry.conditional else 0
    model = protocol_model(entry, context)
    assert isinstance(model, DensityModel) and isinstance(model, torch.nn.Module)
    shape = IMAGE if entry.kind == "image" else (FEATURES,)
    assert isinstance(model.event_shape, torch.Size) and model.event_shape == shape
    assert model.context_features == context
    c = make_context(4, context, "cpu", torch.float64)
    batch = (4,) if context else ()
    d = model(c)
    # A Pyro distribution: a torch Distribution with Pyro's mixin (shape helpers, to_event, ...).
    assert isinstance(d, torch.distributions.Distribution) and isinstance(d, TorchDistributionMixin)
    assert d.batch_shape == batch and d.event_shape == shape
    x = d.sample((3,))
    assert x.shape == (3, *batch, *shape)
    lp = d.log_prob(x)
    assert lp.shape == (3, *batch) and torch.isfinite(lp).all()
    if d.has_rsample:
        xs, lp_s = d.rsample_and_log_prob((2,))
        assert xs.shape == (2, *batch, *shape) and lp_s.shape == (2, *batch)
        assert torch.allclose(lp_s, d.log_prob(xs), atol=1e-6, rtol=1e-6)
        assert d.rsample((2,)).shape == (2, *batch, *shape)
    # A context where none is expected, or none where one is, is refused with a ValueError.
    with pytest.raises(ValueError):
        model(None if context else torch.zeros(4, 1, dtype=torch.float64))


@pytest.mark.parametrize("context_size", [0, CONTEXT], ids=["unconditional", "conditional"])
def test_linear_tails_round_trip_and_logdet_far_outside_the_spline(
    context_size, device, dtype, tol
):
    # nsf-iaf's splines with learned tail slopes, at inputs well past their interval (bound 5).
    flow = make("nsf-iaf", context_size, device, dtype, tails="linear", **SMALL)
    c = make_context(1, context_size, device, dtype)
    T = flow.transform(c)
    z = 8 * torch.randn(
        6, FEATURES, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    z = z.to(device, dtype)
    x, ladj = T.call_and_ladj(z)
    # Values 8 times those of test_round_trip: the absolute tolerance scaled with them.
    assert (T.inverse_and_ladj(x)[0] - z).abs().max() < tol["roundtrip"] * 8
    expected = jacobian_logdet(lambda v: T.call_and_ladj(v)[0].reshape(-1), z)
    assert (ladj.reshape(-1) - expected).abs().max() < tol["logdet"]
    spline = flow.transforms[-1].bijection.map.map.spline
    assert spline.tails == "linear" and spline.num_params == 3 * 4 + 1
