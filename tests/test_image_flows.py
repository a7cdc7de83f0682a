"""Image flows (``available("image")``: glow, realnvp-image), their layers and dequantisation.

The registry-wide properties of ``test_registry_properties.py``, on ``(C, H, W)`` events: each
preset is built small, its ActNorms initialised from a batch, every parameter perturbed, and
checked for exact inverses, log-determinants equal to autograd's, shapes, gradients, a
normalised density (4-D quadrature), and identical densities after state_dict / file / pickle
round trips. Known answers for the layers (squeeze, 1x1 conv, ActNorm) and for the
dequantisation bound (closed forms for a Gaussian model).
"""

from __future__ import annotations

import io
import math
import pickle

import pyro.distributions as dist
import pytest
import torch
from helpers import jacobian_logdet, perturb

import pyroflows
from pyroflows.flows import available, build
from pyroflows.infer.fitting.dequantization import (
    UniformDequantizer,
    VariationalDequantizer,
    discrete_bits_per_dim,
    discrete_log_likelihood,
)
from pyroflows.transforms import (
    AdditiveMap,
    AffineMap,
    ChannelActNorm,
    ImageCompose,
    ImageCoupling,
    InvertibleConv1x1,
    MultiScale,
    SplineMap,
    Squeeze,
)

SHAPE = (2, 4, 4)
CONTEXT = 2
SMALL = {"transforms": 2, "hidden": (16, 16)}


@pytest.fixture(params=available("image"))
def name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=[0, CONTEXT], ids=["unconditional", "conditional"])
def context_size(request: pytest.FixtureRequest) -> int:
    return request.param


def make_context(n: int, context: int, device, dtype):  # noqa: ANN001, ANN201
    if not context:
        return None
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, context, generator=g, dtype=torch.float64).to(device, dtype)


def make(name: str, context: int, device, dtype, shape=SHAPE, seed: int = 0, **options):  # noqa: ANN001, ANN003, ANN201
    """Built, ActNorm-initialised on a batch, then perturbed away from the identity."""
    torch.manual_seed(seed)
    flow = build(name, shape, context=context, **(options or SMALL))
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        x = 1.5 * torch.randn(32, *shape, generator=g) + 0.3
        flow(make_context(32, context, "cpu", torch.float32)).log_prob(x)  # data-dependent init
    # 0.05: a 3x3 convolution of 16 channels sums 144 inputs; 0.1 (the vector tests' scale) would
    # give log-scales at the soft bound and an ill-conditioned map.
    return perturb(flow, scale=0.05, seed=seed).to(device, dtype)


def test_registry_kinds_and_errors():
    assert set(available("image")) == {"glow", "realnvp-image"}
    assert not set(available("image")) & set(available("vector"))
    assert sorted(available("image") + available("vector")) == available()
    assert pyroflows.flows.kind("glow") == "image" and pyroflows.flows.kind("maf") == "vector"
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


def test_round_trip(name, context_size, device, dtype, tol):
    flow = make(name, context_size, device, dtype)
    c = make_context(16, context_size, device, dtype)
    T = flow.transform(c)
    z = torch.randn(16, *flow.bijection.base_shape, device=device, dtype=dtype)
    x, _ = T.call_and_ladj(z)
    assert x.shape == (16, *SHAPE)
    assert (T.inverse_and_ladj(x)[0] - z).abs().max() < tol["roundtrip"]
    data = 2 * torch.randn(16, *SHAPE, device=device, dtype=dtype)
    z2, _ = T.inverse_and_ladj(data)
    assert (T.call_and_ladj(z2)[0] - data).abs().max() < tol["roundtrip"]
    if not context_size:  # the torch Transform protocol agrees
        assert torch.allclose(T(z), x) and torch.allclose(T.inv(data), z2)


