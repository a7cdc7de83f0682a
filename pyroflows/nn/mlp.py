"""Fully connected conditioners: a plain MLP and a residual MLP."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..checks import check_hidden
from .activations import make_activation
from .context import join_context
from .layers import residual_body, residual_width, zero_init

__all__ = ["MLP", "ResidualMLP", "dense_stack"]


def dense_stack(inputs: int, hidden: Sequence[int], activation: str = "relu") -> nn.Sequential:
    """``Linear -> activation`` for each width of ``hidden``, from ``inputs`` features: the
    hidden layers of an :class:`MLP`, or a feature extractor on its own (no output layer)."""
    widths = (inputs, *check_hidden(hidden))
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), make_activation(activation)]
    return nn.Sequential(*layers)


class MLP(nn.Module):
    r"""A multi-layer perceptron :math:`y = W_L \sigma(\dots \sigma(W_1 [x, c] + b_1)) + b_L`.

    Args:
        in_features: size of ``x``.
        out_features: size of ``y``.
        hidden: widths of the hidden layers.
        context: size of an optional context ``c`` concatenated to the input.
        activation: name of the non-linearity (see :data:`pyroflows.nn.ACTIVATIONS`).
        zero_output: initialise the last layer to zero so that a flow built on it starts as
            the identity map.

    Shapes: ``x`` (..., in_features), ``context`` (..., context) -> (..., out_features).

    Example:
        >>> net = MLP(3, 4, hidden=(16, 16), context=2)
        >>> net(torch.randn(10, 3), torch.randn(10, 2)).shape
        torch.Size([10, 4])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: Sequence[int] = (64, 64),
        context: int = 0,
        activation: str = "relu",
        zero_output: bool = True,
    ) -> None:
        super().__init__()
        hidden = check_hidden(hidden)
        self._build(in_features + context, hidden, activation)
        self.output = zero_init(nn.Linear(hidden[-1], out_features), zero_output)

    def _build(self, inputs: int, hidden: tuple[int, ...], activation: str) -> None:
        self.hidden = dense_stack(inputs, hidden, activation)

    def _features(self, h: Tensor) -> Tensor:
        """The last hidden layer's activations from the joined input."""
        return self.hidden(h)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.output(self._features(join_context(x, context)))


class ResidualMLP(MLP):
    r"""An MLP whose hidden layers are residual blocks, :math:`h \leftarrow h + W_2\sigma(W_1\sigma(h))`.

    Residual conditioners train deeper and more stably than plain MLPs (He et al. 2016; used
    by the neural spline flows of Durkan et al. 2019, https://arxiv.org/abs/1906.04032). All hidden widths must be equal; each
    entry of ``hidden`` adds one residual block.

    Args and shapes: as :class:`MLP`.

    Example:
        >>> net = ResidualMLP(3, 4, hidden=(32, 32))
        >>> net(torch.randn(10, 3)).shape
        torch.Size([10, 4])
    """

    def _build(self, inputs: int, hidden: tuple[int, ...], activation: str) -> None:
        width = residual_width(hidden, "ResidualMLP")
        self.input = nn.Linear(inputs, width)
        self.blocks = nn.ModuleList(
            residual_body(activation, nn.Linear(width, width), nn.Linear(width, width))
            for _ in hidden
        )
        self.final = make_activation(activation)

    def _features(self, h: Tensor) -> Tensor:
        h = self.input(h)
        for block in self.blocks:
            h = h + block(h)
        return self.final(h)
