"""The STL path gradient from the sampling pass equals the one through the inverse flow."""

from __future__ import annotations

import copy

import pytest
import torch

import pyroflows
from pyroflows.core import Flow
from pyroflows.infer.guides import path_gradient
from pyroflows.infer.guides.guide_distribution import detached_log_prob
from pyroflows.infer.guides.path_gradient import rsample_with_path_gradient
from pyroflows.transforms import ElementwiseAffine
from pyroflows.transforms.triangular import LowerTriangularAffine


def _guide_like_flow(features: int, body: str, affine: type) -> Flow:
    """The shape of AutoFlow's flow: trainable affine, body, fixed affine; perturbed from the
    identity so that every layer matters."""
    torch.manual_seed(0)
    inner = pyroflows.flows.build(body, features, transforms=2, hidden=(8,))
    flow = Flow([affine(features), *inner.transforms, affine(features, trainable=False)])
    flow = flow.double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return flow


@pytest.mark.parametrize("whole_flow", [True, False], ids=["whole-flow", "layer-by-layer"])
@pytest.mark.parametrize(
    "body, affine",
    [
        ("nsf-iaf", LowerTriangularAffine),
        ("nsf-iaf", ElementwiseAffine),
        ("realnvp", LowerTriangularAffine),  # any layer: Jacobian from copies
    ],
)
def test_value_and_gradient_match_the_inverse_pass(monkeypatch, whole_flow, body, affine):
    monkeypatch.setattr(path_gradient, "WHOLE_FLOW_MAX_DIM", 10**6 if whole_flow else 0)
    flow = _guide_like_flow(4, body, affine)
    params = list(flow.parameters())
    torch.manual_seed(1)
    x, log_q = rsample_with_path_gradient(flow, torch.Size([3, 2]))
    torch.manual_seed(1)
    x_ref, log_q_ref = flow().rsample_and_log_prob((3, 2))
    assert x.shape == (3, 2, 4) and log_q.shape == (3, 2)
    assert torch.allclose(x, x_ref) and torch.allclose(log_q, log_q_ref)
    # STL through the inverse flow: log q with detached parameters, at the same sample.
    expected = torch.autograd.grad(detached_log_prob(flow, x_ref).sum(), params, allow_unused=True)
    got = torch.autograd.grad(log_q.sum(), params, allow_unused=True)
    for g, e in zip(got, expected):
        if e is None:
            assert g is None or torch.count_nonzero(g) == 0
        else:
            assert torch.allclose(g, e, atol=1e-10, rtol=1e-8)


def test_the_gradient_vanishes_when_q_is_the_target():
    """STL's defining property: at q = p, log p(x) - log q(x) has zero path gradient."""
    flow = _guide_like_flow(3, "nsf-iaf", LowerTriangularAffine)
    target = copy.deepcopy(flow).requires_grad_(False)  # p: a frozen copy of q
    x, log_q = rsample_with_path_gradient(flow, torch.Size([16]))
    log_p = target().log_prob(x)
    params = list(flow.parameters())
    grads = torch.autograd.grad((log_p - log_q).sum(), params, allow_unused=True)
    assert sum(g.abs().sum() for g in grads if g is not None) < 1e-8
    # The plain reparametrised gradient keeps the score term, which does not vanish.
    x, log_q = flow().rsample_and_log_prob((16,))
    grads = torch.autograd.grad((target().log_prob(x) - log_q).sum(), params, allow_unused=True)
    assert sum(g.abs().sum() for g in grads if g is not None) > 1e-3


def test_the_guide_distribution_refuses_a_path_gradient_without_an_unconditional_flow():
    from pyroflows.infer.guides.guide_distribution import GuideFlowDistribution

    flow = _guide_like_flow(2, "nsf-iaf", LowerTriangularAffine)
    with pytest.raises(ValueError, match="path_gradient"):
        GuideFlowDistribution(flow.base(), flow.transform(), path_gradient=True)
    with pytest.raises(ValueError, match="path_gradient"):
        GuideFlowDistribution(
            flow.base(), flow.transform(), stl=(flow, torch.zeros(1)), path_gradient=True
        )
