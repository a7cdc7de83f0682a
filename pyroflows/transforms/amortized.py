"""The base of the layers whose every parameter sits in one vector, free or amortised over a
context: planar, radial, Sylvester and marginal Gaussianization."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ..checks import check_hidden
from ..nn.amortized import AmortizedParameters
from .base import Bijection

__all__ = ["AmortizedBijection"]


class AmortizedBijection(Bijection):
    r"""A bijection whose parameters are one vector :math:`\theta(c) = \theta_0 + g(c)`
    (:class:`~pyroflows.nn.AmortizedParameters`), read by subclasses as ``self.params(context)``.

    Args:
        features: event size :math:`d`.
        context: context size; with one, :math:`g` is an MLP of the context.
        init: the initial free parameters :math:`\theta_0`, shape ``(p,)``.
        hidden: widths of the context network (checked even without a context, so that a
            bad value fails at once rather than when a context is added).
        activation: its non-linearity.
    """

    def __init__(
        self, features: int, context: int, init: Tensor, hidden: Sequence[int], activation: str
    ) -> None:
        super().__init__(features, context)
        self.params = AmortizedParameters(init, context, check_hidden(hidden), activation)
