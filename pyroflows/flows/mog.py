"""``maf-mog``: a masked autoregressive flow on a MADE-MoG base."""

from __future__ import annotations

from collections.abc import Sequence

from ..core import Flow
from ..density import DensityBase, MADEDensity, MixtureOfGaussians
from ..transforms import AffineMap
from .autoregressive import _autoregressive
from .registry import register

__all__ = ["maf_mog"]


@register("maf-mog")
def maf_mog(
    features: int,
    context: int = 0,
    transforms: int = 5,
    hidden: Sequence[int] = (64, 64),
    components: int = 10,
    order: str = "reverse",
    activation: str = "relu",
    residual: bool = False,
    log_scale_bound: float = 3.0,
) -> Flow:
    r"""MAF MoG (Papamakarios, Pavlakou & Murray, NeurIPS 2017): the affine layers of
    :func:`~pyroflows.flows.maf` on a MADE-MoG base density instead of
    :math:`\mathcal N(0, I)`,

    .. math:: \log p(x \mid c) = \log p_{\text{MADE MoG}}(T^{-1}(x; c))
        + \log\left|\det \partial T^{-1} / \partial x\right|,

    where the base's conditionals :math:`p(z_i \mid z_{<i}) = \sum_k \alpha_{ik}
    \mathcal N(\mu_{ik}, \sigma_{ik}^2)` (natural order, ``components`` each, not conditioned
    on :math:`c`) absorb multimodality the affine layers cannot.
    **Fast direction: density**; ``rsample`` takes ``features`` passes per layer plus
    ``features`` base passes and is implicitly reparametrised through the mixture.

    Options: as :func:`~pyroflows.flows.maf` (``transforms``, ``hidden`` — also the base
    MADE's widths —, ``order``, ``activation``, ``residual``, ``log_scale_bound``), plus
    ``components`` (:math:`K`, 10 in the paper).
    """
    layers = _autoregressive(features, context, transforms, lambda: AffineMap(log_scale_bound),
                             hidden, order, activation, residual)
    base = MADEDensity(features, MixtureOfGaussians(components), 0, hidden, "natural",
                       activation=activation, residual=residual)
    return Flow(layers, DensityBase(base))