def test_logdet_matches_autograd(name, context_size, device, dtype, tol):
    flow = make(name, context_size, device, dtype)
    c = make_context(1, context_size, device, dtype)
    T = flow.transform(c)
    base = flow.bijection.base_shape
    z = torch.randn(3, *base, device=device, dtype=dtype)
    x, ladj = T.call_and_ladj(z)
    expected = jacobian_logdet(lambda v: T.call_and_ladj(v.reshape(base))[0].reshape(-1), z.flatten(1))
    assert (ladj.reshape(-1) - expected).abs().max() < tol["logdet"]
    xd = x.detach()
    _, inv_ladj = T.inverse_and_ladj(xd)
    expected_inv = jacobian_logdet(lambda v: T.inverse_and_ladj(v.reshape(SHAPE))[0].reshape(-1), xd.flatten(1))
    assert (inv_ladj.reshape(-1) - expected_inv).abs().max() < tol["logdet"]
    assert (ladj + inv_ladj).abs().max() < tol["logdet"]


def test_shapes(name, device, dtype):
    flow = make(name, 0, device, dtype)
    d = flow()
    assert d.batch_shape == () and d.event_shape == SHAPE
    x = d.sample((2, 3))
    assert x.shape == (2, 3, *SHAPE) and x.dtype == dtype and x.device.type == device.type
    assert d.log_prob(x).shape == (2, 3)
    xs, lp = d.rsample_and_log_prob((5,))
    assert xs.shape == (5, *SHAPE) and torch.allclose(lp, d.log_prob(xs), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="expected"):
        d.log_prob(torch.randn(5, 32, device=device, dtype=dtype))

    flow = make(name, CONTEXT, device, dtype)
    c = make_context(4, CONTEXT, device, dtype)
    d = flow(c)
    assert d.batch_shape == (4,) and d.event_shape == SHAPE
    x = d.sample((7,))
    assert x.shape == (7, 4, *SHAPE) and d.log_prob(x).shape == (7, 4) and d.log_prob(x[0]).shape == (4,)
    xs, lp = d.rsample_and_log_prob((3,))
    assert xs.shape == (3, 4, *SHAPE) and torch.allclose(lp, d.log_prob(xs), atol=1e-6, rtol=1e-6)
    c2 = torch.randn(2, 4, CONTEXT, device=device, dtype=dtype)
    assert flow(c2).log_prob(x[0]).shape == (2, 4)
    assert not torch.allclose(flow(c2[0]).log_prob(x[0]), flow(c2[1]).log_prob(x[0]))


def test_gradients_reach_every_parameter(name, context_size, device, dtype):
    flow = make(name, context_size, device, dtype)
    c = make_context(8, context_size, device, dtype)
    x = torch.randn(8, *SHAPE, device=device, dtype=dtype)
    xs, lp = flow(c).rsample_and_log_prob()
    loss = -flow(c).log_prob(x).mean() + (lp - xs.square().sum((-3, -2, -1))).mean()
    loss.backward()
    for pname, p in flow.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"no gradient reaches {pname}"


def test_density_integrates_to_one(name, device, dtype):
    """Known normalising constant: a (1, 2, 2) image flow's density integrates to 1 over R^4."""
    if dtype != torch.float64:
        pytest.skip("quadrature check in float64 only")
    flow = make(name, 0, device, dtype, shape=(1, 2, 2), levels=1, transforms=1, hidden=(4,))
    grid = torch.linspace(-6.4, 6.4, 17, device=device, dtype=dtype)  # trapezoid rule, 17^4 points
    points = torch.cartesian_prod(grid, grid, grid, grid).reshape(-1, 1, 2, 2)
    with torch.no_grad():
        density = torch.cat([flow().log_prob(p).exp() for p in points.split(65536)])
    mass = density.sum() * (grid[1] - grid[0]) ** 4
    assert abs(mass.item() - 1) < 5e-3


def test_state_dict_file_and_pickle_round_trips(name, context_size, device, dtype, tmp_path):
    flow = make(name, context_size, device, dtype)
    c = make_context(4, context_size, device, dtype)
    x = torch.randn(4, *SHAPE, device=device, dtype=dtype)
    expected = flow(c).log_prob(x)

    other = build(name, SHAPE, context=context_size, **SMALL).to(device, dtype)
    other.load_state_dict(flow.state_dict())  # also marks its ActNorms initialised
    assert torch.equal(other(c).log_prob(x), expected)

    pyroflows.flows.save(flow, tmp_path / "model.pt")
    loaded = pyroflows.flows.load(tmp_path / "model.pt", map_location=device)
    assert loaded.config["features"] == SHAPE
    assert torch.equal(loaded(c).log_prob(x), expected)

    restored = pickle.loads(pickle.dumps(flow))
    buffer = io.BytesIO()
    torch.save(flow.state_dict(), buffer)
    assert torch.equal(restored(c).log_prob(x), expected)


