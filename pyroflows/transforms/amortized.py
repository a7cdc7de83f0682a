"""The base of the layers whose every parameter sits in one vector, free or amortised over a
context: planar, radial, Sylvester and marginal Gaussianization."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..nn.amortized import AmortizedParameters
from ..nn.options import passes_keywords_to
from .base import Bijection

__all__ = ["NETWORK_KEYWORDS", "AmortizedBijection", "network_options"]

#: The context network's keywords (options of :class:`~pyroflows.nn.AmortizedParameters`).
NETWORK_KEYWORDS = ("hidden", "activation")

#: Class decorator of the subclasses, whose ``__init__`` passes ``**network`` on: their
#: signature shows the context network's ``hidden`` and ``activation`` (documented in
#: :class:`~pyroflows.nn.AmortizedParameters`), and a misspelt keyword fails at once.
network_options = passes_keywords_to(AmortizedParameters, *NETWORK_KEYWORDS)


class AmortizedBijection(Bijection):
    r"""A bijection whose parameters are one vector :math:`\theta(c) = \theta_0 + g(c)`
    (:class:`~pyroflows.nn.AmortizedParameters`), read by subclasses as ``self.params(context)``.

    Subclasses take the context network's options (``hidden``, ``activation``) as
    ``**network``, pass them on here and are decorated with :data:`network_options`.

    Args:
        features: event size :math:`d`.
        context: context size; with one, :math:`g` is an MLP of the context.
        init: the initial free parameters :math:`\theta_0`, shape ``(p,)``.
        network: the options of :class:`~pyroflows.nn.AmortizedParameters` (``hidden``,
            ``activation``).
    """

    def __init__(self, features: int, context: int, init: Tensor, **network: Any) -> None:
        super().__init__(features, context)
        self.params = AmortizedParameters(init, context, **network)
