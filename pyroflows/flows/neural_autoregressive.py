"""Presets of the neural autoregressive flows, density-fast with numerical inverses: ``umnn``
(Wehenkel & Louppe, NeurIPS 2019), ``naf`` (Huang et al., ICML 2018) and ``bnaf`` (De Cao et
al., UAI 2019)."""

from __future__ import annotations

from collections.abc import Sequence

from ..core import Flow
from ..transforms import (
    Bijection,
    BlockNeuralAutoregressive,
    InverseMap,
    Reverse,
    SigmoidalMap,
    UMNNMap,
)
from .autoregressive import _autoregressive
from .registry import check_transforms, register

__all__ = ["bnaf", "naf", "umnn"]


def _autoregressive_layers(features: int, context: int, transforms: int, make_map, hidden,  # noqa: ANN001
                           order: str, activation: str) -> list[Bijection]:
    # The papers' explicit map is data-to-noise: InverseMap makes it the one-pass direction.
    return _autoregressive(features, context, transforms, lambda: InverseMap(make_map()), hidden,
                           order, activation, residual=False)


@register("umnn")
def umnn(
    features: int,
    context: int = 0,
    transforms: int = 3,
    hidden: Sequence[int] = (64, 64),
    embedding: int = 8,
    integrand_hidden: Sequence[int] = (16, 16),
    nodes: int = 20,
    quadrature: str = "gauss-legendre",
    log_slope_bound: float = 5.0,
    order: str = "reverse",
    activation: str = "relu",
) -> Flow:
    r"""UMNN-MAF (Wehenkel & Louppe, "Unconstrained Monotonic Neural Networks", NeurIPS 2019).

    Autoregressive layers whose transformer is the integral of a positive network,
    :math:`z_i = \beta_i + \int_0^{x_i} f(t, e_i(x_{<i}, c))\,dt`, by Gauss–Legendre or
    Clenshaw–Curtis quadrature; a MADE gives the offset :math:`\beta_i` and the embedding
    :math:`e_i`. **Fast direction: density** (one MADE pass and ``nodes`` integrand evaluations
    per value and layer); sampling takes ``features`` passes per layer, each a bisection of
    the integral (about 64 integrals per value in float64).

    Options: ``transforms``, ``hidden`` (MADE widths), ``embedding``, ``integrand_hidden``,
    ``nodes``, ``quadrature`` (``"gauss-legendre"``/``"clenshaw-curtis"``),
    ``log_slope_bound`` (:math:`|\log f| \le B`), ``order``, ``activation`` (MADE).
    """
    return Flow(_autoregressive_layers(
        features, context, transforms,
        lambda: UMNNMap(embedding, tuple(integrand_hidden), nodes, quadrature, log_slope_bound),
        hidden, order, activation))


@register("naf")
def naf(
    features: int,
    context: int = 0,
    transforms: int = 3,
    hidden: Sequence[int] = (64, 64),
    components: int = 8,
    depth: int = 2,
    order: str = "reverse",
    activation: str = "relu",
) -> Flow:
    r"""Neural autoregressive flow with deep sigmoidal transformers (Huang, Krueger, Lacoste &
    Courville, "Neural Autoregressive Flows", ICML 2018).

    Autoregressive layers :math:`z_i = \tau(x_i; \theta_i(x_{<i}, c))` where :math:`\tau` is
    ``depth`` sigmoidal blocks :math:`\sigma^{-1}(\sum_j w_j \sigma(a_j u + b_j))` of
    ``components`` sigmoids each (MADE conditioners, computed in log space, onto
    :math:`\mathbb{R}`). **Fast direction: density** (one MADE pass per layer); sampling takes
    ``features`` passes per layer, each a bracketed bisection per block.

    Options: ``transforms``, ``hidden`` (MADE widths), ``components``, ``depth``, ``order``,
    ``activation``.
    """
    return Flow(_autoregressive_layers(features, context, transforms,
                                       lambda: SigmoidalMap(components, depth),
                                       hidden, order, activation))


@register("bnaf")
def bnaf(
    features: int,
    context: int = 0,
    transforms: int = 2,
    hidden: Sequence[int] = (16, 16),
    context_hidden: Sequence[int] = (64, 64),
    param_scale: float = 10.0,
) -> Flow:
    r"""Block neural autoregressive flow (De Cao, Titov & Aziz, "Block Neural Autoregressive
    Flow", UAI 2019), with outputs covering the whole real line.

    ``transforms`` BNAF layers (block lower-triangular masked networks with tanh, positive
    diagonal blocks, plus a positive linear skip :math:`e^{s} \odot x` so the outputs cover
    the real line), with reversals between them. **Fast direction: density** (one network pass
    per layer, log-det from the diagonal blocks); sampling inverts each layer with
    ``features`` sweeps of a batched bisection.

    Options: ``transforms``, ``hidden`` (units per dimension in each hidden layer; layer width
    ``features * h``), ``context_hidden`` (the context MLP that shifts the first layer),
    ``param_scale`` (the network's parameters are ``param_scale`` times the stored ones, so
    Adam at ``lr = 1e-3`` takes the paper's ``1e-2`` steps; use ``1`` with the paper's learning
    rates; see :class:`~pyroflows.transforms.BlockNeuralAutoregressive`).

    On 2-D moons (benchmarks/density_toy.py: 60 epochs at ``lr = 1e-3``) the defaults reach
    a test log-likelihood of about -2.45 nats.

    Example:
        >>> import torch, pyroflows
        >>> flow = pyroflows.flows.build("bnaf", 2, transforms=1, hidden=(8,))
        >>> flow().log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
    """
    check_transforms(transforms)
    layers: list[Bijection] = []
    for i in range(transforms):
        if i > 0:
            layers.append(Reverse(features))
        layers.append(BlockNeuralAutoregressive(features, context, tuple(hidden),
                                                tuple(context_hidden), param_scale=param_scale))
    return Flow(layers)
