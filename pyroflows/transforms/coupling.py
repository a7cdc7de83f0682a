"""Coupling layers (NICE, RealNVP, neural spline coupling): half the features condition an
elementwise map of the other half, so both directions are a single pass."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..nn import MLP, ResidualMLP
from .base import Bijection
from .elementwise import ElementwiseMap

__all__ = ["Coupling", "alternating_mask", "checkerboard_mask"]


def alternating_mask(features: int, parity: int = 0) -> Tensor:
    """Boolean mask ``[True, False, True, ...]`` (``parity=0``) or its complement (``parity=1``).

    ``True`` marks the features that pass through unchanged and condition the others.
    """
    return torch.arange(features) % 2 == parity % 2


def checkerboard_mask(height: int, width: int, parity: int = 0) -> Tensor:
    r"""Boolean ``(height, width)`` checkerboard, ``True`` where :math:`(i + j + \text{parity})`
    is even: :func:`alternating_mask` in two dimensions (RealNVP's spatial mask for
    :class:`~pyroflows.transforms.ImageCoupling`: ``True`` pixels pass unchanged and condition
    the others).

    Example:
        >>> checkerboard_mask(2, 3).int()
        tensor([[1, 0, 1],
                [0, 1, 0]], dtype=torch.int32)
    """
    i = torch.arange(height).unsqueeze(1)
    j = torch.arange(width).unsqueeze(0)
    return (i + j + parity) % 2 == 0


class Coupling(Bijection):
    r"""Coupling layer (Dinh et al. 2014, https://arxiv.org/abs/1410.8516, 2017): with :math:`A` the masked features and
    :math:`B` the rest,

    .. math::
        x_A = z_A, \qquad x_B = \tau(z_B;\ \theta(z_A, c)), \qquad
        \log|\det J| = \sum_{i \in B} \log \tau'(z_i).

    The inverse is the same single pass with :math:`\tau^{-1}`, because :math:`\theta` only
    sees the unchanged half. Fast in both directions.

    Args:
        features: event size (at least 2).
        map: the elementwise map :math:`\tau` (:class:`AdditiveMap`, :class:`AffineMap`,
            :class:`SplineMap`, ...).
        mask: boolean (features,), ``True`` for the conditioning half :math:`A`; default
            :func:`alternating_mask`.
        context: context size (fed to the conditioner).
        hidden: conditioner widths.
        conditioner: ``"mlp"`` or ``"resnet"`` (:class:`~pyroflows.nn.ResidualMLP`).
        activation: non-linearity name.

    Example:
        >>> from pyroflows.transforms import AffineMap
        >>> t = Coupling(4, AffineMap(), context=2)
        >>> x, ladj = t.call_and_ladj(torch.randn(8, 4), torch.randn(8, 2))
        >>> x.shape, ladj.shape
        (torch.Size([8, 4]), torch.Size([8]))
    """

    def __init__(
        self,
        features: int,
        map: ElementwiseMap,
        mask: Sequence[bool] | Tensor | None = None,
        context: int = 0,
        hidden: Sequence[int] = (64, 64),
        conditioner: str = "mlp",
        activation: str = "relu",
    ) -> None:
        super().__init__(features, context)
        if features < 2:
            raise ValueError(
                "a coupling layer needs at least 2 features; use an autoregressive "
                "or elementwise layer for 1-D data"
            )
        mask = (
            alternating_mask(features) if mask is None else torch.as_tensor(mask, dtype=torch.bool)
        )
        if mask.shape != (features,) or mask.all() or not mask.any():
            raise ValueError(
                f"mask must be a boolean vector of {features} with both True and False entries"
            )
        identity = mask.nonzero().flatten()
        transformed = (~mask).nonzero().flatten()
        self.register_buffer("identity_index", identity)
        self.register_buffer("transformed_index", transformed)
        self.register_buffer("merge_index", torch.argsort(torch.cat([identity, transformed])))
        nets = {"mlp": MLP, "resnet": ResidualMLP}
        if conditioner not in nets:
            raise ValueError(f"conditioner must be one of {sorted(nets)}, got {conditioner!r}")
        self.map = map
        self.conditioner = nets[conditioner](
            len(identity), len(transformed) * map.num_params, hidden, context, activation
        )

    def _couple(self, u: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        u_a = u.index_select(-1, self.identity_index)
        u_b = u.index_select(-1, self.transformed_index)
        params = self.conditioner(u_a, context).unflatten(-1, (u_b.shape[-1], self.map.num_params))
        v_b, ladj = (self.map.inverse if inverse else self.map)(u_b, params)
        u_a = u_a.expand(*v_b.shape[:-1], u_a.shape[-1])
        return torch.cat([u_a, v_b], dim=-1).index_select(-1, self.merge_index), ladj.sum(-1)

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(z, context, inverse=False)

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(x, context, inverse=True)
