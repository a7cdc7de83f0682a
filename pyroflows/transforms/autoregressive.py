"""Masked autoregressive layers (MAF, IAF, autoregressive neural splines)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ..nn import MADE
from ..nn.options import passes_keywords_to
from .base import Bijection
from .elementwise import ElementwiseMap

__all__ = ["MaskedAutoregressive"]


@passes_keywords_to(MADE, "hidden", "order", "activation", "residual")
class MaskedAutoregressive(Bijection):
    r"""Autoregressive layer with a MADE conditioner (Papamakarios et al., "Masked Autoregressive
    Flow for Density Estimation", NeurIPS 2017):

    .. math::
        x_i = \tau(z_i;\ \theta_i(x_{<i}, c)), \qquad
        \log|\det J| = \sum_i \log \tau'(z_i),

    with :math:`<` taken in the layer's ``order``. The inverse
    :math:`z = \tau^{-1}(x; \theta(x, c))` is one MADE pass (fast density); the forward
    direction (sampling) takes ``features`` passes, one per position of the ordering.
    Wrapping it in :class:`~pyroflows.transforms.Inverse` gives the sampling-fast IAF
    orientation (Kingma et al. 2016, https://arxiv.org/abs/1606.04934).

    Args:
        features: event size.
        map: elementwise map :math:`\tau` (affine for MAF, spline for autoregressive NSF).
        context: context size.
        made: the options of the :class:`~pyroflows.nn.MADE` conditioner (``hidden``,
            ``order``, ``activation``, ``residual``).

    Example:
        >>> from pyroflows.transforms import AffineMap
        >>> t = MaskedAutoregressive(3, AffineMap(), order=[2, 1, 0])
        >>> z = torch.randn(4, 3)
        >>> x, ladj = t.call_and_ladj(z)
        >>> torch.allclose(t.inverse_and_ladj(x)[0], z, atol=1e-5)
        True
    """

    fast_direction = "inverse"

    def __init__(self, features: int, map: ElementwiseMap, context: int = 0, **made: Any) -> None:
        super().__init__(features, context)
        self.map = map
        self.made = MADE(features, map.num_params, context=context, **made)

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, ladj = self.map.inverse(x, self.made(x, context))
        return z, ladj.sum(-1)

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # Pass k fixes the k-th feature of the ordering; after `features` passes every
        # parameter was computed from final values, so the last pass's log-det is exact.
        x = z
        for _ in range(self.features):
            x, ladj = self.map(z, self.made(x, context))
        return x, ladj.sum(-1)
