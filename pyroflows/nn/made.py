"""MADE: masked autoencoder for distribution estimation, the autoregressive conditioner."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_hidden
from .activations import make_activation
from .context import join_context
from .layers import residual_body, residual_width, zero_init

__all__ = ["MADE", "MaskedLinear", "check_order"]


def check_order(order: Sequence[int] | Tensor | None, features: int) -> Tensor:
    """Validate an autoregressive ordering: a permutation of ``range(features)``.

    ``order[i]`` is the position of feature ``i`` in the ordering, so feature ``i`` may depend
    only on features ``j`` with ``order[j] < order[i]``. ``None`` means the natural order.
    """
    if order is None:
        return torch.arange(features)
    order = torch.as_tensor(order)
    if order.dtype.is_floating_point or order.dtype == torch.bool:
        raise ValueError(f"order must hold integers, got dtype {order.dtype}")
    order = order.long()
    if order.shape != (features,) or not torch.equal(order.sort().values, torch.arange(features)):
        raise ValueError(f"order must be a permutation of range({features}), got {order.tolist()}")
    return order


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask of the same shape."""

    def __init__(self, mask: Tensor, bias: bool = True) -> None:
        out_features, in_features = mask.shape
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    r"""Masked autoencoder for distribution estimation (Germain et al., ICML 2015, https://arxiv.org/abs/1502.03509).

    Outputs ``params_per_feature`` numbers per feature, where those of feature :math:`i`
    depend only on the features before it in the ordering (and on the whole context):

    .. math:: \theta_i = f_i(x_{<i}, c).

    Each input gets a degree (its 1-based position in ``order``), each hidden unit a degree
    assigned cyclically, and a weight is kept only from lower-or-equal degree to higher
    degree, strictly so for the output layer. With a context, some hidden units take degree 0
    so that the first feature's parameters depend on the context too.

    Args:
        features: number of autoregressive inputs :math:`d`.
        params_per_feature: outputs per feature (2 for an affine transformer, :math:`3K-1` for
            a spline with :math:`K` bins).
        hidden: hidden widths (each at least ``features - 1`` for full connectivity).
        context: size of the context vector (connected to every hidden unit of the first
            layer).
        order: a permutation of ``range(features)``; ``None`` is the natural order.
        activation: non-linearity name.
        residual: use residual blocks between hidden layers (all widths equal); degrees are
            preserved so the autoregressive property holds.
        zero_output: initialise the output layer to zero (identity flows at start).

    Shapes: ``x`` (..., features), ``context`` (..., context) ->
    (..., features, params_per_feature).

    Example:
        >>> made = MADE(4, 2, hidden=(32, 32), order=[3, 2, 1, 0])
        >>> made(torch.randn(7, 4)).shape
        torch.Size([7, 4, 2])
    """

    def __init__(
        self,
        features: int,
        params_per_feature: int,
        hidden: Sequence[int] = (64, 64),
        context: int = 0,
        order: Sequence[int] | Tensor | None = None,
        activation: str = "relu",
        residual: bool = False,
        zero_output: bool = True,
    ) -> None:
        super().__init__()
        hidden = check_hidden(hidden)
        if residual:
            residual_width(hidden, "a residual MADE")
        self.features = features
        self.params_per_feature = params_per_feature
        self.context_features = context
        order = check_order(order, features)
        self.register_buffer("order", order)

        in_degrees = torch.cat([order + 1, torch.zeros(context, dtype=torch.long)])
        low = 0 if (context > 0 or features == 1) else 1
        hidden_degrees = [low + torch.arange(h) % (features - low) for h in hidden]
        out_degrees = (order + 1).repeat_interleave(params_per_feature)

        def mask(deg_out: Tensor, deg_in: Tensor, strict: bool) -> Tensor:
            if strict:
                return (deg_out[:, None] > deg_in[None, :]).float()
            return (deg_out[:, None] >= deg_in[None, :]).float()

        self.input = MaskedLinear(mask(hidden_degrees[0], in_degrees, strict=False))
        self.residual = residual
        if residual:
            square = mask(hidden_degrees[0], hidden_degrees[0], strict=False)
            layers = [
                residual_body(activation, MaskedLinear(square), MaskedLinear(square))
                for _ in hidden
            ]
        else:
            layers = [
                nn.Sequential(make_activation(activation), MaskedLinear(mask(d_out, d_in, False)))
                for d_in, d_out in zip(hidden_degrees[:-1], hidden_degrees[1:])
            ]
        self.layers = nn.ModuleList(layers)
        self.final = make_activation(activation)
        self.output = zero_init(
            MaskedLinear(mask(out_degrees, hidden_degrees[-1], strict=True)), zero_output
        )

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        h = self.input(join_context(x, context))
        for layer in self.layers:
            h = h + layer(h) if self.residual else layer(h)
        out = self.output(self.final(h))
        return out.unflatten(-1, (self.features, self.params_per_feature))
