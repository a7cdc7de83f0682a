r"""Masked convolutions and the PixelCNN conditioner (van den Oord, Kalchbrenner & Kavukcuoglu,
"Pixel Recurrent Neural Networks", ICML 2016).

An image :math:`x \in \mathbb{R}^{C \times H \times W}` is ordered in raster order (row by row,
left to right) and, within a pixel, channel by channel (R, then G, then B):

.. math::
    p(x) = \prod_{i=1}^{H}\prod_{j=1}^{W}\prod_{c=1}^{C}
           p\big(x_{c,i,j} \mid x_{:, <(i,j)},\ x_{<c,\,i,j}\big).

A masked convolution zeroes the kernel taps that would look at the current pixel's future:
every tap below the centre row and every tap right of the centre in the centre row. At the
centre tap the feature maps are split into :math:`C` groups (one per data channel) and

* **mask A** (first layer) connects output group :math:`g` to input groups :math:`< g` only,
* **mask B** (later layers) connects output group :math:`g` to input groups :math:`\le g`,

so that after one mask-A layer and any number of mask-B layers, the output of group
:math:`c` at pixel :math:`(i, j)` depends on the input only through :math:`x_{:, <(i,j)}` and
:math:`x_{<c, i, j}`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_choice, check_count
from .layers import residual_body, zero_init

__all__ = ["MaskedConv2d", "PixelCNNConditioner", "channel_groups", "pixelcnn_mask"]


def channel_groups(channels: int, groups: int) -> Tensor:
    """Group of each of ``channels`` feature maps among ``groups`` data channels: contiguous,
    balanced blocks, ``group[k] = floor(k * groups / channels)``.

    With ``channels = groups * p`` this is ``k // p``: a conditioner output of ``groups * p``
    maps reshapes to ``(groups, p)`` with group ``c``'s ``p`` parameters in row ``c``.
    """
    if channels < groups:
        raise ValueError(f"{channels} feature maps cannot be split into {groups} channel groups")
    return torch.arange(channels) * groups // channels


def pixelcnn_mask(
    out_channels: int, in_channels: int, kernel_size: int, mask_type: str, groups: int = 1
) -> Tensor:
    """The 0/1 mask ``(out_channels, in_channels, k, k)`` of a PixelCNN convolution.

    Args:
        out_channels: output feature maps (split into ``groups`` channel groups).
        in_channels: input feature maps (split into ``groups`` channel groups).
        kernel_size: odd kernel size :math:`k`.
        mask_type: ``"A"`` (centre tap: strictly earlier groups) or ``"B"`` (earlier or same).
        groups: number of data channels :math:`C` (3 for RGB), ordered R, G, B.
    """
    check_choice("mask_type", mask_type, ("A", "B"))
    if check_count("kernel_size", kernel_size) % 2 == 0:
        raise ValueError(f"kernel_size must be odd, got {kernel_size!r}")
    check_count("groups", groups)
    centre = kernel_size // 2
    mask = torch.ones(out_channels, in_channels, kernel_size, kernel_size)
    mask[:, :, centre, centre + 1 :] = 0
    mask[:, :, centre + 1 :, :] = 0
    g_out = channel_groups(out_channels, groups)[:, None]
    g_in = channel_groups(in_channels, groups)[None, :]
    allowed = g_out > g_in if mask_type == "A" else g_out >= g_in
    mask[:, :, centre, centre] = allowed.float()
    return mask


class MaskedConv2d(nn.Conv2d):
    r"""A 'same'-padded 2-D convolution whose kernel is multiplied by a PixelCNN mask.

    .. math:: y = (W \odot M) * x + b,

    with :math:`M` from :func:`pixelcnn_mask` (van den Oord et al. 2016, Fig. 2 right): taps
    above the centre row and left of the centre in the centre row are free; at the centre,
    mask A lets channel group :math:`g` see groups :math:`< g` and mask B groups
    :math:`\le g`; all other taps are zero.

    Args:
        in_channels: input feature maps (at least ``groups``).
        out_channels: output feature maps (at least ``groups``).
        kernel_size: odd kernel size.
        mask_type: ``"A"`` for the first layer (sees no part of the current value),
            ``"B"`` afterwards.
        groups: number of data channels :math:`C` whose order (R -> G -> B) is enforced
            (not the ``groups`` of :class:`torch.nn.Conv2d`, which is always 1 here).
        bias: learn an additive bias.

    Shapes: (N, in_channels, H, W) -> (N, out_channels, H, W).

    Example:
        >>> conv = MaskedConv2d(3, 30, 5, "A", groups=3)
        >>> conv(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 30, 8, 8])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        mask_type: str = "B",
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        mask = pixelcnn_mask(out_channels, in_channels, kernel_size, mask_type, groups)
        super().__init__(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias
        )
        self.mask_type = mask_type
        self.data_channels = groups
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mask_type={self.mask_type}, data_channels={self.data_channels}"


