"""Image layers and dequantisation: known answers for the layers (squeeze, 1x1 conv, ActNorm,
couplings, multi-scale) and for the dequantisation bound (closed forms for a Gaussian model).

The registry-wide properties of the image presets (``available("image")``: glow,
realnvp-image) are checked with the vector presets', in one parametrization, in
``test_registry_properties.py``.
"""

from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from helpers import jacobian_logdet, perturb

from pyroflows import Flow
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
    Compose,
    ImageCoupling,
    Inverse,
    InvertibleConv1x1,
    LULinear,
    MultiScale,
    SplineMap,
    Squeeze,
    checkerboard_mask,
)

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
    flow = Flow([ChannelActNorm((2, 3, 3))]).double()
    x = (
        torch.randn(500, 2, 3, 3, dtype=torch.float64) * torch.tensor([2.0, 0.5]).reshape(2, 1, 1)
        + 1
    )
    lp = flow().log_prob(x)  # initialises: loc = channel mean, scale = channel std
    t = flow.transforms[0]
    flat = x.movedim(1, 0).reshape(2, -1)
    assert torch.allclose(t.loc.flatten(), flat.mean(1)) and torch.allclose(
        t.log_scale.exp().flatten(), flat.std(1)
    )
    normal = dist.Normal(t.loc.detach(), t.log_scale.detach().exp())
    assert torch.allclose(lp, normal.log_prob(x).sum((-3, -2, -1)))
    state = flow.state_dict()
    fresh = Flow([ChannelActNorm((2, 3, 3))]).double()
    fresh.load_state_dict(state)
    assert torch.equal(
        fresh().log_prob(x[:3] * 5), flow().log_prob(x[:3] * 5)
    )  # not re-initialised


@pytest.mark.parametrize("mask", ["checkerboard", "channel"])
@pytest.mark.parametrize(
    "make_map",
    [AffineMap, AdditiveMap, lambda: SplineMap(bins=4, bound=3.0)],
    ids=["affine", "additive", "spline"],
)
def test_image_coupling_with_any_map(mask, make_map):
    torch.manual_seed(0)
    t = perturb(
        ImageCoupling((2, 2, 2), make_map(), mask, parity=1, context=1, hidden=(8, 8)), 0.05
    ).double()
    z = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    c = torch.randn(1, 1, dtype=torch.float64)
    x, ladj = t.call_and_ladj(z, c)
    expected = jacobian_logdet(
        lambda v: t.call_and_ladj(v.reshape(2, 2, 2), c)[0].reshape(-1), z.flatten(1)
    )
    assert torch.allclose(ladj, expected, atol=1e-10)
    z_back, inv_ladj = t.inverse_and_ladj(x, c)
    assert torch.allclose(z_back, z, atol=1e-12) and torch.allclose(inv_ladj, -ladj, atol=1e-12)
    passing = x == z  # the masked half passes unchanged, the rest moves
    assert passing.float().mean() == 0.5


def test_identity_layers_give_the_standard_normal():
    shape = (1, 4, 4)
    head = Compose(
        [ImageCoupling((4, 2, 2), AffineMap(), "channel", hidden=(4, 4)), Squeeze(shape)]
    )
    tail = Compose([ImageCoupling((2, 2, 2), AffineMap(), "checkerboard", hidden=(4, 4))])
    flow = Flow([MultiScale(head, tail)])
    x = torch.randn(6, *shape)
    assert torch.allclose(
        flow().log_prob(x), dist.Normal(0.0, 1.0).log_prob(x).sum((-3, -2, -1)), atol=1e-5
    )
    with pytest.raises(ValueError, match="first half"):
        MultiScale(head, Compose([Squeeze((4, 2, 2))]))
    with pytest.raises(ValueError, match="channel mask"):
        ImageCoupling((1, 4, 4), AffineMap(), "channel")
    with pytest.raises(ValueError, match="next part"):
        Compose([Squeeze(shape), Squeeze(shape)])


def test_one_core_serves_images_and_vectors():
    """Bijection, Inverse, Compose and ConditionedBijection know both event shapes."""
    t = Squeeze((1, 4, 4))
    assert t.shape == (1, 4, 4) and t.base_shape == (4, 2, 2) and t.features == 16
    assert t.domain.event_dim == 3 and t.codomain.event_dim == 3 and t.event_dim == 3
    assert t.forward_shape((5, 4, 2, 2)) == (5, 1, 4, 4) and t.inverse_shape((5, 1, 4, 4)) == (
        5,
        4,
        2,
        2,
    )
    with pytest.raises(ValueError, match=r"expected \(\.\.\., 4, 2, 2\)"):
        t(torch.zeros(5, 1, 4, 4))
    inv = t.inv
    assert isinstance(inv, Inverse) and inv.inv is t
    assert inv.shape == (4, 2, 2) and inv.base_shape == (1, 4, 4)
    x = torch.randn(3, 1, 4, 4)
    assert torch.equal(t(inv(x)), x) and inv.call_and_ladj(x)[1].shape == (3,)
    coupling = ImageCoupling((1, 4, 4), AffineMap(), "checkerboard", hidden=(4,), context=2)
    conditioned = coupling.condition(torch.zeros(3, 2))
    assert (
        conditioned.shape == conditioned.base_shape == (1, 4, 4)
        and conditioned.domain.event_dim == 3
    )
    assert conditioned(x).shape == x.shape and conditioned.inverse_shape(x.shape) == x.shape
    vector = LULinear(3)
    assert vector.shape == vector.base_shape == (3,) and vector.features == 3
    assert vector.domain.event_dim == vector.codomain.event_dim == 1
    with pytest.raises(ValueError, match="next part, Squeeze, takes"):
        Compose([LULinear(16), t])
    assert torch.equal(checkerboard_mask(2, 3, 1), ~checkerboard_mask(2, 3))


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
    expected = (
        -0.5 * math.log(2 * math.pi) - 0.5 * (k**2 + k + 1 / 3) / bins**2
    ).sum() - 4 * math.log(bins)
    se = bound.std() / math.sqrt(n)
    assert abs(bound.mean() - expected) < 4 * se
    assert expected < _exact_log_mass(k, bins, 1.0)
    assert discrete_bits_per_dim(bound.mean(), 4) == pytest.approx(
        -bound.mean().item() / (4 * math.log(2))
    )
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
    log_det = jacobian_logdet(
        lambda e: q.sample_with_noise(k, e.reshape(1, 2, 2))[0].reshape(-1), eps.flatten(1)
    )
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


def test_coupling_names_a_missing_or_misshaped_context():
    from pyroflows.transforms import AffineMap, ImageCoupling

    x = torch.zeros(2, 1, 4, 4)
    vector = ImageCoupling((1, 4, 4), AffineMap(), "checkerboard", hidden=(8, 8), context=3)
    with pytest.raises(ValueError, match="conditional on a context of 3"):
        vector.call_and_ladj(x)
    with pytest.raises(ValueError, match="context has shape"):
        vector.inverse_and_ladj(x, torch.zeros(2, 5))
    maps = ImageCoupling(
        (1, 4, 4), AffineMap(), "checkerboard", hidden=(8, 8), context=2, spatial_context=True
    )
    with pytest.raises(ValueError, match=r"context maps of shape \(\.\.\., 2, 4, 4\)"):
        maps.call_and_ladj(x, torch.zeros(2, 2, 3, 3))
    assert maps.call_and_ladj(x, torch.zeros(2, 2, 4, 4))[0].shape == x.shape
