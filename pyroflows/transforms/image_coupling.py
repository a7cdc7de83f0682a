r"""Coupling layers for images (RealNVP, Dinh et al. 2017, https://arxiv.org/abs/1605.08803; Glow, Kingma & Dhariwal 2018): the
:class:`~pyroflows.transforms.Coupling` idea with a spatial mask and a convolutional
conditioner.

With a mask :math:`b \in \{0, 1\}^{C \times H \times W}` (1: passes unchanged),

.. math::
    x = b \odot z + (1 - b) \odot \tau\big(z;\ \theta(b \odot z, c)\big), \qquad
    \log|\det J| = \sum_{(k,i,j):\,b_{kij} = 0} \log \tau'(z_{kij}),

with :math:`\tau` any :class:`~pyroflows.transforms.ElementwiseMap` (affine with a soft-clamped
log-scale, additive, spline). Two masks:

* ``"checkerboard"``: :math:`b_{kij} = [(i + j + \text{parity}) \bmod 2 = 0]` for every channel;
  the conditioner sees the whole image with the transformed pixels zeroed.
* ``"channel"``: the first :math:`\lfloor C/2 \rfloor` channels pass (``parity=1``: the last);
  the conditioner sees only those channels (Glow's split).

A context vector :math:`c` is broadcast over the pixels and enters the conditioner as extra
input channels (class-conditional flows); ``spatial_context=True`` takes context maps
``(..., c, H, W)`` instead (e.g. the image that a dequantisation flow is conditioned on).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..checks import check_context
from ..nn.conv import ConvNet, ResidualConvNet
from .base import Bijection
from .conventions import check_image_shape
from .coupling import checkerboard_mask
from .elementwise import ElementwiseMap

__all__ = ["ImageCoupling"]

CONDITIONERS = {"glow": ConvNet, "resnet": ResidualConvNet}


class ImageCoupling(Bijection):
    r"""Image coupling layer with a checkerboard or channel mask (see the module docstring).

    Args:
        shape: event shape :math:`(C, H, W)`.
        map: the elementwise map :math:`\tau`, e.g. :class:`AffineMap` (RealNVP, Glow's affine
            coupling) or :class:`AdditiveMap` (Glow's additive coupling).
        mask: ``"checkerboard"`` (needs :math:`HW \ge 2`) or ``"channel"`` (needs :math:`C \ge 2`).
        parity: ``0`` or ``1``, which half passes unchanged.
        context: size of the context vector (or number of context maps).
        spatial_context: the context is ``(..., context, H, W)`` maps rather than a vector.
        hidden: conditioner widths (see :class:`~pyroflows.nn.ConvNet`,
            :class:`~pyroflows.nn.ResidualConvNet`).
        conditioner: ``"glow"`` (conv 3x3, ReLU, conv 1x1, ReLU, zero conv 3x3) or
            ``"resnet"`` (RealNVP's residual network).
        activation: non-linearity name.

    Starts as the identity map (zero-initialised output convolution). Fast both ways.

    Example:
        >>> from pyroflows.transforms import AffineMap
        >>> t = ImageCoupling((1, 4, 4), AffineMap(), "checkerboard", hidden=(8, 8), context=3)
        >>> x, ladj = t.call_and_ladj(torch.randn(5, 1, 4, 4), torch.randn(5, 3))
        >>> x.shape, ladj.shape
        (torch.Size([5, 1, 4, 4]), torch.Size([5]))
    """

    def __init__(
        self,
        shape: Sequence[int],
        map: ElementwiseMap,
        mask: str = "checkerboard",
        parity: int = 0,
        context: int = 0,
        spatial_context: bool = False,
        hidden: Sequence[int] = (64, 64),
        conditioner: str = "glow",
        activation: str = "relu",
    ) -> None:
        super().__init__(check_image_shape(shape), context)
        c, h, w = self.shape
        if parity not in (0, 1):
            raise ValueError(f"parity must be 0 or 1, got {parity!r}")
        if conditioner not in CONDITIONERS:
            raise ValueError(
                f"conditioner must be one of {sorted(CONDITIONERS)}, got {conditioner!r}"
            )
        if not isinstance(map, ElementwiseMap):
            raise TypeError(f"map must be an ElementwiseMap, got {type(map).__name__}")
        self.map = map
        self.mask_kind = mask
        self.parity = parity
        self.spatial_context = bool(spatial_context)
        if mask == "checkerboard":
            if h * w < 2:
                raise ValueError(
                    f"a checkerboard mask needs at least 2 pixels, got shape {self.shape}"
                )
            self.register_buffer("mask", checkerboard_mask(h, w, parity))
            inputs, outputs = c, c
        elif mask == "channel":
            if c < 2:
                raise ValueError(
                    f"a channel mask needs at least 2 channels, got shape {self.shape}; "
                    "squeeze first or use mask='checkerboard'"
                )
            kept = c // 2
            # Channels [0, kept) pass for parity 0; [c - kept, c) for parity 1.
            self.split = (kept, c - kept) if parity == 0 else (c - kept, kept)
            inputs, outputs = kept, c - kept
        else:
            raise ValueError(f"mask must be 'checkerboard' or 'channel', got {mask!r}")
        self.transformed_channels = outputs
        self.conditioner = CONDITIONERS[conditioner](
            inputs, outputs * map.num_params, hidden, context=context, activation=activation
        )

    def conditioner_params(self, a: Tensor, context: Tensor | None) -> Tensor:
        """Conditioner output for the conditioning input ``a`` (..., C_a, H, W), as
        ``(..., C_b, H, W, num_params)``, broadcast with the context's batch."""
        h, w = self.shape[1:]
        if self.spatial_context:
            expected = (self.context_features, h, w)
            if context is None or context.dim() < 3 or tuple(context.shape[-3:]) != expected:
                got = None if context is None else tuple(context.shape)
                raise ValueError(
                    f"this coupling takes context maps of shape (..., {expected[0]}, {h}, "
                    f"{w}), got {got}"
                )
        else:
            check_context(context, self.context_features)
        if context is None:
            batch = a.shape[:-3]
            maps = None
        else:
            ctx_batch = context.shape[:-3] if self.spatial_context else context.shape[:-1]
            batch = torch.broadcast_shapes(a.shape[:-3], ctx_batch)
            if self.spatial_context:
                maps = context.expand(*batch, *context.shape[-3:])
            else:
                maps = context[..., None, None].expand(*batch, context.shape[-1], h, w)
            maps = maps.reshape(-1, self.context_features, h, w)
        flat = a.expand(*batch, *a.shape[-3:]).reshape(-1, *a.shape[-3:])
        out = self.conditioner(flat, maps)
        out = out.reshape(-1, self.transformed_channels, self.map.num_params, h, w).movedim(2, -1)
        return out.reshape(*batch, self.transformed_channels, h, w, self.map.num_params)

    def _couple(self, u: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        apply = self.map.inverse if inverse else self.map
        if self.mask_kind == "checkerboard":
            params = self.conditioner_params(u * self.mask.to(u.dtype), context)
            u = u.expand(*params.shape[:-4], *u.shape[-3:])
            v, ladj = apply(u, params)
            v = torch.where(self.mask, u, v)
            ladj = torch.where(self.mask, torch.zeros_like(ladj), ladj)
            return v, ladj.sum((-3, -2, -1))
        first, second = u.split(self.split, dim=-3)
        a, b = (first, second) if self.parity == 0 else (second, first)
        params = self.conditioner_params(a, context)
        b = b.expand(*params.shape[:-4], *b.shape[-3:])
        a = a.expand(*params.shape[:-4], *a.shape[-3:])
        v_b, ladj = apply(b, params)
        v = torch.cat([a, v_b] if self.parity == 0 else [v_b, a], dim=-3)
        return v, ladj.sum((-3, -2, -1))

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(z, context, inverse=False)

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(x, context, inverse=True)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mask={self.mask_kind!r}, parity={self.parity}"