def test_works_inside_plain_pyro(name, context_size, device, dtype):
    flow = make(name, context_size, device, dtype)
    base = dist.Normal(torch.zeros(flow.bijection.base_shape, device=device, dtype=dtype), 1.0).to_event(3)
    x = torch.randn(5, *SHAPE, device=device, dtype=dtype)
    if context_size:
        c = make_context(5, context_size, device, dtype)
        pyro_dist = dist.ConditionalTransformedDistribution(base, [flow.bijection]).condition(c)
        expected = flow(c).log_prob(x)
    else:
        pyro_dist = dist.TransformedDistribution(base, [flow.bijection])
        expected = flow().log_prob(x)
    assert torch.allclose(pyro_dist.log_prob(x), expected, atol=1e-6, rtol=1e-6)
    assert pyro_dist.sample((3, 5)).shape == (3, 5, *SHAPE)


def test_options_are_honoured(name):
    small = build(name, (1, 8, 8), transforms=1, hidden=(8, 8), levels=2)
    large = build(name, (1, 8, 8), transforms=3, hidden=(24, 24), levels=3)
    count = lambda f: sum(p.numel() for p in f.parameters())  # noqa: E731
    assert count(small) < count(large)
    assert small.config == {"name": name, "features": (1, 8, 8), "context": 0, "standardize": False,
                            "options": {"transforms": 1, "hidden": (8, 8), "levels": 2}}


# -- layers: known answers ---------------------------------------------------------------------


def test_squeeze_is_the_documented_permutation():
    x = torch.arange(2 * 4 * 6.0).reshape(2, 4, 6)
    t = Squeeze((2, 4, 6))
    z = t.inv(x)
    assert z.shape == (8, 2, 3)
    for c in range(2):
        for a in range(2):
            for b in range(2):
                assert torch.equal(z[4 * c + 2 * a + b], x[c, a::2, b::2])
    assert torch.equal(t(z), x)
    with pytest.raises(ValueError, match="even"):
        Squeeze((1, 3, 4))


def test_conv1x1_is_the_lu_matrix_per_pixel():
    torch.manual_seed(0)
    t = perturb(InvertibleConv1x1((3, 2, 5))).double()
    x = torch.randn(4, 3, 2, 5, dtype=torch.float64)
    z, ladj = t.inverse_and_ladj(x)
    W = t.linear.weight()
    assert torch.allclose(z, torch.einsum("dc,nchw->ndhw", W, x))
    assert torch.allclose(ladj, 10 * torch.linalg.slogdet(W)[1].expand(4))
    assert torch.allclose(t.call_and_ladj(z)[0], x)


def test_channel_actnorm_known_density_and_init():
    flow = pyroflows.flows.ImageFlow([ChannelActNorm((2, 3, 3))]).double()
    x = torch.randn(500, 2, 3, 3, dtype=torch.float64) * torch.tensor([2.0, 0.5]).reshape(2, 1, 1) + 1
    lp = flow().log_prob(x)  # initialises: loc = channel mean, scale = channel std
    t = flow.transforms[0]
    flat = x.movedim(1, 0).reshape(2, -1)
    assert torch.allclose(t.loc.flatten(), flat.mean(1)) and torch.allclose(t.log_scale.exp().flatten(), flat.std(1))
    normal = dist.Normal(t.loc.detach(), t.log_scale.detach().exp())
    assert torch.allclose(lp, normal.log_prob(x).sum((-3, -2, -1)))
    state = flow.state_dict()
    fresh = pyroflows.flows.ImageFlow([ChannelActNorm((2, 3, 3))]).double()
    fresh.load_state_dict(state)
    assert torch.equal(fresh().log_prob(x[:3] * 5), flow().log_prob(x[:3] * 5))  # not re-initialised


