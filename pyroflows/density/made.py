r"""MADE density models: Gaussian (``made``), mixture-of-Gaussians (``made-mog``) and
Bernoulli (``made-bernoulli``, binary data) conditionals, one or several orderings."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import check_count
from ..nn import MADE
from ..nn.options import passes_keywords_to
from .base import (
    AutoregressiveModel,
    Bernoulli,
    Conditional,
    Gaussian,
    MixtureOfGaussians,
    make_orders,
)
from .registry import register

__all__ = ["MADEDensity", "made", "made_bernoulli", "made_mog"]


@passes_keywords_to(MADE, "hidden", "activation", "residual")
class MADEDensity(AutoregressiveModel):
    r"""An autoregressive density whose conditionals' parameters come from a MADE (Germain,
    Gregor, Murray & Larochelle, ICML 2015, https://arxiv.org/abs/1502.03509):

    .. math:: \log p_\pi(x \mid c) = \sum_i \log q\big(x_i;\ \theta_i(x_{\pi_{<\pi(i)}}, c)\big),

    where :math:`q` is the ``conditional`` family and one masked pass gives every
    :math:`\theta_i`. With :math:`M > 1` orderings the density is their average (a mixture,
    hence normalised), evaluated exactly:

    .. math:: \log p(x \mid c) = \log \frac1M \sum_{m=1}^M p_{\pi_m}(x \mid c).

    With ``tied=True`` every ordering shares the weights and differs only in the masks, the
    order-agnostic MADE of Germain et al. (Sec. 4); training on :math:`\log p` fits the
    ensemble density directly. Sampling picks an ordering uniformly and draws feature by
    feature (``features`` passes of each ordering's network).

    Args:
        features: data dimension :math:`d`.
        conditional: the one-dimensional family (:class:`~pyroflows.density.Gaussian`,
            :class:`~pyroflows.density.MixtureOfGaussians`, :class:`~pyroflows.density.Bernoulli`).
        context: size of the conditioning vector (``0``: unconditional).
        order: ``"natural"``, ``"reversed"``, ``"random"``, a permutation or a list of them
            (see :func:`~pyroflows.density.make_orders`; ``order[i]`` is the position of
            feature ``i``).
        orderings: number of random orderings averaged (with ``order="random"``).
        seed: seed of the random orderings.
        tied: share the weights between orderings.
        made: ``hidden``, ``activation`` and ``residual`` of each ordering's
            :class:`~pyroflows.nn.MADE`.

    Shapes: ``model(context).log_prob`` maps (..., d) to (...); see
    :class:`~pyroflows.density.AutoregressiveDistribution`.

    Example:
        >>> model = MADEDensity(3, Gaussian(), hidden=(16,), order="random", orderings=2)
        >>> model().log_prob(torch.zeros(5, 3)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        features: int,
        conditional: Conditional,
        context: int = 0,
        *,
        order: str | Sequence = "natural",
        orderings: int = 1,
        seed: int = 0,
        tied: bool = True,
        **made: Any,
    ) -> None:
        super().__init__()
        check_count("features", features, 1)
        check_count("context", context, 0)
        if not isinstance(conditional, Conditional):
            raise TypeError(f"conditional must be a Conditional, got {type(conditional).__name__}")
        orders = make_orders(features, order, orderings, seed)
        self.features = features
        self.context_features = context
        self.conditional = conditional
        nets = []
        for o in orders:
            net = MADE(features, conditional.num_params, context=context, order=o, **made)
            with torch.no_grad():
                net.output.bias.copy_(conditional.init_bias().repeat(features))
            nets.append(net)
        if tied:
            for net in nets[1:]:
                for source, target in zip(nets[0].modules(), net.modules()):
                    if isinstance(source, nn.Linear):
                        target.weight, target.bias = source.weight, source.bias
        self.nets = nn.ModuleList(nets)
        self.tied = tied
        # The feature filled at each sampling step, per ordering (static Python ints).
        self._steps = [o.argsort().tolist() for o in orders]

    @property
    def orders(self) -> list[Tensor]:
        """The orderings (``order[i]`` is the position of feature ``i``)."""
        return [net.order for net in self.nets]

    def conditional_params(
        self, x: Tensor, context: Tensor | None = None, ordering: int = 0
    ) -> Tensor:
        """Every feature's conditional parameters under ordering ``ordering``:
        (..., d) -> (..., d, P); row ``i`` depends only on features before ``i``."""
        return self.nets[ordering](x, context)

    def _log_prob(self, x: Tensor, context: Tensor | None) -> Tensor:
        terms = [self.conditional.log_prob(net(x, context), x).sum(-1) for net in self.nets]
        if len(terms) == 1:
            return terms[0]
        return torch.logsumexp(torch.stack(terms), 0) - math.log(len(terms))

    def _sample_ordering(
        self, net: MADE, steps: list[int], shape: torch.Size, context: Tensor | None
    ) -> Tensor:
        ref = net.output.weight
        x = torch.zeros(shape, dtype=ref.dtype, device=ref.device)
        positions = torch.arange(self.features, device=ref.device)
        for i in steps:
            xi = self.conditional.sample(net(x, context)[..., i, :])
            x = torch.where(positions == i, xi.unsqueeze(-1), x)
        return x

    def _sample(self, shape: torch.Size, context: Tensor | None) -> Tensor:
        draws = [
            self._sample_ordering(net, steps, shape, context)
            for net, steps in zip(self.nets, self._steps)
        ]
        if len(draws) == 1:
            return draws[0]
        pick = torch.randint(len(draws), shape[:-1], device=draws[0].device)
        index = pick[None, ..., None].expand(1, *shape)
        return torch.stack(draws).gather(0, index)[0]

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if len(self.nets) > 1:
            text += f", orderings={len(self.nets)}, tied={self.tied}"
        return text


@register("made")
def made(
    features: int, context: int = 0, log_scale_bound: float = 7.0, **options: Any
) -> MADEDensity:
    r"""MADE with Gaussian conditionals (Germain et al. 2015; the "MADE" of Papamakarios,
    Pavlakou & Murray, NeurIPS 2017, https://arxiv.org/abs/1705.07057): :math:`x_i \mid x_{<i} \sim \mathcal N(\mu_i, \sigma_i^2)`.
    Equal to a one-layer MAF; exact ``log_prob`` in one pass, reparametrised sampling in
    ``features`` passes.

    Options: ``log_scale_bound`` (soft bound on :math:`|\log\sigma_i|`); the others are
    :class:`MADEDensity`'s keywords (``hidden``, ``order``, ``orderings``, ...).
    """
    return MADEDensity(features, Gaussian(log_scale_bound), context, **options)


@register("made-mog")
def made_mog(
    features: int,
    context: int = 0,
    components: int = 10,
    log_scale_bound: float = 7.0,
    **options: Any,
) -> MADEDensity:
    r"""MADE MoG (Papamakarios, Pavlakou & Murray, NeurIPS 2017): each conditional is a
    mixture of ``components`` Gaussians,
    :math:`p(x_i \mid x_{<i}) = \sum_k \alpha_{ik} \mathcal N(x_i; \mu_{ik}, \sigma_{ik}^2)`, so
    even one ordering captures multimodal conditionals. Sampling is implicitly
    reparametrised (see :class:`~pyroflows.density.MixtureOfGaussians`).

    Options: as :func:`made`, plus ``components`` (:math:`K`, 10 in the paper).
    """
    conditional = MixtureOfGaussians(components, log_scale_bound)
    return MADEDensity(features, conditional, context, **options)


@register("made-bernoulli")
def made_bernoulli(features: int, context: int = 0, **options: Any) -> MADEDensity:
    r"""MADE for binary data, the model of Germain, Gregor, Murray & Larochelle (ICML 2015):
    :math:`p(x_i = 1 \mid x_{<i}) = \sigma(\ell_i(x_{<i}))`, so

    .. math:: \log p(x) = \sum_i x_i \ell_i - \log(1 + e^{\ell_i}),

    one masked pass for all :math:`d` logits. With ``order="random"`` and ``orderings`` > 1
    the density is the exact average over the orderings (the paper averages the test
    likelihood over sampled orderings and connectivities the same way). ``log_prob`` of
    anything but 0/1 values raises ValueError.

    Options: :class:`MADEDensity`'s keywords (``hidden``, ``order``, ``orderings``, ...).

    Example:
        >>> model = made_bernoulli(4, hidden=(16,))
        >>> model().sample((3,)).shape
        torch.Size([3, 4])
    """
    return MADEDensity(features, Bernoulli(), context, **options)


# The factories pass their other options to MADEDensity, whose keywords (less the conditional,
# which each sets) they accept and check (see pyroflows.checks.check_options).
for _factory in (made, made_mog, made_bernoulli):
    _factory.passes_options_to = MADEDensity  # type: ignore[attr-defined]
    _factory.fixed_options = ("conditional",)  # type: ignore[attr-defined]
