r"""Glow's invertible 1x1 convolution (Kingma & Dhariwal, "Glow: Generative Flow with Invertible
1x1 Convolutions", NeurIPS 2018), in LU form.

A 1x1 convolution applies one :math:`C \times C` matrix :math:`W` to the channel vector of every
pixel, so :math:`\log|\det| = H W \log|\det W|`. With :math:`W = P L U` (fixed permutation
:math:`P`, unit lower-triangular :math:`L`, upper-triangular :math:`U` with diagonal
:math:`e^{s}`), :math:`\log|\det W| = \sum_c s_c` costs :math:`O(C)`. The matrix and its
parametrisation are :class:`~pyroflows.transforms.LULinear`'s, applied along the channel axis.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from .base import Bijection
from .conventions import check_image_shape
from .linear import LULinear

__all__ = ["InvertibleConv1x1"]


class InvertibleConv1x1(Bijection):
    r"""Invertible 1x1 convolution :math:`z_{:,i,j} = W x_{:,i,j}` with :math:`W = PLU`.

    The density direction (data to noise, used in training) is the matrix product; sampling
    solves two triangular systems per pixel. Starts at a random channel permutation (seeded),
    which generalises RealNVP's fixed channel reversal.

    Args:
        shape: event shape :math:`(C, H, W)`.
        seed: seed of the permutation :math:`P`.

    Example:
        >>> t = InvertibleConv1x1((3, 2, 2))
        >>> x = torch.randn(5, 3, 2, 2)
        >>> z, ladj = t.inverse_and_ladj(x)
        >>> torch.allclose(t(z), x, atol=1e-6), ladj.shape
        (True, torch.Size([5]))
    """

    def __init__(self, shape: Sequence[int], seed: int = 0) -> None:
        super().__init__(check_image_shape(shape))
        self.linear = LULinear(self.shape[0], permute=self.shape[0] > 1, seed=seed)

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, ladj = self.linear.inverse_and_ladj(z.movedim(-3, -1))
        return x.movedim(-1, -3), ladj.sum((-2, -1))

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, ladj = self.linear.call_and_ladj(x.movedim(-3, -1))
        return z.movedim(-1, -3), ladj.sum((-2, -1))
