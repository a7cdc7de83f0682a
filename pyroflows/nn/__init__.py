"""Conditioner networks: MLP, residual MLP and MADE."""

from .inputs import ACTIVATIONS, join_context, make_activation
from .made import MADE, MaskedLinear, check_order
from .mlp import MLP, ResidualMLP

__all__ = [
    "ACTIVATIONS",
    "MADE",
    "MLP",
    "MaskedLinear",
    "ResidualMLP",
    "check_order",
    "join_context",
    "make_activation",
]
