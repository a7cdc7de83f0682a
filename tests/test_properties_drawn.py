"""Drawn property tests (as TensorFlow Probability's bijector tests): the registry-wide
properties of ``tests/test_registry_properties.py``, with the event size, batch shape, context
size, dtype and parameter perturbation drawn by Hypothesis rather than fixed.

For every flow preset (vector and image kinds) and every destructor's ``as_flow()``, each
example checks: shapes, the round trip ``inverse(forward(z)) == z`` (and the other way), the
log-determinant against autograd's Jacobian, and that the inverse's log-determinant is minus
the forward one, within the suite's tolerances (float64: round trip 1e-8, log-det 1e-6;
float32: 1e-3). A combination a preset legitimately refuses (an image whose height and width do
not divide as its levels need) is skipped with ``hypothesis.assume``.

Examples per test follow the Hypothesis profile (``tests/conftest.py``): ``ci`` (default) runs
a few per preset, ``HYPOTHESIS_PROFILE=slow`` or ``--hypothesis-profile=slow`` many more.
All profiles are derandomized, so CI is deterministic.
"""

from __future__ import annotations

import pytest
import torch
from helpers import jacobian_logdet, perturb
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import pyroflows
from pyroflows.flows import available, build, kind

#: Examples per test relative to the profile (``ci``: 10 -> factor 1, ``slow``: 100 -> 10).
SCALE = max(1, settings.default.max_examples // 10)


def drawn_settings(examples: int):  # noqa: ANN201
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


TOL = {
    torch.float64: {"roundtrip": 1e-8, "logdet": 1e-6},
    torch.float32: {"roundtrip": 1e-3, "logdet": 1e-3},
}

#: Small options per flow preset (the rest: ``SMALL``).
SMALL = {"transforms": 2, "hidden": (8,)}
IMAGE_SMALL = {"transforms": 1, "hidden": (8,), "levels": 1}

dtypes = st.sampled_from([torch.float64, torch.float32])
batch_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)
scales = st.sampled_from([0.0, 0.02, 0.05, 0.1, 0.2])
seeds = st.integers(0, 2**16)


def build_flow(name: str, shape: tuple[int, ...], context: int, scale: float, seed: int):  # noqa: ANN201
    """A small preset, (images:) ActNorm-initialised on a batch, perturbed by ``scale``."""
    torch.manual_seed(seed)
    if len(shape) == 1:
        flow = build(name, shape[0], context=context, **SMALL)
        return perturb(flow, scale=scale, seed=seed)
    flow = build(name, shape, context=context, **IMAGE_SMALL)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        x = 1.5 * torch.randn(16, *shape, generator=g) + 0.3
        c = torch.randn(16, context, generator=g) if context else None
        flow(c).log_prob(x)  # data-dependent ActNorm initialisation
    # Images: half the vector scale (a convolution sums many inputs; see the registry test).
    return perturb(flow, scale=scale / 2, seed=seed)


def draw_shape(data: st.DataObject, name: str) -> tuple[int, ...]:
    if kind(name) == "vector":
        return (data.draw(st.integers(1, 5), label="features"),)
    c = data.draw(st.integers(1, 3), label="channels")
    h = data.draw(st.sampled_from([2, 4, 6]), label="height")
    w = data.draw(st.sampled_from([2, 4, 6]), label="width")
    return (c, h, w)


def check_bijection(T, base_shape, shape, batch, dtype, device, seed):  # noqa: ANN001, N803, PLR0913
    """Shapes, both round trips, log-det against autograd and inverse log-det = -forward."""
    tol = TOL[dtype]
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(*batch, *base_shape, generator=g, dtype=torch.float64).to(device, dtype)
    x, ladj = T.call_and_ladj(z)
    assert x.shape == (*batch, *shape) and x.dtype == dtype
    assert ladj.shape == batch
    z_back, inv_ladj = T.inverse_and_ladj(x)
    assert z_back.shape == z.shape and inv_ladj.shape == batch
    assert torch.isfinite(x).all() and torch.isfinite(ladj).all()
    assert (z_back - z).abs().max() < tol["roundtrip"], "inverse(forward(z)) != z"
    assert (ladj + inv_ladj).abs().max() < tol["logdet"], "inverse log-det != -forward"
    return z, x, ladj, inv_ladj