@pytest.mark.parametrize("mask", ["checkerboard", "channel"])
@pytest.mark.parametrize("make_map", [AffineMap, AdditiveMap, lambda: SplineMap(bins=4, bound=3.0)],
                         ids=["affine", "additive", "spline"])
def test_image_coupling_with_any_map(mask, make_map):
    torch.manual_seed(0)
    t = perturb(ImageCoupling((2, 2, 2), make_map(), mask, parity=1, context=1, hidden=(8, 8)), 0.05).double()
    z = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    c = torch.randn(1, 1, dtype=torch.float64)
    x, ladj = t.call_and_ladj(z, c)
    expected = jacobian_logdet(lambda v: t.call_and_ladj(v.reshape(2, 2, 2), c)[0].reshape(-1), z.flatten(1))
    assert torch.allclose(ladj, expected, atol=1e-10)
    z_back, inv_ladj = t.inverse_and_ladj(x, c)
    assert torch.allclose(z_back, z, atol=1e-12) and torch.allclose(inv_ladj, -ladj, atol=1e-12)
    passing = x == z  # the masked half passes unchanged, the rest moves
    assert passing.float().mean() == 0.5


def test_identity_layers_give_the_standard_normal():
    shape = (1, 4, 4)
    head = ImageCompose([ImageCoupling((4, 2, 2), AffineMap(), "channel", hidden=(4, 4)), Squeeze(shape)])
    tail = ImageCompose([ImageCoupling((2, 2, 2), AffineMap(), "checkerboard", hidden=(4, 4))])
    flow = pyroflows.flows.ImageFlow([MultiScale(head, tail)])
    x = torch.randn(6, *shape)
    assert torch.allclose(flow().log_prob(x), dist.Normal(0.0, 1.0).log_prob(x).sum((-3, -2, -1)), atol=1e-5)
    with pytest.raises(ValueError, match="first half"):
        MultiScale(head, ImageCompose([Squeeze((4, 2, 2))]))
    with pytest.raises(ValueError, match="channel mask"):
        ImageCoupling((1, 4, 4), AffineMap(), "channel")
    with pytest.raises(ValueError, match="next part"):
        ImageCompose([Squeeze(shape), Squeeze(shape)])


# -- dequantisation ---------------------------------------------------------------------------


def _gaussian(scale: float):  # noqa: ANN202
    return lambda x: dist.Normal(0.0, scale).log_prob(x).sum((-3, -2, -1))


def _exact_log_mass(k: torch.Tensor, bins: int, scale: float) -> torch.Tensor:
    """log P(k) of the cells [k/B, (k+1)/B) under N(0, scale^2) per value."""
    normal = dist.Normal(torch.tensor(0.0, dtype=torch.float64), scale)
    k = k.double()
    return torch.log(normal.cdf((k + 1) / bins) - normal.cdf(k / bins)).sum((-3, -2, -1))


def test_uniform_bound_matches_closed_form_and_bits_per_dim():
    torch.manual_seed(0)
    bins, n = 4, 40000
    k = torch.tensor([0, 1, 2, 3], dtype=torch.float64).reshape(1, 1, 2, 2)
    bound = discrete_log_likelihood(_gaussian(1.0), k.expand(n, 1, 2, 2), UniformDequantizer(bins))
    # E[(k + u)^2] = k^2 + k + 1/3 for u ~ U(0, 1)
    expected = (-0.5 * math.log(2 * math.pi) - 0.5 * (k**2 + k + 1 / 3) / bins**2).sum() - 4 * math.log(bins)
    se = bound.std() / math.sqrt(n)
    assert abs(bound.mean() - expected) < 4 * se
    assert expected < _exact_log_mass(k, bins, 1.0)
    assert discrete_bits_per_dim(bound.mean(), 4) == pytest.approx(-bound.mean().item() / (4 * math.log(2)))
    # Raw levels only: images already scaled to [0, 1] (or out of range) are refused.
    for bad in (k / (bins - 1), k + bins):
        with pytest.raises(ValueError, match="integers 0..3"):
            discrete_log_likelihood(_gaussian(1.0), bad, UniformDequantizer(bins))


