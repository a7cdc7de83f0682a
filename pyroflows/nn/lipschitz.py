r"""Lipschitz-constrained networks for residual flows: spectrally normalised linear layers, the
LipSwish activation and a Lipschitz MLP :math:`g(z; c)` with :math:`\mathrm{Lip}_z(g) < 1`.

A residual block :math:`x = z + g(z)` is invertible when :math:`\mathrm{Lip}(g) < 1`
(Behrmann et al., "Invertible Residual Networks", ICML 2019, https://arxiv.org/abs/1811.00995). With 1-Lipschitz activations,

.. math:: \mathrm{Lip}(W_L \phi \circ \dots \circ \phi \circ W_1) \le \prod_l \|W_l\|_2,

so scaling every weight to :math:`\|\tilde W_l\|_2 \le c < 1` bounds
:math:`\mathrm{Lip}(g) \le c^L < c`. Following i-ResNet, a weight is only scaled down:
:math:`\tilde W = W / \max(1, \sigma(W)/c)`, with :math:`\sigma(W)` its largest singular value.

**Exact spectral norm, no power-iteration state.** The papers estimate :math:`\sigma(W)` by
power iteration with persistent vectors refreshed at every training step. That estimate is a
lower bound of :math:`\sigma(W)` (so the bound can fail after a parameter change until the
iteration catches up) and a stateful one (two evaluations, or a model and its reloaded
``state_dict``, can differ). Here :math:`\sigma(W)` is computed exactly from the singular
values (``torch.linalg.matrix_norm(W, 2)``) at every call: deterministic, stateless,
differentiable, and the bound holds for *every* parameter value. Its cost,
:math:`O(\text{out}\cdot\text{in}\cdot\min(\text{out},\text{in}))` per layer and call, does not
grow with the batch, so it is small next to the batch's matrix products for the widths used in
tabular flows (up to a few hundred).

LipSwish (Chen et al., "Residual Flows for Invertible Generative Modeling", NeurIPS 2019, https://arxiv.org/abs/1906.02735):
:math:`\phi(a) = a\,\mathrm{sigmoid}(\beta a)/1.1` with :math:`\beta = \operatorname{softplus}(\beta_0) > 0`;
:math:`\sup_a |\phi'(a)| \le 1` for every :math:`\beta` and, unlike ELU or ReLU, its derivative
is smooth and non-monotone-saturating, which keeps :math:`\|J_g\|` from hitting the bound.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_hidden, check_real

__all__ = ["LipSwish", "LipschitzLinear", "LipschitzMLP", "check_coefficient"]


def check_coefficient(coefficient: float, name: str = "coefficient") -> float:
    """Validate a Lipschitz coefficient ``0 < c < 1`` (``name``: the option, for the message)."""
    return check_real(f"{name} (the Lipschitz coefficient)", coefficient, 0.0, 1.0)


class LipschitzLinear(nn.Module):
    r"""A linear layer :math:`y = \tilde W x + b` with :math:`\|\tilde W\|_2 \le c`.

    :math:`\tilde W = W / \max(1, \sigma(W)/c)`, with the exact largest singular value
    :math:`\sigma(W)` (see the module docstring for why no power iteration).

    Args:
        in_features: input size.
        out_features: output size.
        coefficient: the bound :math:`c \in (0, 1)`.

    Shapes: (..., in_features) -> (..., out_features).

    Example:
        >>> layer = LipschitzLinear(3, 5, coefficient=0.9)
        >>> bool(torch.linalg.matrix_norm(layer.normalized_weight(), 2) <= 0.9 + 1e-6)
        True
    """

    def __init__(self, in_features: int, out_features: int, coefficient: float = 0.97) -> None:
        super().__init__()
        self.coefficient = check_coefficient(coefficient)
        linear = nn.Linear(in_features, out_features)  # PyTorch's default initialisation
        self.weight = nn.Parameter(linear.weight.detach().clone())
        self.bias = nn.Parameter(linear.bias.detach().clone())

    def normalized_weight(self) -> Tensor:
        """:math:`\\tilde W = W / \\max(1, \\sigma(W)/c)`, shape (out, in)."""
        sigma = torch.linalg.matrix_norm(self.weight, ord=2)
        return self.weight / torch.clamp_min(sigma / self.coefficient, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.normalized_weight(), self.bias)

    def extra_repr(self) -> str:
        out, inp = self.weight.shape
        return f"in_features={inp}, out_features={out}, coefficient={self.coefficient}"


class LipSwish(nn.Module):
    r""":math:`\phi(a) = a\,\mathrm{sigmoid}(\beta a) / 1.1`, 1-Lipschitz for every :math:`\beta > 0`
    (Chen et al. 2019); :math:`\beta = \operatorname{softplus}(\beta_0)`, learnable, starts at 1.

    Example:
        >>> act = LipSwish()
        >>> a = torch.linspace(-10, 10, 1001)
        >>> bool(act.derivative(a).abs().max() <= 1)
        True
    """

    def __init__(self) -> None:
        super().__init__()
        self.raw_beta = nn.Parameter(torch.tensor(math.log(math.e - 1)))  # softplus -> 1

    def beta(self) -> Tensor:
        return F.softplus(self.raw_beta)

    def forward(self, a: Tensor) -> Tensor:
        return a * torch.sigmoid(self.beta() * a) / 1.1

    def derivative(self, a: Tensor) -> Tensor:
        r""":math:`\phi'(a) = (s + \beta a s (1 - s)) / 1.1` with :math:`s = \mathrm{sigmoid}(\beta a)`."""
        beta = self.beta()
        s = torch.sigmoid(beta * a)
        return (s + beta * a * s * (1 - s)) / 1.1


class LipschitzMLP(nn.Module):
    r"""The residual function :math:`g(z; c) = \tilde W_L \phi(\dots \phi(\tilde W_1 z + b_1 + E_1 c)\dots) + b_L`
    with :math:`\mathrm{Lip}_z(g) \le c^L < c` (:math:`L` = number of linear layers).

    The context enters as offsets :math:`E_l c` of every hidden pre-activation, through an
    unconstrained linear map :math:`E`: it shifts where the network is evaluated but does not
    multiply :math:`z`, so the bound in :math:`z` holds for every context.

    Besides ``forward`` the network gives its Jacobian-vector products analytically,
    :math:`J v = \tilde W_L D_{L-1} \tilde W_{L-1} \cdots D_1 \tilde W_1 v` with
    :math:`D_l = \operatorname{diag}\phi'(a_l)` (:meth:`evaluate` returns the :math:`D_l`,
    :meth:`jvp` applies them): one cheap pass of matrix products per vector, differentiable by
    ordinary autograd, static shapes (no ``torch.func``, no ``autograd.grad``).

    Args:
        features: size of :math:`z` (input and output).
        hidden: hidden widths.
        context: context size (0: none).
        coefficient: the per-layer spectral bound :math:`c \in (0, 1)`, so that
            :math:`\mathrm{Lip}(g) \le c^{L}` with :math:`L` = ``len(hidden) + 1``.

    Shapes: ``z`` (..., d), ``context`` (..., c) broadcastable -> (..., d).

    Example:
        >>> g = LipschitzMLP(3, hidden=(16, 16), context=2)
        >>> g(torch.randn(10, 3), torch.randn(10, 2)).shape
        torch.Size([10, 3])
    """

    def __init__(
        self,
        features: int,
        hidden: Sequence[int] = (64, 64),
        context: int = 0,
        coefficient: float = 0.97,
    ) -> None:
        super().__init__()
        hidden = check_hidden(hidden)
        self.features = features
        self.hidden_widths = hidden
        self.context_features = context
        widths = (features, *hidden, features)
        self.layers = nn.ModuleList(
            LipschitzLinear(a, b, coefficient) for a, b in zip(widths[:-1], widths[1:])
        )
        self.activations = nn.ModuleList(LipSwish() for _ in hidden)
        self.embed = nn.Linear(context, sum(hidden)) if context else None

    def _offsets(self, context: Tensor | None) -> list[Tensor | None]:
        if self.embed is None or context is None:
            return [None] * len(self.hidden_widths)
        return list(self.embed(context).split(self.hidden_widths, dim=-1))

    def evaluate(
        self, z: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        """``(g(z; c), weights, slopes)``: the normalised weights and the activation slopes
        :math:`\\phi'(a_l)` that :meth:`jvp` needs (computed once, reused for many vectors)."""
        weights = [layer.normalized_weight() for layer in self.layers]
        slopes = []
        h = z
        for layer, w, act, offset in zip(
            self.layers, weights, self.activations, self._offsets(context)
        ):
            a = F.linear(h, w, layer.bias)
            if offset is not None:
                a = a + offset
            slopes.append(act.derivative(a))
            h = act(a)
        out = F.linear(h, weights[-1], self.layers[-1].bias)
        return out, weights, slopes

    def forward(self, z: Tensor, context: Tensor | None = None) -> Tensor:
        return self.evaluate(z, context)[0]

    @staticmethod
    def jvp(weights: list[Tensor], slopes: list[Tensor], v: Tensor) -> Tensor:
        r""":math:`J v` for vectors stacked in the last dimension: ``v`` (..., d, k) -> (..., d, k),
        with ``weights, slopes`` from :meth:`evaluate` (batch shapes broadcast)."""
        h = v
        for w, s in zip(weights[:-1], slopes):
            h = s.unsqueeze(-1) * torch.matmul(w, h)
        return torch.matmul(weights[-1], h)

    @staticmethod
    def jacobian(weights: list[Tensor], slopes: list[Tensor]) -> Tensor:
        r"""The full Jacobian :math:`\partial g_i / \partial z_j`, shape (..., d, d)."""
        d = weights[0].shape[1]
        eye = torch.eye(d, dtype=weights[0].dtype, device=weights[0].device)
        return LipschitzMLP.jvp(weights, slopes, eye)
