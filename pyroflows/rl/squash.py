r"""The squash onto a box of actions: :math:`a = \ell + s \odot \tanh(u)`.

RL environments take actions in a box :math:`[\text{low}, \text{high}]^d`; a flow lives on
:math:`\mathbb{R}^d`. :class:`TanhSquash` maps one onto the other with

.. math::

    a = \ell + s \odot \tanh(u), \qquad \ell = \tfrac{\text{high} + \text{low}}{2},\quad
    s = \tfrac{\text{high} - \text{low}}{2},

    \log\left|\det \frac{\partial a}{\partial u}\right|
      = \sum_i \Big[\log s_i + 2\big(\log 2 - u_i - \operatorname{softplus}(-2u_i)\big)\Big],

the last term being :math:`\log(1 - \tanh^2 u)` written so that it never under- or overflows
(Haarnoja et al., "Soft Actor-Critic Algorithms and Applications", 2018, https://arxiv.org/abs/1812.05905, appendix C; the
stable form is the one of TensorFlow Probability's ``Tanh`` bijector).

Bounds. In floating point :math:`\tanh(u)` rounds to exactly :math:`\pm 1` once
:math:`|u| \gtrsim 9` (float32) or :math:`\gtrsim 19` (float64), so a sampled action can lie
*on* the bound; it never lies outside (the forward map clamps to ``[low, high]``), and its
log-density, computed from ``u``, stays finite. The inverse clamps
:math:`y = (a - \ell)/s` to :math:`[-1 + \epsilon, 1 - \epsilon]` with :math:`\epsilon` the
machine epsilon of the dtype before taking :math:`\operatorname{atanh}`, so an action exactly
on a bound gets the density of the nearest representable interior point: finite, never NaN.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..transforms.base import Bijection

__all__ = ["TanhSquash", "as_bounds", "log_dtanh"]

_LOG2 = math.log(2.0)


def log_dtanh(u: Tensor) -> Tensor:
    r"""Elementwise :math:`\log(1 - \tanh^2 u) = 2(\log 2 - u - \operatorname{softplus}(-2u))`.

    Exact and finite for every finite ``u`` (about :math:`-2|u|` for large :math:`|u|`).

    Example:
        >>> log_dtanh(torch.tensor([0.0, 50.0, -50.0]))
        tensor([  0.0000, -98.6137, -98.6137])
    """
    return 2.0 * (_LOG2 - u - F.softplus(-2.0 * u))


def as_bounds(
    low: float | Tensor | np.ndarray, high: float | Tensor | np.ndarray, features: int
) -> tuple[Tensor, Tensor]:
    """Check and broadcast action bounds to two float64 tensors of shape ``(features,)``.

    Raises:
        ValueError: bounds that are not finite, do not broadcast to ``(features,)``, or where
            ``low >= high`` in some dimension.
    """
    lo = torch.as_tensor(
        np.asarray(low.detach().cpu() if isinstance(low, Tensor) else low, dtype=np.float64)
    )
    hi = torch.as_tensor(
        np.asarray(high.detach().cpu() if isinstance(high, Tensor) else high, dtype=np.float64)
    )
    try:
        lo, hi = (t.expand(features).clone() if t.dim() <= 1 else t for t in (lo, hi))
    except RuntimeError:
        raise ValueError(
            f"low {tuple(lo.shape)} and high {tuple(hi.shape)} must be scalars or have "
            f"shape ({features},)"
        ) from None
    if lo.shape != (features,) or hi.shape != (features,):
        raise ValueError(
            f"low and high must be scalars or have shape ({features},), got "
            f"{tuple(lo.shape)} and {tuple(hi.shape)}"
        )
    if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError("low and high must be finite (a tanh squash needs a bounded box)")
    bad = (lo >= hi).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"low must be < high in every dimension; not so in dimensions {bad} "
            f"(low={lo[bad].tolist()}, high={hi[bad].tolist()})"
        )
    return lo, hi


class TanhSquash(Bijection):
    r"""Bijection :math:`\mathbb{R}^d \to (\text{low}, \text{high})`, :math:`a = \ell + s\tanh(u)`.

    A pyroflows :class:`~pyroflows.transforms.Bijection` (fast in both directions), so it
    composes with any flow: ``Compose([*flow.transforms, TanhSquash(d, low, high)])``. The
    bounds are buffers: they follow ``.to(device, dtype)`` and are saved in ``state_dict``.

    Args:
        features: action dimension :math:`d`.
        low, high: bounds, scalars or ``(d,)`` arrays with ``low < high`` (ValueError
            otherwise).

    Shapes: ``(..., d) -> (..., d)``; log-determinants ``(...)``. See the module docstring for
    the log-determinant formula and for the clamps at the bounds.

    Example:
        >>> t = TanhSquash(2, low=[-2.0, 0.0], high=[2.0, 1.0])
        >>> a, ladj = t.call_and_ladj(torch.zeros(1, 2))
        >>> a, ladj  # log-det at u = 0: log 2 + log 0.5
        (tensor([[0.0000, 0.5000]]), tensor([0.]))
        >>> u, _ = t.inverse_and_ladj(torch.tensor([[2.0, 1.0]]))  # on the bounds: finite
        >>> u
        tensor([[8.3178, 8.3178]])
    """

    def __init__(
        self, features: int, low: float | Tensor | np.ndarray, high: float | Tensor | np.ndarray
    ) -> None:
        super().__init__(features)
        lo, hi = as_bounds(low, high, features)
        dtype = torch.get_default_dtype()
        self.register_buffer("low", lo.to(dtype))
        self.register_buffer("high", hi.to(dtype))
        self.register_buffer("loc", ((hi + lo) / 2).to(dtype))
        self.register_buffer("scale", ((hi - lo) / 2).to(dtype))

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        a = self.loc + self.scale * torch.tanh(z)
        a = torch.minimum(torch.maximum(a, self.low), self.high)  # rounding never leaves the box
        ladj = (self.scale.log() + log_dtanh(z)).sum(-1)
        return a, ladj

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        limit = 1.0 - torch.finfo(x.dtype).eps
        y = ((x - self.loc) / self.scale).clamp(-limit, limit)
        u = torch.atanh(y)
        return u, -(self.scale.log() + log_dtanh(u)).sum(-1)

    def extra_repr(self) -> str:
        return f"features={self.features}, low={self.low.tolist()}, high={self.high.tolist()}"
