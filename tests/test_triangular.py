"""LowerTriangularAffine: the Bijection contract (round trip, log-det, shapes, dtype, state)."""

from __future__ import annotations

import io

import pytest
import torch
from helpers import jacobian_logdet, perturb

from pyroflows.core import Flow
from pyroflows.transforms.triangular import LowerTriangularAffine

L0 = torch.tensor([[2.0, 0.0, 0.0], [0.5, 1.0, 0.0], [-1.0, 0.3, 0.2]], dtype=torch.float64)
LOC = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)


def make(device, dtype, trainable=True):  # noqa: ANN001, ANN201
    return LowerTriangularAffine(3, LOC, L0, trainable=trainable).to(device, dtype)


def test_matches_dense_affine(device, dtype, tol):
    t = make(device, dtype)
    z = torch.randn(7, 3, device=device, dtype=dtype)
    x, ladj = t.call_and_ladj(z)
    L = L0.to(device, dtype)
    assert torch.allclose(x, LOC.to(device, dtype) + z @ L.T, atol=tol["roundtrip"])
    assert torch.allclose(ladj, torch.logdet(L).expand(7), atol=tol["logdet"])
    assert x.dtype == dtype and x.device.type == device.type


def test_round_trip_and_logdet(device, dtype, tol):
    t = perturb(make(device, dtype), scale=0.1)
    z = torch.randn(16, 3, device=device, dtype=dtype)
    x, ladj = t.call_and_ladj(z)
    z2, inv_ladj = t.inverse_and_ladj(x)
    assert (z2 - z).abs().max() < tol["roundtrip"]
    assert torch.allclose(ladj, -inv_ladj, atol=tol["logdet"])
    if dtype == torch.float64:
        expected = jacobian_logdet(lambda v: t.call_and_ladj(v)[0], z[:4])
        assert torch.allclose(ladj[:4], expected, atol=tol["logdet"])
    # The torch Transform protocol agrees.
    assert torch.allclose(t(z), x) and torch.allclose(t.inv(x), z2)


def test_batch_shapes():
    t = make(torch.device("cpu"), torch.float64)
    z = torch.randn(2, 5, 3, dtype=torch.float64)
    x, ladj = t.call_and_ladj(z)
    assert x.shape == (2, 5, 3) and ladj.shape == (2, 5)
    z2, inv_ladj = t.inverse_and_ladj(x)
    assert z2.shape == (2, 5, 3) and inv_ladj.shape == (2, 5)
    assert torch.allclose(z2, z)


def test_gradients_and_fixed_mode():
    t = make(torch.device("cpu"), torch.float64)
    x, ladj = t.call_and_ladj(torch.randn(4, 3, dtype=torch.float64))
    (x.sum() + ladj.sum()).backward()
    assert all(p.grad is not None for p in t.parameters())
    fixed = make(torch.device("cpu"), torch.float64, trainable=False)
    assert not list(fixed.parameters())
    assert {"loc", "off_diag", "log_diag"} <= set(fixed.state_dict())


def test_state_dict_round_trip_and_flow():
    t = perturb(make(torch.device("cpu"), torch.float64))
    buffer = io.BytesIO()
    torch.save(t.state_dict(), buffer)
    buffer.seek(0)
    fresh = LowerTriangularAffine(3).double()
    fresh.load_state_dict(torch.load(buffer))
    z = torch.randn(5, 3, dtype=torch.float64)
    assert torch.allclose(fresh(z), t(z))
    flow = Flow([fresh]).double()
    x = flow().sample((2000,))
    assert x.shape == (2000, 3)
    assert torch.allclose(
        flow().log_prob(x[:3]),
        torch.distributions.MultivariateNormal(fresh.loc, scale_tril=fresh.scale_tril()).log_prob(
            x[:3]
        ),
        atol=1e-10,
    )


def test_bad_arguments():
    with pytest.raises(ValueError, match="shape"):
        LowerTriangularAffine(3, loc=torch.zeros(2))
    with pytest.raises(ValueError, match="positive diagonal"):
        LowerTriangularAffine(2, scale_tril=torch.tensor([[1.0, 0.0], [0.0, -1.0]]))
