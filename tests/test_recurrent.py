"""Recurrent conditioner and the recurrent autoregressive flow layer (``maf-rnn``)."""

from __future__ import annotations

import pytest
import torch
from helpers import jacobian_logdet, perturb

from pyroflows.flows import build
from pyroflows.nn import RecurrentConditioner, RecurrentLayer
from pyroflows.transforms import AffineMap, RecurrentAutoregressive, SplineMap

DT = torch.float64


def layer(
    cell: str = "lstm",
    map: str = "affine",
    features: int = 5,
    context: int = 0,
    step: int = 1,
    reverse: bool = False,
    seed: int = 0,
) -> RecurrentAutoregressive:
    torch.manual_seed(seed)
    m = AffineMap() if map == "affine" else SplineMap(4, 3.0)
    t = RecurrentAutoregressive(
        features, m, context, hidden=(8, 6), cell=cell, step=step, reverse=reverse
    )
    return perturb(t, 0.3, seed).to(DT)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_cells_match_torch_modules(cell):
    """Known answer: the explicit cell loop and the fused kernel equal nn.LSTM/GRU/RNN."""
    torch.manual_seed(0)
    ours = RecurrentLayer(3, 5, cell).to(DT)
    ref = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell](
        3, 5, batch_first=True
    ).to(DT)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(ref, f"{name}_l0").copy_(getattr(ours, name))
    u = torch.randn(4, 9, 3, dtype=DT)
    expected = ref(u)[0]
    assert (ours(u, fused=False) - expected).abs().max() < 1e-14
    assert (ours(u, fused=True) - expected).abs().max() < 1e-14
    state = ours.initial_state(torch.Size([4]), u)  # stepping gives the same states
    for t in range(9):
        state = ours.step(u[:, t], state)
        assert (state[0] - expected[:, t]).abs().max() < 1e-14


@pytest.mark.parametrize("step", [1, 2])
def test_conditioner_sees_only_the_past(step):
    torch.manual_seed(0)
    net = perturb(RecurrentConditioner(step, 3, (8,), "lstm", context=2, zero_output=False)).to(DT)
    x, c = torch.randn(6, step, dtype=DT), torch.randn(2, dtype=DT)
    J = torch.autograd.functional.jacobian(lambda v: net(v, c), x)  # (6, 3, 6, step)
    depends = J.abs().amax((1, 3)) > 0
    assert torch.equal(depends, torch.ones(6, 6).tril(-1).bool())
    # Teacher forcing equals stepping with the true previous values.
    params = net(x, c)
    state, prev = net.initial_state(torch.Size(), x), torch.zeros(step, dtype=DT)
    for i in range(6):
        p, state = net.step(prev, state, c)
        assert (p - params[i]).abs().max() < 1e-14
        prev = x[i]


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("map", ["affine", "spline"])
@pytest.mark.parametrize("length", [5, 50])
def test_round_trip_and_logdet(cell, map, length):
    t = layer(cell, map, context=2, reverse=length == 50)
    c = torch.randn(3, 2, dtype=DT)
    z = torch.randn(3, length, dtype=DT)
    x, ladj = t.call_and_ladj(z, c)
    z_back, inv_ladj = t.inverse_and_ladj(x, c)
    assert (z_back - z).abs().max() < 1e-10 and (ladj + inv_ladj).abs().max() < 1e-10
    if length == 5:
        expected = jacobian_logdet(lambda v: t.call_and_ladj(v[None], c[:1])[0][0], z[:1])
        assert (ladj[:1] - expected).abs().max() < 1e-10


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("step", [1, 2])
def test_dependence_pattern(reverse, step):
    """z_i = tau^{-1}(x_i; theta(x_{<i})): the Jacobian is (block) triangular in the order."""
    t = layer(step=step, features=6, reverse=reverse)
    x = torch.randn(6, dtype=DT)
    J = torch.autograd.functional.jacobian(lambda v: t.inverse_and_ladj(v)[0], x)
    position = torch.arange(6) // step
    earlier = position[:, None] > position[None, :]
    if reverse:
        earlier = earlier.T
    same = position[:, None] == position[None, :]
    diagonal = torch.eye(6, dtype=torch.bool)
    assert (J[~(earlier | diagonal)] == 0).all()  # nothing from later positions or siblings
    assert (J[earlier] != 0).all() and (J.diagonal() != 0).all()
    assert (J[same & ~diagonal] == 0).all()


def test_same_parameters_for_lengths_5_and_50():
    short, long = (
        build("maf-rnn", 5, transforms=2, hidden=(8,)),
        build("maf-rnn", 50, transforms=2, hidden=(8,)),
    )
    count = lambda f: sum(p.numel() for p in f.parameters())  # noqa: E731
    assert count(short) == count(long)
    perturb(short)
    long.transforms.load_state_dict(short.transforms.state_dict())
    x = torch.randn(4, 50)
    z, ladj = short.bijection.inverse_and_ladj(x)  # a layer built for 5 takes length 50
    log_p = long().log_prob(x)
    assert torch.allclose(log_p, long.base().log_prob(z) + ladj, atol=1e-5)
    xs, lp = long().rsample_and_log_prob((3,))
    assert xs.shape == (3, 50) and torch.allclose(lp, long().log_prob(xs), atol=1e-4)
    assert short().log_prob(x[:, :5]).shape == (4,)


def test_right_padding_leaves_the_prefix_unchanged():
    t = layer(context=2)
    x, c = torch.randn(4, 9, dtype=DT), torch.randn(4, 2, dtype=DT)
    z_full, ladj_full = t.inverse_elementwise(x, c)
    z_short, ladj_short = t.inverse_elementwise(x[:, :4], c)
    assert torch.equal(z_full[:, :4], z_short) and torch.equal(ladj_full[:, :4], ladj_short)
    lengths = torch.tensor([4, 9, 4, 9])
    masked = (ladj_full * (torch.arange(9) < lengths[:, None])).sum(-1)
    assert torch.allclose(masked[0], t.inverse_and_ladj(x[:1, :4], c[:1])[1][0])
    # A stack of left-to-right layers keeps the property; alternating directions does not.
    for alternate in (False, True):
        flow = perturb(build("maf-rnn", 9, transforms=2, hidden=(8,), alternate=alternate)).to(DT)
        z_full = flow.bijection.inverse_and_ladj(x)[0]
        z_short = flow.bijection.inverse_and_ladj(x[:, :4])[0]
        assert torch.allclose(z_full[:, :4], z_short, atol=1e-14) is not alternate


def test_errors():
    with pytest.raises(ValueError, match="cell"):
        RecurrentAutoregressive(4, AffineMap(), cell="transformer")
    with pytest.raises(ValueError, match="step"):
        RecurrentAutoregressive(5, AffineMap(), step=2)
    t = RecurrentAutoregressive(4, AffineMap(), step=2)
    with pytest.raises(ValueError, match="L \\* 2"):
        t.inverse_and_ladj(torch.randn(3, 5))
    with pytest.raises(ValueError, match="map"):
        build("maf-rnn", 3, map="umnn")
