r"""The multi-scale architecture of RealNVP (Dinh, Sohl-Dickstein & Bengio, ICLR 2017, https://arxiv.org/abs/1605.08803) and Glow
(Kingma & Dhariwal, NeurIPS 2018, https://arxiv.org/abs/1807.03039): :class:`Squeeze` trades resolution for channels and
:class:`MultiScale` factors half of the channels out at every scale.

In the density direction (data :math:`x` to noise :math:`z`) one scale is

.. math::
    h = f_\text{head}(x), \qquad (h_1, h_2) = \text{split}_C(h), \qquad
    z = \big(\operatorname{reshape}(f_\text{tail}(h_1)),\ h_2\big),

so :math:`h_2` is Gaussian already at this scale (it is "factored out") and only :math:`h_1`
is transformed further, at the next, coarser scale. The map is a bijection of
:math:`\mathbb{R}^{CHW}` with :math:`\log|\det| = \log|\det f_\text{head}| + \log|\det f_\text{tail}|`;
reshaping :math:`f_\text{tail}(h_1)` back to :math:`h_1`'s shape is a fixed permutation of
i.i.d. Gaussian noise and costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import Bijection, Compose
from .conventions import check_image_shape

__all__ = ["MultiScale", "Squeeze", "squeeze", "unsqueeze"]


def squeeze(x: Tensor) -> Tensor:
    r"""Space-to-depth: ``(..., C, H, W)`` to ``(..., 4C, H/2, W/2)``; each :math:`2\times2`
    block of a channel becomes 4 channels (channel :math:`4c + 2a + b` holds pixel
    :math:`(2i + a, 2j + b)` of channel :math:`c`)."""
    *batch, c, h, w = x.shape
    n = len(batch)
    x = x.reshape(*batch, c, h // 2, 2, w // 2, 2)
    x = x.permute(*range(n), n, n + 2, n + 4, n + 1, n + 3)
    return x.reshape(*batch, 4 * c, h // 2, w // 2)


def unsqueeze(x: Tensor) -> Tensor:
    """Depth-to-space, the inverse of :func:`squeeze`: ``(..., 4C, H, W)`` to ``(..., C, 2H, 2W)``."""
    *batch, c, h, w = x.shape
    n = len(batch)
    x = x.reshape(*batch, c // 4, 2, 2, h, w)
    x = x.permute(*range(n), n, n + 3, n + 1, n + 4, n + 2)
    return x.reshape(*batch, c // 4, 2 * h, 2 * w)


class Squeeze(Bijection):
    r"""The squeeze of RealNVP: data of shape :math:`(C, H, W)` is seen as noise of shape
    :math:`(4C, H/2, W/2)`. A permutation, so :math:`\log|\det| = 0`.

    Args:
        shape: the data-side shape :math:`(C, H, W)`, ``H`` and ``W`` even.

    Example:
        >>> t = Squeeze((1, 2, 2))
        >>> t.inv(torch.arange(4.0).reshape(1, 2, 2)).flatten().tolist()
        [0.0, 1.0, 2.0, 3.0]
        >>> t.base_shape
        (4, 1, 1)
    """

    def __init__(self, shape: Sequence[int]) -> None:
        c, h, w = check_image_shape(shape)
        if h % 2 or w % 2:
            raise ValueError(f"Squeeze needs an even height and width, got shape {(c, h, w)}")
        super().__init__((c, h, w), base_shape=(4 * c, h // 2, w // 2))

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return unsqueeze(z), z.new_zeros(z.shape[:-3])

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return squeeze(x), x.new_zeros(x.shape[:-3])


class MultiScale(Bijection):
    r"""One scale of a multi-scale flow: ``head`` on the whole input, then ``tail`` on the first
    half of the channels only; the second half is factored out (see the module docstring).

    Args:
        head: image bijection, data side ``shape`` to base side :math:`(C', H', W')`,
            :math:`C'` even (usually ends, on its base side, with a squeeze and steps).
        tail: image bijection whose data side is :math:`(C'/2, H', W')`, e.g. the next
            ``MultiScale`` or the last scale's steps.

    The noise side of the whole has ``head``'s base shape; ``tail``'s noise is reshaped into
    the first :math:`C'/2` channels. A context goes to both parts.

    Example:
        >>> from pyroflows.transforms import Compose
        >>> head = Compose([Squeeze((1, 4, 4))])
        >>> t = MultiScale(head, Compose([Squeeze((2, 2, 2))]))
        >>> x = torch.randn(3, 1, 4, 4)
        >>> torch.allclose(t(t.inv(x)), x)
        True
    """

    def __init__(self, head: Bijection, tail: Bijection) -> None:
        for what, part in (("head", head), ("tail", tail)):
            if not isinstance(part, Bijection) or len(part.shape) != 3 or len(part.base_shape) != 3:
                raise TypeError(
                    f"{what} must be a bijection of (C, H, W) images, got {type(part).__name__}"
                )
        c, h, w = head.base_shape
        if c % 2 or tail.shape != (c // 2, h, w):
            raise ValueError(
                f"head's base shape {head.base_shape} must have an even number of channels "
                f"and tail's shape must be its first half, {(c // 2, h, w)}; got {tail.shape}"
            )
        contexts = {p.context_features for p in (head, tail) if p.context_features}
        if len(contexts) > 1:
            raise ValueError("head and tail must take the same context size")
        super().__init__(head.shape, max(contexts, default=0), base_shape=head.base_shape)
        self.head = head
        self.tail = tail
        self.kept = c // 2

    _ctx = Compose._context_for

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        batch = z.shape[:-3]
        kept = z[..., : self.kept, :, :].reshape(*batch, *self.tail.base_shape)
        kept, ladj_tail = self.tail.call_and_ladj(kept, self._ctx(self.tail, context))
        out = z[..., self.kept :, :, :]
        out = out.expand(*kept.shape[:-3], *out.shape[-3:])
        x, ladj_head = self.head.call_and_ladj(
            torch.cat([kept, out], dim=-3), self._ctx(self.head, context)
        )
        return x, ladj_tail + ladj_head

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h, ladj_head = self.head.inverse_and_ladj(x, self._ctx(self.head, context))
        kept, out = h[..., : self.kept, :, :], h[..., self.kept :, :, :]
        kept, ladj_tail = self.tail.inverse_and_ladj(kept, self._ctx(self.tail, context))
        kept = kept.reshape(*kept.shape[:-3], self.kept, *self.base_shape[1:])
        out = out.expand(*kept.shape[:-3], *out.shape[-3:])
        return torch.cat([kept, out], dim=-3), ladj_head + ladj_tail