@pytest.mark.parametrize("name", available())
@drawn_settings(8)
@given(data=st.data())
def test_drawn_flow_properties(name, data, device):  # noqa: ANN001
    shape = draw_shape(data, name)
    batch = data.draw(batch_shapes, label="batch")
    context = data.draw(st.integers(0, 3), label="context")
    dtype = data.draw(dtypes, label="dtype")
    scale = data.draw(scales, label="scale")
    seed = data.draw(seeds, label="seed")
    try:
        flow = build_flow(name, shape, context, scale, seed)
    except ValueError as error:  # a shape the preset refuses, with its reason
        assume("multiples of" not in str(error) and "at least 2 features" not in str(error))
        raise
    flow = flow.to(device, dtype)
    g = torch.Generator().manual_seed(seed + 1)
    c = (
        torch.randn(*batch, context, generator=g, dtype=torch.float64).to(device, dtype)
        if context
        else None
    )
    T = flow.transform(c)
    base_shape = flow.bijection.base_shape
    z, x, ladj, inv_ladj = check_bijection(T, base_shape, shape, batch, dtype, device, seed)
    tol = TOL[dtype]

    # The other round trip, from data.
    data_x = 1.5 * torch.randn(*batch, *shape, generator=g, dtype=torch.float64).to(device, dtype)
    z2, _ = T.inverse_and_ladj(data_x)
    assert z2.shape == (*batch, *base_shape)
    assert (T.call_and_ladj(z2)[0] - data_x).abs().max() < tol["roundtrip"] * max(
        1.0, data_x.abs().max().item()
    )

    # Log-determinants against autograd, for (at most) two rows of the batch, each with its
    # own context.
    zf = z.reshape(-1, *base_shape)
    xf = x.detach().reshape(-1, *shape)
    cf = c.reshape(-1, context) if c is not None else None
    ladj_f, inv_f = ladj.reshape(-1), inv_ladj.reshape(-1)
    rows = [0] if zf.shape[0] == 1 else [0, zf.shape[0] - 1]
    for i in rows:
        t_i = flow.transform(cf[i] if cf is not None else None)
        expected = jacobian_logdet(
            lambda v, t_i=t_i: t_i.call_and_ladj(v.reshape(base_shape))[0].reshape(-1),
            zf[i : i + 1].flatten(1),
        )
        assert (ladj_f[i] - expected).abs().max() < tol["logdet"], "forward log-det != autograd"
        expected_inv = jacobian_logdet(
            lambda v, t_i=t_i: t_i.inverse_and_ladj(v.reshape(shape))[0].reshape(-1),
            xf[i : i + 1].flatten(1),
        )
        assert (inv_f[i] - expected_inv).abs().max() < tol["logdet"], "inverse log-det != autograd"

    # The density's shapes: log_prob over the batch, samples of the drawn shape.
    d = flow(c)
    d_batch = batch if context else ()  # without a context the distribution is unbatched
    assert d.batch_shape == d_batch and d.event_shape == shape
    lp = d.log_prob(x.detach())
    assert lp.shape == batch and torch.isfinite(lp).all()
    assert d.sample((2,)).shape == (2, *d_batch, *shape)


# -- destructors' flows -----------------------------------------------------------------------

#: Small options per destructor (their fit must stay cheap).
DESTRUCTOR_OPTIONS = {
    "histogram": {"bins": 8},
    "mixture": {"components": 2, "max_iter": 20},
    "tree": {"max_leaves": 4, "min_leaf": 20},
    "copula": {"bins": 8},
    "deep": {"layer": "copula", "max_layers": 2, "layer_options": {"bins": 8}, "progress": False},
}


def fitted_destructor(name: str, features: int, seed: int):  # noqa: ANN201
    destructor = pyroflows.destructors.build(name, features, **DESTRUCTOR_OPTIONS.get(name, {}))
    g = torch.Generator().manual_seed(seed)
    data = torch.rand(300, features, generator=g, dtype=torch.float64)
    if destructor.domain != "unit":
        mix = torch.eye(features, dtype=torch.float64) + 0.3 * torch.randn(
            features, features, generator=g, dtype=torch.float64
        ).triu(1)
        data = torch.special.ndtri(0.01 + 0.98 * data) @ mix
    else:
        data = 0.02 + 0.96 * data
    return destructor.fit(data)


@pytest.mark.parametrize("name", pyroflows.destructors.available())
@drawn_settings(4)
@given(data=st.data())
def test_drawn_destructor_flow_properties(name, data, device):  # noqa: ANN001
    features = data.draw(st.integers(1, 4), label="features")
    batch = data.draw(batch_shapes, label="batch")
    dtype = data.draw(dtypes, label="dtype")
    seed = data.draw(seeds, label="seed")
    flow = fitted_destructor(name, features, seed).as_flow().to(device, dtype)
    T = flow.transform(None)
    tol = TOL[dtype]
    g = torch.Generator().manual_seed(seed + 1)
    # Base side: the unit cube, away from its faces (where clamps act).
    u = (0.05 + 0.9 * torch.rand(*batch, features, generator=g, dtype=torch.float64)).to(
        device, dtype
    )
    x, ladj = T.call_and_ladj(u)
    assert x.shape == (*batch, features) and ladj.shape == batch
    u_back, inv_ladj = T.inverse_and_ladj(x)
    assert (u_back - u).abs().max() < tol["roundtrip"], "inverse(forward(u)) != u"
    assert (ladj + inv_ladj).abs().max() < tol["logdet"], "inverse log-det != -forward"
    uf = u.reshape(-1, features)
    for i in sorted({0, uf.shape[0] - 1}):
        ui = uf[i : i + 1]
        expected = jacobian_logdet(lambda v: T.call_and_ladj(v)[0], ui)
        assert (ladj.reshape(-1)[i] - expected).abs().max() < tol["logdet"], "log-det != autograd"
    lp = flow().log_prob(x)
    assert lp.shape == batch and not torch.isnan(lp).any()
