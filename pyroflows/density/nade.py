r"""NADE (binary data, Bernoulli conditionals) and RNADE (real data, mixture-of-Gaussians
conditionals): one weight-tied hidden layer, :math:`O(dH)` per density evaluation."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import check_count
from ..nn import make_activation
from .base import AutoregressiveModel, Bernoulli, Conditional, MixtureOfGaussians, make_orders
from .registry import register

__all__ = ["NADE", "nade", "rnade"]


def _activation(name: str) -> nn.Module:
    return nn.Sigmoid() if name == "sigmoid" else make_activation(name)


class NADE(AutoregressiveModel):
    r"""Neural autoregressive density estimator (Larochelle & Murray, AISTATS 2011, https://proceedings.mlr.press/v15/larochelle11a.html), with any
    one-dimensional conditional (RNADE: Uria, Murray & Larochelle, NeurIPS 2013, https://arxiv.org/abs/1306.0186).

    With the features taken in the ordering's positions :math:`t = 1..d`, every conditional
    shares one hidden layer whose weights are tied across positions:

    .. math::
        a_1 = c + U s, \qquad a_{t+1} = a_t + W_{\cdot, t}\, x_{\pi_t}, \qquad
        h_t = g(\rho_t a_t), \qquad \theta_t = V_t^\top h_t + b_t,

    (:math:`s` the context, :math:`\rho_t = 1` unless ``rescale``), so all :math:`d`
    pre-activations are one exclusive cumulative sum and ``log_prob`` costs :math:`O(dH)`
    instead of the :math:`O(d^2 H)` of :math:`d` separate networks. Sampling runs the same
    recursion, one position at a time.

    Args:
        features: data dimension :math:`d`.
        conditional: :class:`~pyroflows.density.Bernoulli` (NADE) or
            :class:`~pyroflows.density.MixtureOfGaussians` (RNADE), or any
            :class:`~pyroflows.density.Conditional`.
        context: size of the conditioning vector (enters the hidden bias through :math:`U`).
        hidden: hidden units :math:`H`.
        order: ``"natural"``, ``"reversed"``, ``"random"`` or a permutation (``order[i]`` is
            the position of feature ``i``).
        seed: seed of a random ordering.
        activation: :math:`g`: ``"sigmoid"`` (NADE) or a name of
            :data:`~pyroflows.nn.ACTIVATIONS` (``"relu"`` for RNADE).
        rescale: learn the per-position scales :math:`\rho_t` of RNADE, which keep the
            growing sums :math:`a_t` in the activation's useful range.

    Shapes: ``model(context).log_prob`` maps (..., d) to (...).

    Example:
        >>> model = NADE(6, Bernoulli(), hidden=16)
        >>> x = model().sample((4,))
        >>> x.shape, model().log_prob(x).shape
        (torch.Size([4, 6]), torch.Size([4]))
    """

    def __init__(
        self,
        features: int,
        conditional: Conditional,
        context: int = 0,
        hidden: int = 64,
        order: str | Sequence[int] = "natural",
        seed: int = 0,
        activation: str = "sigmoid",
        rescale: bool = False,
    ) -> None:
        super().__init__()
        check_count("features", features, 1)
        check_count("context", context, 0)
        check_count("hidden", hidden, 1)
        if not isinstance(conditional, Conditional):
            raise TypeError(f"conditional must be a Conditional, got {type(conditional).__name__}")
        orders = make_orders(features, order, 1, seed)
        if len(orders) != 1:
            raise ValueError(f"NADE takes a single ordering, got {len(orders)} orderings")
        self.features = features
        self.context_features = context
        self.conditional = conditional
        self.register_buffer("order", orders[0])
        self._steps = orders[0].argsort().tolist()  # the feature at each position
        self.act = _activation(activation)
        P = conditional.num_params
        # Parameters are indexed by position in the ordering.
        self.W = nn.Parameter(torch.randn(hidden, features) / math.sqrt(features))
        self.c = nn.Parameter(torch.zeros(hidden))
        self.V = nn.Parameter(torch.zeros(features, hidden, P))
        self.b = nn.Parameter(conditional.init_bias().repeat(features, 1))
        self.rho = nn.Parameter(torch.ones(features)) if rescale else None
        self.U = nn.Linear(context, hidden, bias=False) if context else None

    def _by_position(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """Parameters (..., d, P) and features (..., d), both in ordering positions."""
        x_pos = x[..., self._steps]
        contrib = x_pos.unsqueeze(-1) * self.W.T  # (..., d, H)
        cumulative = torch.cumsum(contrib, -2)
        a = (
            torch.cat([torch.zeros_like(cumulative[..., :1, :]), cumulative[..., :-1, :]], -2)
            + self.c
        )
        if self.U is not None:
            a = a + self.U(context).unsqueeze(-2)
        if self.rho is not None:
            a = a * self.rho.unsqueeze(-1)
        h = self.act(a)
        return torch.einsum("...th,thp->...tp", h, self.V) + self.b, x_pos

    def conditional_params(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Every feature's conditional parameters, feature order: (..., d) -> (..., d, P)."""
        return self._by_position(x, context)[0][..., self.order, :]

    def _log_prob(self, x: Tensor, context: Tensor | None) -> Tensor:
        params, x_pos = self._by_position(x, context)
        return self.conditional.log_prob(params, x_pos).sum(-1)

    def _sample(self, shape: torch.Size, context: Tensor | None) -> Tensor:
        a = self.c.expand(*shape[:-1], self.c.shape[0])
        if self.U is not None:
            a = a + self.U(context)
        columns = []
        for t in range(self.features):
            h = self.act(a if self.rho is None else a * self.rho[t])
            xt = self.conditional.sample(h @ self.V[t] + self.b[t])
            columns.append(xt)
            a = a + xt.unsqueeze(-1) * self.W[:, t]
        x_pos = torch.stack(columns, -1)
        return x_pos[..., self.order]  # feature i sits at position order[i]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", hidden={self.c.shape[0]}"


@register("nade")
def nade(features: int, context: int = 0, **options: Any) -> NADE:
    r"""NADE for binary data (Larochelle & Murray, AISTATS 2011):
    :math:`p(x_t = 1 \mid x_{<t}) = \sigma(V_t^\top h_t + b_t)` with the weight-tied hidden
    layer of :class:`NADE`. ``log_prob`` of anything but 0/1 values raises ValueError.

    Options: :class:`NADE`'s keywords (``hidden``, ``order``, ``seed``, ``activation``).
    """
    return NADE(features, Bernoulli(), context, rescale=False, **options)


@register("rnade")
def rnade(
    features: int,
    context: int = 0,
    components: int = 10,
    activation: str = "relu",
    log_scale_bound: float = 7.0,
    **options: Any,
) -> NADE:
    r"""RNADE for real data (Uria, Murray & Larochelle, NeurIPS 2013): NADE's hidden layer
    with learned rescaling :math:`\rho_t`, and a mixture of ``components`` Gaussians per
    conditional (mixing logits, means and log-scales all read from :math:`h_t`).

    Options: ``components``, ``log_scale_bound`` (of the
    :class:`~pyroflows.density.MixtureOfGaussians`), ``activation`` (``"relu"``, as in Uria
    et al.'s experiments; ``"sigmoid"`` is the paper's formula); the others are
    :class:`NADE`'s keywords (``hidden``, ``order``, ``seed``).
    """
    conditional = MixtureOfGaussians(components, log_scale_bound)
    return NADE(features, conditional, context, activation=activation, rescale=True, **options)


# The factories pass their other options to NADE, whose keywords (less the conditional and the
# rescaling, which each sets) they accept and check (see pyroflows.checks.check_options).
for _factory in (nade, rnade):
    _factory.passes_options_to = NADE  # type: ignore[attr-defined]
    _factory.fixed_options = ("conditional", "rescale")  # type: ignore[attr-defined]