class _ResidualBlock(nn.Module):
    """act -> masked 3x3 (B) -> act -> masked 1x1 (B), added to the input."""

    def __init__(self, width: int, kernel_size: int, groups: int, activation: str) -> None:
        super().__init__()
        self.body = residual_body(
            activation,
            MaskedConv2d(width, width, kernel_size, "B", groups),
            MaskedConv2d(width, width, 1, "B", groups),
        )

    def forward(self, h: Tensor) -> Tensor:
        return h + self.body(h)


class PixelCNNConditioner(nn.Module):
    r"""A small PixelCNN: per-pixel, per-channel parameters of an autoregressive image model.

    Mask-A :math:`k_0 \times k_0` convolution, ``blocks`` residual blocks
    (act, mask-B :math:`k \times k`, act, mask-B :math:`1 \times 1`, plus skip), and a mask-B
    :math:`1 \times 1` output head, so that

    .. math:: \theta_{c,i,j} = f_{c,i,j}\big(x_{:, <(i,j)},\ x_{<c,i,j},\ \text{context}\big).

    A context vector is mapped by a linear layer to a per-feature-map bias added after the
    first layer (a global conditioning, as in conditional PixelCNN, van den Oord et al.,
    NeurIPS 2016); it does not break the ordering.

    Args:
        channels: data channels :math:`C` (1 for grey, 3 for RGB).
        params_per_channel: outputs :math:`P` per channel and pixel (1 Bernoulli logit, 256
            categorical logits, ...).
        hidden: feature maps per layer (a multiple of ``channels`` keeps groups balanced).
        blocks: residual mask-B blocks.
        kernel_size: kernel of the residual blocks (odd).
        first_kernel_size: kernel of the mask-A input layer (odd).
        context: size of an optional conditioning vector.
        activation: non-linearity name.
        zero_output: initialise the output head to zero (uniform/identity start).

    Shapes: ``x`` (..., C, H, W), ``context`` (..., context) -> (..., C, H, W, P).

    Example:
        >>> net = PixelCNNConditioner(3, 2, hidden=24, blocks=2)
        >>> net(torch.randn(4, 3, 8, 8)).shape
        torch.Size([4, 3, 8, 8, 2])
    """

    def __init__(
        self,
        channels: int,
        params_per_channel: int,
        hidden: int = 64,
        blocks: int = 4,
        kernel_size: int = 3,
        first_kernel_size: int = 7,
        context: int = 0,
        activation: str = "relu",
        zero_output: bool = False,
    ) -> None:
        super().__init__()
        for what, value, low in (
            ("channels", channels, 1),
            ("params_per_channel", params_per_channel, 1),
            ("hidden", hidden, channels),
            ("blocks", blocks, 0),
            ("context", context, 0),
        ):
            check_count(what, value, low)
        self.channels = channels
        self.params_per_channel = params_per_channel
        self.context_features = context
        self.input = MaskedConv2d(channels, hidden, first_kernel_size, "A", channels)
        self.context_bias = nn.Linear(context, hidden) if context else None
        self.blocks = nn.Sequential(
            *[_ResidualBlock(hidden, kernel_size, channels, activation) for _ in range(blocks)]
        )
        # The same act-conv-act-conv shape as a residual branch, without the skip.
        self.head = residual_body(
            activation,
            MaskedConv2d(hidden, hidden, 1, "B", channels),
            zero_init(
                MaskedConv2d(hidden, channels * params_per_channel, 1, "B", channels), zero_output
            ),
        )

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if x.dim() < 3 or x.shape[-3] != self.channels:
            raise ValueError(
                f"expected images of shape (..., {self.channels}, H, W), got {tuple(x.shape)}"
            )
        if (context is None) != (self.context_bias is None):
            raise ValueError(
                f"this conditioner takes a context of {self.context_features} features"
                if context is None
                else "this conditioner takes no context (context=0)"
            )
        batch = x.shape[:-3]
        if context is not None:
            batch = torch.broadcast_shapes(batch, context.shape[:-1])
            x = x.expand(*batch, *x.shape[-3:])
        h = self.input(x.reshape(-1, *x.shape[-3:]))
        if context is not None:
            bias = self.context_bias(context.expand(*batch, context.shape[-1]))
            h = h + bias.reshape(-1, bias.shape[-1], 1, 1)
        out = self.head(self.blocks(h))
        out = out.reshape(*batch, self.channels, self.params_per_channel, *out.shape[-2:])
        return out.movedim(-3, -1)
