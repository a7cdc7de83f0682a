"""Building blocks that every conditioner shares: the zero-initialised output layer that makes
a flow start as the identity map, and the two-layer body of a residual block."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .activations import make_activation

__all__ = ["residual_body", "residual_width", "zero_init"]


def zero_init(layer: nn.Module, zero: bool = True) -> nn.Module:
    """Set ``layer``'s weight and bias to zero (when ``zero``) and return it: an output layer
    that starts at zero makes a flow built on the network start as the identity map."""
    if zero:
        nn.init.zeros_(layer.weight)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
    return layer


def residual_width(hidden: Sequence[int], what: str) -> int:
    """The common width of a residual network's ``hidden`` layers; ValueError naming ``what``
    (the network) when they differ, since a skip connection adds equal-sized vectors."""
    if len(set(hidden)) != 1:
        raise ValueError(f"{what} needs equal hidden widths, got {tuple(hidden)}")
    return hidden[0]


def residual_body(activation: str, first: nn.Module, second: nn.Module) -> nn.Sequential:
    """``act -> first -> act -> second``: the branch :math:`f` of a residual block
    :math:`h + f(h)` (He et al. 2016, pre-activation form)."""
    return nn.Sequential(make_activation(activation), first, make_activation(activation), second)
