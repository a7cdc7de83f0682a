"""Helpers shared by every conditioner and model: activations by name, context concatenation,
and the device and dtype a module computes in."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "check_hidden", "join_context", "make_activation", "module_device_dtype"]

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


def module_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of a module's first floating-point parameter or buffer (CPU and torch's
    default dtype for a module without any), where data given to it should go."""
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.get_default_dtype()


def check_hidden(hidden: Sequence[int], what: str = "widths") -> tuple[int, ...]:
    """Validate a non-empty sequence of positive hidden sizes (``what`` names them in the
    message: widths, channel counts); ValueError otherwise."""
    hidden = tuple(hidden)
    if not hidden or any(not isinstance(h, int) or isinstance(h, bool) or h < 1 for h in hidden):
        raise ValueError(f"hidden must be a non-empty tuple of positive {what}, got {hidden!r}")
    return hidden
