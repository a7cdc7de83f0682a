"""Helpers shared by every conditioner: activations by name and context concatenation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "join_context", "make_activation"]

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
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
        ) from None


def join_context(x: Tensor, context: Tensor | None) -> Tensor:
    """Concatenate ``x`` (..., n) and ``context`` (..., c) after broadcasting their batch dims.

    A context of shape ``(B, c)`` with ``x`` of shape ``(S, B, n)`` gives ``(S, B, n + c)``,
    which is what sampling ``S`` points per context needs.
    """
    if context is None:
        return x
    batch = torch.broadcast_shapes(x.shape[:-1], context.shape[:-1])
    return torch.cat(
        [x.expand(*batch, x.shape[-1]), context.expand(*batch, context.shape[-1])], dim=-1
    )
