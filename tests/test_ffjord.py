"""The ``ffjord`` family: continuous normalizing flows (Chen et al. 2018; Grathwohl et al. 2019).

Known answers: a linear field :math:`f(z) = Az` flows to :math:`x = e^{AT} z` with
:math:`\\log|\\det| = T \\operatorname{tr} A` (values and gradients); the Hutchinson estimator's
mean matches the exact trace integral; the adjoint's gradients match direct backpropagation.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import perturb
from torch import Tensor, nn

from pyroflows.flows import build
from pyroflows.flows.continuous import regularized_log_prob
from pyroflows.transforms.continuous import ContinuousFlow, default_tolerances

F64 = torch.float64


class LinearField(nn.Module):
    """:math:`f(z, t) = A z`, the field with a closed-form flow."""

    def __init__(self, matrix: Tensor) -> None:
        super().__init__()
        self.A = nn.Parameter(matrix.clone())

    def forward(self, z: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:
        return z @ self.A.T


def linear_flow(matrix: Tensor, end: float, dtype: torch.dtype = F64, **kwargs) -> ContinuousFlow:  # noqa: ANN003
    return ContinuousFlow(matrix.shape[0], time=end, field=LinearField(matrix), **kwargs).to(
        dtype=dtype
    )


def generic(features: int = 3, context: int = 0, seed: int = 0, **kwargs) -> ContinuousFlow:  # noqa: ANN003
    torch.manual_seed(seed)
    flow = ContinuousFlow(features, context, hidden=(16, 16), **kwargs)
    return perturb(flow, scale=0.3, seed=seed).double()


# -- known answer: the linear ODE ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_linear_field_matches_matrix_exponential(dtype: torch.dtype, device: torch.device) -> None:
    g = torch.Generator().manual_seed(0)
    A = 0.5 * torch.randn(3, 3, generator=g, dtype=F64)
    T = 0.7
    t = linear_flow(A, T, dtype).to(device)
    T = t.time.item()  # 0.7 as rounded to the parameter's (default) dtype at construction
    z = torch.randn(16, 3, generator=g, dtype=F64).to(device, dtype)
    x, ladj = t.call_and_ladj(z)
    assert x.dtype == dtype and x.device.type == device.type and ladj.shape == (16,)
    expected = z.double() @ torch.linalg.matrix_exp(A * T).T.to(device)
    tol = 1e-8 if dtype == F64 else 1e-4
    assert (x.double() - expected).abs().max() < tol
    assert (ladj.double() - T * torch.trace(A)).abs().max() < tol
    z_back, inv_ladj = t.inverse_and_ladj(x)
    assert (z_back - z).abs().max() < tol and (inv_ladj + ladj).abs().max() < tol


def test_linear_field_gradients_match_closed_form() -> None:
    """Backpropagation through the solver (create_graph trace): d ladj/dA = T I,
    d ladj/dT = tr A and d x/dT = A e^{AT} z."""
    g = torch.Generator().manual_seed(1)
    A = 0.5 * torch.randn(3, 3, generator=g, dtype=F64)
    T = 0.8
    t = linear_flow(A, T)
    T = t.time.item()
    z = torch.randn(4, 3, generator=g, dtype=F64)
    x, ladj = t.call_and_ladj(z)
    gA, gT = torch.autograd.grad(ladj.sum(), [t.net.A, t.time], retain_graph=True)
    assert (gA - 4 * T * torch.eye(3, dtype=F64)).abs().max() < 1e-8
    assert abs(gT.item() - 4 * torch.trace(A).item()) < 1e-8
    (gT_x,) = torch.autograd.grad(x.sum(), [t.time])
    expected = (z @ (A @ torch.linalg.matrix_exp(A * T)).T).sum()
    assert abs(gT_x.item() - expected.item()) < 1e-7


def test_linear_field_penalties_match_closed_form() -> None:
    """RNODE penalties: Frobenius integral T ||A||_F^2 exactly; kinetic energy
    int_0^T ||A e^{At} z||^2 dt by 20-node Gauss-Legendre (exact to double precision here)."""
    g = torch.Generator().manual_seed(4)
    A = 0.5 * torch.randn(3, 3, generator=g, dtype=F64)
    t = linear_flow(A, 0.9)
    T = t.time.item()
    z = torch.randn(5, 3, generator=g, dtype=F64)
    nodes, weights = np.polynomial.legendre.leggauss(20)
    kinetic = sum(
        w * T / 2 * (z @ (A @ torch.linalg.matrix_exp(A * T * (s + 1) / 2)).T).square().sum(-1)
        for s, w in zip(nodes.tolist(), weights.tolist())
    )
    x, ladj, k, b = t.call_and_penalties(z)
    assert (k - kinetic).abs().max() < 1e-8
    assert (b - T * A.square().sum()).abs().max() < 1e-8
    z_back, inv_ladj, k_inv, b_inv = t.inverse_and_penalties(x)
    assert (k_inv - kinetic).abs().max() < 1e-8 and (b_inv - b).abs().max() < 1e-8
    assert (z_back - z).abs().max() < 1e-8 and (inv_ladj + ladj).abs().max() < 1e-8


def test_regularized_log_prob_matches_log_prob() -> None:
    torch.manual_seed(0)
    flow = perturb(build("ffjord", 3, context=2, transforms=2, hidden=(8, 8))).double()
    x = torch.randn(6, 3, dtype=F64)
    c = torch.randn(6, 2, dtype=F64)
    lp, kinetic, frobenius = regularized_log_prob(flow, x, c)
    assert (lp - flow(c).log_prob(x)).abs().max() < 1e-8
    assert (
        kinetic.shape == frobenius.shape == (6,) and (kinetic > 0).all() and (frobenius > 0).all()
    )
    # Hutchinson's Frobenius estimate is unbiased too: mean of many draws vs the exact value.
    hutch = build("ffjord", 3, context=2, transforms=2, hidden=(8, 8), trace="hutchinson").double()
    hutch.load_state_dict(flow.state_dict())
    torch.manual_seed(5)
    draws = 400
    _, _, b = regularized_log_prob(hutch, x[:2].expand(draws, 2, 3), c[:2])
    mean, se = b.mean(0), b.std(0) / draws**0.5
    assert ((mean - frobenius[:2]).abs() < 3 * se).all()
    with pytest.raises(TypeError, match="Flow"):
        regularized_log_prob(flow.transforms[0], x, c)  # type: ignore[arg-type]


# -- Hutchinson ---------------------------------------------------------------------------------


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(noise: str) -> None:
    """Mean of many estimates (each a solve with its own fixed noise) within 3 standard errors
    of the exact trace integral; the state itself is unaffected by the noise."""
    exact = generic(trace="exact")
    hutch = generic(trace="hutchinson", noise=noise)
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    x_exact, ladj_exact = exact.call_and_ladj(z)
    draws = 1000
    torch.manual_seed(3)
    # One solve of draws copies per point: every copy gets its own noise vector.
    x, ladj = hutch.call_and_ladj(z.expand(draws, 4, 3))
    assert (x - x_exact).abs().max() < 1e-7
    mean, se = ladj.mean(0), ladj.std(0) / draws**0.5
    assert (se > 0).all()
    assert ((mean - ladj_exact).abs() < 3 * se).all(), (mean, ladj_exact, se)


def test_hutchinson_noise_is_fixed_per_solve_and_reproducible() -> None:
    t = generic(trace="hutchinson")
    z = torch.randn(5, 3, dtype=F64)
    torch.manual_seed(0)
    x1, l1 = t.call_and_ladj(z)
    torch.manual_seed(0)
    x2, l2 = t.call_and_ladj(z)
    assert torch.equal(l1, l2)
    # Fixed noise within a solve keeps the field deterministic: inverse returns to z.
    assert (t.inverse_and_ladj(x1)[0] - z).abs().max() < 1e-8


def test_auto_trace_is_exact_for_small_dimensions() -> None:
    assert ContinuousFlow(3).exact and ContinuousFlow(8).exact
    assert not ContinuousFlow(9).exact and not ContinuousFlow(3, trace="hutchinson").exact
    assert ContinuousFlow(20, trace="exact").exact


# -- adjoint ------------------------------------------------------------------------------------


def _graph_names(tensor: Tensor, depth: int = 6) -> set[str]:
    names, frontier = set(), [tensor.grad_fn]
    for _ in range(depth):
        frontier = [f for node in frontier if node is not None for f, _ in node.next_functions]
        names |= {type(node).__name__ for node in frontier if node is not None}
    return names


@pytest.mark.parametrize(("context", "trace"), [(0, "exact"), (2, "exact"), (2, "hutchinson")])
def test_adjoint_gradients_match_direct_backpropagation(context: int, trace: str) -> None:
    """Same parameters (and, for Hutchinson, the same seed hence the same noise): gradients
    with respect to the input, every parameter (T included) and the context agree."""
    direct = generic(context=context, trace=trace)
    adjoint = generic(context=context, trace=trace, adjoint=True)
    adjoint.load_state_dict(direct.state_dict())
    x = torch.randn(8, 3, dtype=F64)
    c = torch.randn(8, context, dtype=F64) if context else None
    grads = []
    for t in (direct, adjoint):
        xi = x.clone().requires_grad_(True)
        ci = c.clone().requires_grad_(True) if context else None
        torch.manual_seed(7)
        z, ladj = t.inverse_and_ladj(xi, ci)
        assert ("OdeintAdjointMethodBackward" in _graph_names(z)) == t.adjoint
        loss = (0.5 * z.square().sum(-1) - ladj).mean()
        inputs = [xi, *t.parameters(), *([ci] if context else [])]
        grads.append(torch.autograd.grad(loss, inputs))
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 1e-7 * (1 + b.abs().max())


# -- the preset ---------------------------------------------------------------------------------


def test_preset_stacks_blocks_and_trains() -> None:
    torch.manual_seed(0)
    flow = build("ffjord", 2, transforms=2, hidden=(16, 16), rtol=1e-5, atol=1e-5)
    assert len(flow.transforms) == 2 and all(isinstance(t, ContinuousFlow) for t in flow.transforms)
    data = torch.randn(128, 2) * torch.tensor([2.0, 0.5]) + 1.0
    opt = torch.optim.Adam(flow.parameters(), lr=3e-2)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = -flow().log_prob(data).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1


def test_float32_follows_inputs_with_float32_tolerances() -> None:
    assert default_tolerances(torch.float32) == (1e-5, 1e-5)
    t = generic().float()
    z = torch.randn(16, 3)
    x, ladj = t.call_and_ladj(z)
    assert x.dtype == torch.float32 and ladj.dtype == torch.float32
    assert (t.inverse_and_ladj(x)[0] - z).abs().max() < 1e-3


def test_fixed_time_is_a_buffer() -> None:
    t = ContinuousFlow(2, time=0.5, train_time=False)
    assert "time" in dict(t.named_buffers()) and "time" not in dict(t.named_parameters())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"trace": "stochastic"}, "trace"),
        ({"noise": "uniform"}, "noise"),
        ({"method": "rk45"}, "method"),
        ({"rtol": -1.0}, "rtol"),
        ({"atol": 0.0}, "atol"),
        ({"time": 0.0}, "time"),
        ({"time": float("nan")}, "time"),
        ({"hidden": ()}, "hidden"),
        ({"activation": "relu"}, "activation"),
        ({"options": "fast"}, "options"),
        ({"adjoint": "yes"}, "adjoint"),
        ({"train_time": 1}, "train_time"),
        ({"transforms": 0}, "transforms"),
    ],
)
def test_bad_options_raise(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build("ffjord", 3, **options)


def test_empty_batch() -> None:
    t = generic(context=2)
    x, ladj = t.call_and_ladj(torch.zeros(0, 3, dtype=F64), torch.zeros(0, 2, dtype=F64))
    assert x.shape == (0, 3) and ladj.shape == (0,)
    assert build("ffjord", 3, hidden=(8,))().log_prob(torch.zeros(0, 3)).shape == (0,)


def test_bad_inputs_raise() -> None:
    t = ContinuousFlow(2, context=1)
    with pytest.raises(ValueError, match="context"):
        t.condition(None)
    with pytest.raises(TypeError, match="floating"):
        ContinuousFlow(2).call_and_ladj(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="field"):
        ContinuousFlow(2, field=lambda z, t, c: z)  # type: ignore[arg-type]
