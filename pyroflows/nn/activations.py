"""Activations by name, for the ``activation`` option of conditioners and presets."""

from __future__ import annotations

from torch import nn

from ..checks import check_choice

__all__ = ["ACTIVATIONS", "make_activation"]

#: Activation modules by name, for the ``activation`` option of conditioners and presets.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module from its name (one of :data:`ACTIVATIONS`)."""
    return ACTIVATIONS[check_choice("activation", name, ACTIVATIONS)]()
