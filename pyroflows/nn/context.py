"""Joining a conditioner's input with its context vector."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["join_context"]


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
