"""Amortised parameters: a free parameter vector plus a context network's offsets, the
conditioner of the planar, radial, Sylvester and Gaussianization layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..checks import check_hidden
from .mlp import MLP

__all__ = ["AmortizedParameters"]


class AmortizedParameters(nn.Module):
    r"""A parameter vector :math:`\theta(c) = \theta_0 + g(c)`: free parameters plus, for a
    conditional layer, a context network's offsets (amortisation, as in the planar, radial and
    Sylvester papers, where an encoder outputs the flow's parameters).

    Keeping the free :math:`\theta_0` in the conditional form avoids the saddle point at
    :math:`g(c) = 0` (the zero-initialised network) and lets the layer start from a generic
    :math:`\theta_0`.

    Args:
        init: initial :math:`\theta_0`, shape ``(p,)``.
        context: context size (0: no network).
        hidden: widths of the context network :math:`g` (an :class:`~pyroflows.nn.MLP`,
            zero-initialised output; checked even without a context, so that a bad value fails
            at once rather than when a context is added).
        activation: its non-linearity (see :data:`~pyroflows.nn.ACTIVATIONS`).

    Shapes: ``context`` (..., c) -> (..., p); without context -> (p,).
    """

    def __init__(
        self,
        init: Tensor,
        context: int = 0,
        hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        hidden = check_hidden(hidden)
        self.free = nn.Parameter(init.detach().clone().to(torch.get_default_dtype()))
        self.net = MLP(context, init.numel(), hidden, activation=activation) if context else None

    def forward(self, context: Tensor | None = None) -> Tensor:
        if self.net is None:
            return self.free
        return self.free + self.net(context)
