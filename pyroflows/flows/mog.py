"""``maf-mog``: a masked autoregressive flow on a MADE-MoG base."""

from __future__ import annotations

from typing import Any

from ..core import Flow
from ..density import DensityBase, MADEDensity, MixtureOfGaussians
from ..transforms import AffineMap, MaskedAutoregressive
from .autoregressive import _map_layers
from .building import passes_options_to, split_options
from .registry import register

__all__ = ["maf_mog"]


@register("maf-mog")
@passes_options_to(MaskedAutoregressive, AffineMap, MixtureOfGaussians, fixed=("map",))
def maf_mog(
    features: int, context: int = 0, transforms: int = 5, order: str = "reverse", **options: Any
) -> Flow:
    r"""MAF MoG (Papamakarios, Pavlakou & Murray, NeurIPS 2017, https://arxiv.org/abs/1705.07057): the affine layers of
    :func:`~pyroflows.flows.maf` on a MADE-MoG base density instead of
    :math:`\mathcal N(0, I)`,

    .. math:: \log p(x \mid c) = \log p_{\text{MADE MoG}}(T^{-1}(x; c))
        + \log\left|\det \partial T^{-1} / \partial x\right|,

    where the base's conditionals :math:`p(z_i \mid z_{<i}) = \sum_k \alpha_{ik}
    \mathcal N(\mu_{ik}, \sigma_{ik}^2)` (natural order, ``components`` each, not conditioned
    on :math:`c`) absorb multimodality the affine layers cannot.
    **Fast direction: density**; ``rsample`` takes ``features`` passes per layer plus
    ``features`` base passes and is implicitly reparametrised through the mixture.

    Options: as :func:`~pyroflows.flows.maf` (the layers'
    :class:`~pyroflows.transforms.MaskedAutoregressive` ``hidden``, ``activation`` and
    ``residual`` also shape the base MADE), plus those of the base's
    :class:`~pyroflows.density.MixtureOfGaussians` (``components``, :math:`K`, 10 in the
    paper; ``spread``). ``log_scale_bound`` goes to the layers' ``AffineMap``.
    """
    layers = _map_layers(maf_mog, features, context, transforms, order, options)
    made, _, mixture = split_options(maf_mog, options)
    shared = {k: v for k, v in made.items() if k in ("hidden", "activation", "residual")}
    base = MADEDensity(features, MixtureOfGaussians(**mixture), 0, order="natural", **shared)
    return Flow(layers, DensityBase(base))
