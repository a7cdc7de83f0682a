"""MADE: the autoregressive property, checked on the Jacobian's sparsity pattern."""

from __future__ import annotations

import pytest
import torch

from pyroflows.nn import MADE, MLP, ResidualMLP


def dependency_pattern(
    made: MADE, x: torch.Tensor, context: torch.Tensor | None = None
) -> torch.Tensor:
    """(features, features) boolean: output i's parameters depend on input j."""
    J = torch.autograd.functional.jacobian(lambda v: made(v, context), x)  # (d, p, d)
    return J.abs().sum(1) > 0


@pytest.mark.parametrize("order", [None, [3, 2, 1, 0], [2, 0, 3, 1]])
@pytest.mark.parametrize("context", [0, 2])
@pytest.mark.parametrize("residual", [False, True])
def test_made_respects_the_ordering_exactly(order, context, residual):
    torch.manual_seed(0)
    made = MADE(
        4,
        3,
        hidden=(32, 32),
        context=context,
        order=order,
        residual=residual,
        activation="tanh",
        zero_output=False,
    )
    c = torch.randn(context) if context else None
    x = torch.randn(4)
    position = torch.arange(4) if order is None else torch.tensor(order)
    allowed = position[None, :] < position[:, None]  # i may depend on j iff j comes before i
    pattern = dependency_pattern(made, x, c)
    assert not (pattern & ~allowed).any(), "an output depends on a later input"
    # With smooth activations and enough units every allowed dependency is present.
    assert torch.equal(pattern, allowed)
    if context:
        Jc = torch.autograd.functional.jacobian(lambda v: made(x, v), c)
        assert (Jc.abs().sum((1, 2)) > 0).all(), "the context must reach every feature"


def test_made_one_feature_and_errors():
    made = MADE(1, 2, hidden=(4,), zero_output=False)
    assert made(torch.randn(5, 1)).shape == (5, 1, 2)
    with pytest.raises(ValueError, match="permutation"):
        MADE(3, 2, order=[0, 1, 1])
    with pytest.raises(ValueError, match="integers"):
        MADE(3, 2, order=[0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="equal hidden widths"):
        MADE(3, 2, hidden=(8, 16), residual=True)
    with pytest.raises(ValueError, match="hidden"):
        MADE(3, 2, hidden=())


def test_mlps_broadcast_context_and_start_at_zero():
    for net in (MLP(3, 5, (8,), context=2), ResidualMLP(3, 5, (8, 8), context=2)):
        out = net(torch.randn(7, 1, 3), torch.randn(4, 2))
        assert out.shape == (7, 4, 5)
        assert torch.equal(out, torch.zeros_like(out))  # zero output layer: identity flows
    with pytest.raises(ValueError, match="equal hidden widths"):
        ResidualMLP(3, 5, (8, 16))


def test_conditioner_option_checks_name_the_argument():
    from pyroflows.nn import MaskedConv2d, RecurrentConditioner, RecurrentLayer, make_activation

    with pytest.raises(ValueError, match="hidden must be a non-empty tuple"):
        MADE(3, 2, hidden=(8, 0))
    with pytest.raises(TypeError, match="hidden must be a sequence"):
        MADE(3, 2, hidden=8)
    with pytest.raises(ValueError, match="ResidualMLP needs equal hidden widths"):
        ResidualMLP(3, 5, (8, 16))
    with pytest.raises(ValueError, match="activation must be one of 'relu'"):
        make_activation("swish2")
    with pytest.raises(ValueError, match="cell must be one of 'lstm', 'gru', 'rnn'"):
        RecurrentLayer(2, 4, cell="transformer")
    with pytest.raises(ValueError, match="hidden_size must be an integer >= 1"):
        RecurrentLayer(2, True)
    with pytest.raises(ValueError, match="context must be an integer >= 0"):
        RecurrentConditioner(1, 2, context=-1)
    with pytest.raises(ValueError, match="mask_type must be one of 'A', 'B'"):
        MaskedConv2d(3, 6, 3, mask_type="C", groups=3)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        MaskedConv2d(3, 6, 4, groups=3)


def test_mlp_layouts_are_unchanged_by_the_shared_base():
    # ResidualMLP reuses MLP's constructor; saved state_dicts of both keep their keys.
    torch.manual_seed(0)
    assert set(MLP(3, 2, (4, 4)).state_dict()) == {
        "hidden.0.weight",
        "hidden.0.bias",
        "hidden.2.weight",
        "hidden.2.bias",
        "output.weight",
        "output.bias",
    }
    residual = ResidualMLP(3, 2, (4,), context=1, zero_output=False)
    assert set(residual.state_dict()) == {
        "input.weight",
        "input.bias",
        "blocks.0.1.weight",
        "blocks.0.1.bias",
        "blocks.0.3.weight",
        "blocks.0.3.bias",
        "output.weight",
        "output.bias",
    }
    x, c = torch.randn(5, 3), torch.randn(5, 1)
    h = residual.input(torch.cat([x, c], -1))
    expected = residual.output(residual.final(h + residual.blocks[0](h)))
    assert torch.equal(residual(x, c), expected)
