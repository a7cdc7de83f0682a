"""Presets of the neural autoregressive flows, density-fast with numerical inverses: ``umnn``
(Wehenkel & Louppe, NeurIPS 2019, https://arxiv.org/abs/1908.05164), ``naf`` (Huang et al., ICML 2018) and ``bnaf`` (De Cao et
al., UAI 2019)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..core import Flow
from ..transforms import (
    BlockNeuralAutoregressive,
    InverseMap,
    MaskedAutoregressive,
    Reverse,
    SigmoidalMap,
    UMNNMap,
)
from .autoregressive import _map_layers
from .building import passes_options_to, split_options, stack
from .registry import register

__all__ = ["bnaf", "naf", "umnn"]


@register("umnn")
@passes_options_to(MaskedAutoregressive, UMNNMap, fixed=("map",))
def umnn(
    features: int,
    context: int = 0,
    transforms: int = 3,
    order: str = "reverse",
    integrand_hidden: Sequence[int] = (16, 16),
    **options: Any,
) -> Flow:
    r"""UMNN-MAF (Wehenkel & Louppe, "Unconstrained Monotonic Neural Networks", NeurIPS 2019).

    Autoregressive layers whose transformer is the integral of a positive network,
    :math:`z_i = \beta_i + \int_0^{x_i} f(t, e_i(x_{<i}, c))\,dt`, by Gauss–Legendre or
    Clenshaw–Curtis quadrature; a MADE gives the offset :math:`\beta_i` and the embedding
    :math:`e_i`. **Fast direction: density** (one MADE pass and ``nodes`` integrand evaluations
    per value and layer); sampling takes ``features`` passes per layer, each a bisection of
    the integral (about 64 integrals per value in float64).

    ``order`` as in :func:`~pyroflows.flows.maf`; ``integrand_hidden``: the widths of the
    integrand network (the ``hidden`` of :class:`~pyroflows.transforms.UMNNMap`, renamed
    because ``hidden`` is the MADE's). The other options go to each
    :class:`~pyroflows.transforms.MaskedAutoregressive` layer (``hidden``, ``activation``) or
    its :class:`~pyroflows.transforms.UMNNMap` (``embedding``, ``nodes``, ``quadrature``,
    ``log_slope_bound``, ``iterations``, ``newton``).
    """
    layers = _map_layers(
        umnn,
        features,
        context,
        transforms,
        order,
        options,
        wrap=InverseMap,
        hidden=integrand_hidden,
    )
    return Flow(layers)


@register("naf")
@passes_options_to(MaskedAutoregressive, SigmoidalMap, fixed=("map",))
def naf(
    features: int, context: int = 0, transforms: int = 3, order: str = "reverse", **options: Any
) -> Flow:
    r"""Neural autoregressive flow with deep sigmoidal transformers (Huang, Krueger, Lacoste &
    Courville, "Neural Autoregressive Flows", ICML 2018).

    Autoregressive layers :math:`z_i = \tau(x_i; \theta_i(x_{<i}, c))` where :math:`\tau` is
    ``depth`` sigmoidal blocks :math:`\sigma^{-1}(\sum_j w_j \sigma(a_j u + b_j))` of
    ``components`` sigmoids each (MADE conditioners, computed in log space, onto
    :math:`\mathbb{R}`). **Fast direction: density** (one MADE pass per layer); sampling takes
    ``features`` passes per layer, each a bracketed bisection per block.

    ``order`` as in :func:`~pyroflows.flows.maf`. The other options go to each
    :class:`~pyroflows.transforms.MaskedAutoregressive` layer (``hidden``, ``activation``) or
    its :class:`~pyroflows.transforms.SigmoidalMap` (``components``, ``depth``,
    ``min_slope``, ``iterations``).
    """
    return Flow(_map_layers(naf, features, context, transforms, order, options, wrap=InverseMap))


@register("bnaf")
@passes_options_to(BlockNeuralAutoregressive)
def bnaf(features: int, context: int = 0, transforms: int = 2, **options: Any) -> Flow:
    r"""Block neural autoregressive flow (De Cao, Titov & Aziz, "Block Neural Autoregressive
    Flow", UAI 2019), with outputs covering the whole real line.

    ``transforms`` BNAF layers (block lower-triangular masked networks with tanh, positive
    diagonal blocks, plus a positive linear skip :math:`e^{s} \odot x` so the outputs cover
    the real line), with reversals between them. **Fast direction: density** (one network pass
    per layer, log-det from the diagonal blocks); sampling inverts each layer with
    ``features`` sweeps of a batched bisection.

    The other options go to each :class:`~pyroflows.transforms.BlockNeuralAutoregressive`
    layer (``hidden``: units per dimension in each hidden layer; ``context_hidden``,
    ``iterations``, ``param_scale``: with its default 10, Adam at ``lr = 1e-3`` takes the
    paper's ``1e-2`` steps).

    On 2-D moons (benchmarks/density_toy.py: 60 epochs at ``lr = 1e-3``) the defaults reach
    a test log-likelihood of about -2.45 nats.

    Example:
        >>> import torch, pyroflows
        >>> flow = pyroflows.flows.build("bnaf", 2, transforms=1, hidden=(8,))
        >>> flow().log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
    """
    (layer,) = split_options(bnaf, options)
    return Flow(
        stack(
            transforms,
            lambda i: BlockNeuralAutoregressive(features, context, **layer),
            between=lambda i: Reverse(features),
        )
    )