def test_variational_log_q_matches_autograd():
    torch.manual_seed(0)
    q = perturb(VariationalDequantizer((1, 2, 2), bins=4, transforms=2, hidden=(8, 8))).double()
    k = torch.tensor([0.0, 3.0, 1.0, 2.0], dtype=torch.float64).reshape(1, 2, 2)
    eps = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    u, log_q = q.sample_with_noise(k, eps)
    assert ((u > 0) & (u < 1)).all()
    log_det = jacobian_logdet(lambda e: q.sample_with_noise(k, e.reshape(1, 2, 2))[0].reshape(-1), eps.flatten(1))
    expected = dist.Normal(0.0, 1.0).log_prob(eps).sum((-3, -2, -1)) - log_det
    assert torch.allclose(log_q, expected, atol=1e-8)


def test_variational_dequantization_tightens_the_bound():
    """For a model whose density varies within a cell, training q(u|k) raises the bound above the
    uniform one, towards (and not above) the exact log P(k)."""
    torch.manual_seed(0)
    bins, scale, n = 2, 0.25, 4000
    model = _gaussian(scale)
    k = torch.tensor([0.0, 1.0, 1.0, 0.0]).reshape(1, 1, 2, 2).expand(256, 1, 2, 2)
    q = VariationalDequantizer((1, 2, 2), bins=bins, transforms=2, hidden=(16, 16))
    optimizer = torch.optim.Adam(q.parameters(), lr=1e-2)
    for _ in range(150):
        loss = -discrete_log_likelihood(model, k, q).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    exact = _exact_log_mass(k[:1], bins, scale).item()
    with torch.no_grad():
        kk = k[:1].expand(n, 1, 2, 2)
        variational = discrete_log_likelihood(model, kk, q).double()
        uniform = discrete_log_likelihood(model, kk, UniformDequantizer(bins)).double()
    se = variational.std().item() / math.sqrt(n)
    assert uniform.mean() < exact - 0.3  # a loose bound to begin with
    assert variational.mean() > uniform.mean() + 0.25
    assert variational.mean() < exact + 4 * se
    assert exact - variational.mean() < 0.1


@pytest.mark.slow
def test_compiles_without_graph_breaks(name, context_size, device, dtype):
    torch._dynamo.reset()
    flow = make(name, context_size, device, dtype)
    c = make_context(4, context_size, device, dtype)
    x = torch.randn(4, *SHAPE, device=device, dtype=dtype)

    def log_prob(x, c):  # noqa: ANN001, ANN202
        return flow(c).log_prob(x)

    def sample(c):  # noqa: ANN001, ANN202
        return flow(c).rsample_and_log_prob((5,))

    compiled = torch.compile(log_prob, backend="eager", fullgraph=True)
    assert torch.allclose(compiled(x, c), log_prob(x, c))
    xs, lp = torch.compile(sample, backend="eager", fullgraph=True)(c)
    assert xs.shape[-3:] == SHAPE and torch.isfinite(lp).all()


def test_coupling_names_a_missing_or_misshaped_context():
    from pyroflows.transforms import AffineMap, ImageCoupling

    x = torch.zeros(2, 1, 4, 4)
    vector = ImageCoupling((1, 4, 4), AffineMap(), "checkerboard", hidden=(8, 8), context=3)
    with pytest.raises(ValueError, match="conditional on a context of 3"):
        vector.call_and_ladj(x)
    with pytest.raises(ValueError, match="context has shape"):
        vector.inverse_and_ladj(x, torch.zeros(2, 5))
    maps = ImageCoupling((1, 4, 4), AffineMap(), "checkerboard", hidden=(8, 8), context=2,
                         spatial_context=True)
    with pytest.raises(ValueError, match=r"context maps of shape \(\.\.\., 2, 4, 4\)"):
        maps.call_and_ladj(x, torch.zeros(2, 2, 3, 3))
    assert maps.call_and_ladj(x, torch.zeros(2, 2, 4, 4))[0].shape == x.shape
