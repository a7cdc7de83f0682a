"""The ``resflow`` preset: invertible residual networks and Residual Flows."""

from __future__ import annotations

from typing import Any

from ..checks import check_choice, check_flag
from ..core import Flow
from ..transforms import Bijection, ElementwiseAffine, Inverse
from ..transforms.residual import ResidualBlock
from .building import passes_options_to, split_options, stack
from .registry import register

__all__ = ["resflow"]

FAST = ("density", "sampling")


@register("resflow")
@passes_options_to(ResidualBlock)
def resflow(
    features: int,
    context: int = 0,
    transforms: int = 4,
    actnorm: bool = True,
    fast: str = "density",
    **options: Any,
) -> Flow:
    r"""Residual flow (Behrmann, Grathwohl, Chen, Duvenaud & Jacobsen, "Invertible Residual
    Networks", ICML 2019; Chen, Behrmann, Duvenaud & Jacobsen, "Residual Flows for Invertible
    Generative Modeling", NeurIPS 2019).

    ``transforms`` residual blocks :math:`F(u) = u + g(u; c)`, :math:`g` a
    :class:`~pyroflows.nn.lipschitz.LipschitzMLP` (spectrally normalised layers, LipSwish, every
    layer :math:`\|\tilde W\|_2 \le` ``coefficient``, so :math:`\mathrm{Lip}(g) < 1` for every
    parameter value), with a learnable per-feature affine map before and after each block
    (``actnorm``; Residual Flows use ActNorm there; it starts at the identity rather than
    from the first batch, so the density never depends on which data were seen first).

    .. math::
        \log p(x) = \log p_Z(F(x)) + \log\det(I + J_g(x)), \quad
        \log\det(I + J_g) = \sum_{k\ge1} \tfrac{(-1)^{k+1}}{k}\operatorname{tr} J_g^k.

    **Fast direction: density** with ``fast="density"`` (the papers' orientation, data to
    noise in one pass per block), or sampling with ``fast="sampling"``. The other direction
    solves :math:`u + g(u) = y` per block: ``iterations`` fixed-point steps and ``newton``
    safeguarded Newton steps (a :math:`d\times d` solve each), with implicit gradients.

    Cost of the log-determinant per block and point (:math:`h` = width, :math:`n` =
    ``n_terms``): ``"exact"`` :math:`O(d h^2 + d^3)`; ``"series"`` :math:`O(n h^2)` (biased by
    truncation); ``"roulette"`` :math:`O((n + \bar m) h^2)` on average, unbiased
    (:math:`\bar m` = ``extra_terms``); ``"auto"``: exact up to 16 features, else roulette.
    Stochastic estimators give a different value at each call (use ``"exact"`` to evaluate),
    and ``"roulette"`` does not compile with ``fullgraph=True`` (its loop length is random).

    The preset's own options are ``transforms``, ``actnorm`` and ``fast``; the others go to
    each :class:`~pyroflows.transforms.residual.ResidualBlock` (``hidden``, ``coefficient``,
    ``logdet``, ``n_terms``, ``roulette``, ``extra_terms``, ``neumann_gradient``,
    ``iterations``, ``newton``). Conditional form: the context shifts :math:`g`'s hidden
    pre-activations through an unconstrained linear map (the bound in :math:`u` is kept).

    Example:
        >>> import pyroflows
        >>> flow = pyroflows.flows.build("resflow", features=2, transforms=2, hidden=(16, 16))
        >>> flow().log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
    """
    (options,) = split_options(resflow, options)
    density = check_choice("fast", fast, FAST) == "density"

    def layer(i: int) -> Bijection:
        # A ResidualBlock samples in one pass: its inverse is the papers' density-fast form.
        block = ResidualBlock(features, context, **options)
        return Inverse(block) if density else block

    if not check_flag("actnorm", actnorm):
        return Flow(stack(transforms, layer))
    # ActNorm before the first block, between blocks and after the last.
    parts = stack(transforms, layer, between=lambda i: ElementwiseAffine(features))
    return Flow([ElementwiseAffine(features), *parts, ElementwiseAffine(features)])
