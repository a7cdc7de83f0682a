r"""Convolutional conditioners of image couplings: Glow's conv-ReLU-conv-ReLU-zero-conv network
and RealNVP's small ResNet.

Both map an image ``x`` of shape ``(N, C_in, H, W)`` and optional context maps ``(N, C_ctx, H, W)``
(concatenated as extra input channels) to ``(N, C_out, H, W)``, with zero padding so the spatial
size is kept. The output convolution starts at zero (``zero_output=True``), so a coupling built on
either starts as the identity map, as in Glow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..checks import check_hidden
from .activations import make_activation
from .layers import residual_body, residual_width, zero_init
from .options import passes_keywords_to

__all__ = ["ConvNet", "ResidualConvNet"]


def _join(x: Tensor, context: Tensor | None) -> Tensor:
    return x if context is None else torch.cat([x, context], dim=1)


class ConvNet(nn.Module):
    r"""Glow's coupling network (Kingma & Dhariwal 2018, https://arxiv.org/abs/1807.03039): a 3x3 convolution, 1x1 convolutions,
    then a zero-initialised 3x3 convolution,

    .. math:: y = \text{conv}_{3\times3}\big(\sigma(\text{conv}_{1\times1}(\dots
              \sigma(\text{conv}_{3\times3}([x, c]))))\big).

    Args:
        in_channels: channels of ``x``.
        out_channels: channels of ``y``.
        hidden: widths; the first is the 3x3 convolution's, each further entry one 1x1
            convolution (Glow: ``(512, 512)``).
        context: channels of the context maps.
        activation: non-linearity name.
        zero_output: initialise the last convolution to zero.

    Example:
        >>> net = ConvNet(2, 4, hidden=(16, 16), context=3)
        >>> net(torch.randn(5, 2, 8, 8), torch.randn(5, 3, 8, 8)).shape
        torch.Size([5, 4, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden: Sequence[int] = (512, 512),
        context: int = 0,
        activation: str = "relu",
        zero_output: bool = True,
    ) -> None:
        super().__init__()
        hidden = check_hidden(hidden, "channel counts")
        self._build(in_channels + context, hidden, activation)
        self.output = zero_init(nn.Conv2d(hidden[-1], out_channels, 3, padding=1), zero_output)

    def _build(self, inputs: int, hidden: tuple[int, ...], activation: str) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(inputs, hidden[0], 3, padding=1),
            make_activation(activation),
        ]
        for a, b in zip(hidden[:-1], hidden[1:]):
            layers += [nn.Conv2d(a, b, 1), make_activation(activation)]
        self.hidden = nn.Sequential(*layers)

    def _features(self, h: Tensor) -> Tensor:
        """The last hidden layer's activations from the joined input."""
        return self.hidden(h)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        return self.output(self._features(_join(x, context)))


class _Block(nn.Module):
    def __init__(self, channels: int, activation: str) -> None:
        super().__init__()
        self.net = residual_body(
            activation,
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, h: Tensor) -> Tensor:
        return h + self.net(h)


@passes_keywords_to(ConvNet, "context", "activation", "zero_output")
class ResidualConvNet(ConvNet):
    r"""RealNVP's coupling network (Dinh et al. 2017, https://arxiv.org/abs/1605.08803): a 3x3 input convolution, residual blocks
    :math:`h \leftarrow h + \text{conv}(\sigma(\text{conv}(\sigma(h))))` (He et al. 2016), and a
    zero-initialised 3x3 output convolution. Batch normalisation is left out: its train-time
    statistics would make the layer's inverse depend on the batch.

    Args:
        in_channels, out_channels, context, activation, zero_output: as :class:`ConvNet`.
        hidden: widths, all equal; each entry adds one residual block (RealNVP's default
            here is narrower than Glow's).

    Example:
        >>> net = ResidualConvNet(1, 2, hidden=(8, 8, 8))
        >>> len(net.blocks)
        3
    """

    def __init__(
        self, in_channels: int, out_channels: int, hidden: Sequence[int] = (64, 64), **options: Any
    ) -> None:
        super().__init__(in_channels, out_channels, hidden, **options)

    def _build(self, inputs: int, hidden: tuple[int, ...], activation: str) -> None:
        width = residual_width(hidden, "ResidualConvNet")
        self.input = nn.Conv2d(inputs, width, 3, padding=1)
        self.blocks = nn.Sequential(*(_Block(width, activation) for _ in hidden))
        self.activation = make_activation(activation)

    def _features(self, h: Tensor) -> Tensor:
        return self.activation(self.blocks(self.input(h)))
