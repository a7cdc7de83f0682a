r"""Dequantisation: continuous flows as models of discrete images, and the likelihood bound
reported in bits per dimension.

Pixel values :math:`k \in \{0, \dots, B-1\}^D` (:math:`B = 256` bins) are discrete; a flow has a
density :math:`p` on :math:`x \in [0, 1]^D`. The model of :math:`k` is the mass of its cell,

.. math:: P(k) = \int_{[0,1)^D} p\Big(\frac{k + u}{B}\Big) B^{-D}\,du,

and for any density :math:`q(u \mid k)` on :math:`[0, 1)^D` (Jensen's inequality; Theis et al.
2016, Ho et al. 2019, https://arxiv.org/abs/1902.00275)

.. math:: \log P(k) \ \ge\ \mathbb{E}_{u \sim q(\cdot \mid k)}\Big[\log p\Big(\frac{k+u}{B}\Big)
          - D \log B - \log q(u \mid k)\Big].

* **Uniform dequantisation** (RealNVP, Glow): :math:`q = U(0,1)^D`, :math:`\log q = 0`.
* **Variational dequantisation** (Flow++, Ho, Chen, Srinivas, Duan & Abbeel, ICML 2019):
  :math:`q(u \mid k)` is itself a flow conditioned on :math:`k`, :math:`u = \sigma(g(\epsilon; k))`
  with :math:`\epsilon \sim \mathcal{N}(0, I)`, trained jointly with :math:`p` by maximising the
  bound; the gap is :math:`\mathrm{KL}(q(u\mid k) \,\|\, p(u \mid k))`, so a better :math:`q`
  gives a tighter bound on the same model.

Bits per dimension are :math:`-\log_2 P(k) / D`; from the bound they are an upper bound.

This is inference (a variational bound and its noise model), not a bijection of the data, so
it lives here rather than among the transforms; the flows it trains are ordinary
:class:`~pyroflows.Flow` s over ``(C, H, W)`` events, and ``logit_alpha`` optionally inserts
RealNVP's logit preprocessing :math:`y = \operatorname{logit}(\alpha + (1 - 2\alpha)x)` with its Jacobian.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...checks import check_event
from ...transforms.base import Compose
from ...transforms.conventions import check_image_shape
from ...transforms.elementwise import AffineMap
from ...transforms.image_coupling import ImageCoupling

__all__ = [
    "UniformDequantizer",
    "VariationalDequantizer",
    "discrete_bits_per_dim",
    "discrete_log_likelihood",
    "logit",
]


def _check_bins(bins: int) -> int:
    if not isinstance(bins, int) or isinstance(bins, bool) or bins < 2:
        raise ValueError(f"bins must be an integer >= 2, got {bins!r}")
    return bins


class UniformDequantizer(nn.Module):
    r"""Uniform noise :math:`u \sim U(0, 1)^D`, :math:`\log q(u \mid k) = 0`.

    Args:
        bins: number of levels :math:`B` of the discrete data.

    ``dequantizer(k)`` returns ``(u, log_q)`` with ``u`` shaped like ``k`` and ``log_q`` of
    shape ``k.shape[:-3]``.

    Example:
        >>> u, log_q = UniformDequantizer()(torch.zeros(2, 1, 3, 3))
        >>> u.shape, log_q.tolist()
        (torch.Size([2, 1, 3, 3]), [0.0, 0.0])
    """

    def __init__(self, bins: int = 256) -> None:
        super().__init__()
        self.bins = _check_bins(bins)

    def forward(self, k: Tensor) -> tuple[Tensor, Tensor]:
        dtype = k.dtype if k.is_floating_point() else torch.get_default_dtype()
        u = torch.rand(k.shape, dtype=dtype, device=k.device)
        return u, u.new_zeros(k.shape[:-3])


class VariationalDequantizer(nn.Module):
    r"""Flow++'s variational dequantisation noise :math:`q(u \mid k)` on :math:`(0, 1)^{C\times H\times W}`.

    :math:`u = \sigma(g(\epsilon; k))`, :math:`\epsilon \sim \mathcal{N}(0, I)`, with :math:`g` a
    stack of checkerboard affine :class:`~pyroflows.transforms.ImageCoupling` s whose
    conditioners see :math:`k` (scaled to :math:`[-1, 1]`) as extra input channels, so

    .. math:: \log q(u \mid k) = \log \mathcal{N}(\epsilon) - \log\left|\det \frac{\partial g}{\partial \epsilon}\right|
              - \sum_i \log \sigma'(g_i).

    Args:
        shape: image shape :math:`(C, H, W)` (at least 2 pixels).
        bins: number of levels :math:`B`.
        transforms: number of couplings (parities alternate).
        hidden: conditioner widths (Glow's conv network).

    Example:
        >>> q = VariationalDequantizer((1, 4, 4), transforms=2, hidden=(8, 8))
        >>> u, log_q = q(torch.randint(0, 256, (3, 1, 4, 4)))
        >>> bool(((u > 0) & (u < 1)).all()), log_q.shape
        (True, torch.Size([3]))
    """

    def __init__(
        self,
        shape: Sequence[int],
        bins: int = 256,
        transforms: int = 4,
        hidden: Sequence[int] = (32, 32),
    ) -> None:
        super().__init__()
        self.shape = check_image_shape(shape)
        self.bins = _check_bins(bins)
        if not isinstance(transforms, int) or isinstance(transforms, bool) or transforms < 1:
            raise ValueError(f"transforms must be a positive integer, got {transforms!r}")
        channels = self.shape[0]
        self.flow = Compose(
            [
                ImageCoupling(
                    self.shape,
                    AffineMap(),
                    "checkerboard",
                    i % 2,
                    context=channels,
                    spatial_context=True,
                    hidden=tuple(hidden),
                    conditioner="glow",
                )
                for i in range(transforms)
            ]
        )

    def sample_with_noise(self, k: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """``(u, log q(u | k))`` for given standard normal noise ``eps`` (shaped like ``k``)."""
        check_event(k, self.shape, "k")
        context = k.to(eps.dtype) * (2 / (self.bins - 1)) - 1
        h, ladj = self.flow.call_and_ladj(eps, context)
        log_normal = -0.5 * eps.square().sum((-3, -2, -1)) - 0.5 * eps[0].numel() * math.log(
            2 * math.pi
        )
        # log sigma'(h) = log sigma(h) + log sigma(-h) = -softplus(-h) - softplus(h)
        log_dsigmoid = -(F.softplus(-h) + F.softplus(h)).sum((-3, -2, -1))
        return torch.sigmoid(h), log_normal - ladj - log_dsigmoid

    def forward(self, k: Tensor) -> tuple[Tensor, Tensor]:
        dtype = next(self.parameters()).dtype
        eps = torch.randn(k.shape, dtype=dtype, device=k.device)
        return self.sample_with_noise(k, eps)


def logit(x: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    r""":math:`y = \operatorname{logit}(\alpha + (1 - 2\alpha)x)` elementwise and
    :math:`\log|\det \partial y/\partial x|` summed over the image dims ``(-3, -2, -1)``."""
    if not 0 < alpha < 0.5:
        # alpha = 0 maps a pixel at exactly 0 (k = 0 with noise 0) to logit(0) = -inf.
        raise ValueError(f"alpha must lie in (0, 0.5), got {alpha!r}")
    s = alpha + (1 - 2 * alpha) * x
    y = torch.log(s) - torch.log1p(-s)
    ladj = (math.log(1 - 2 * alpha) - torch.log(s) - torch.log1p(-s)).sum((-3, -2, -1))
    return y, ladj


def discrete_log_likelihood(
    log_prob: Callable[[Tensor], Tensor],
    k: Tensor,
    dequantizer: nn.Module,
    logit_alpha: float | None = None,
) -> Tensor:
    r"""One-sample estimate of the lower bound on :math:`\log P(k)` (nats, per image; see the
    module docstring), differentiable in the model and in the dequantiser.

    Args:
        log_prob: the continuous model's log-density, e.g. ``flow().log_prob`` (of :math:`x`
            in :math:`[0,1]^D`, or of :math:`y = \operatorname{logit}(\cdot)` with ``logit_alpha``).
        k: integer-valued images ``(..., C, H, W)`` in ``0..bins-1`` (any dtype).
        dequantizer: :class:`UniformDequantizer` or :class:`VariationalDequantizer`.
        logit_alpha: when given, the model is of the logit-transformed values and the logit's
            Jacobian is added.

    Returns:
        ``(...)`` tensor; its mean over images (and noise draws) is :math:`\le` the mean
        :math:`\log P(k)`. :func:`discrete_bits_per_dim` converts it.

    Example:
        >>> import pyroflows
        >>> flow = pyroflows.flows.build("glow", (1, 4, 4), levels=1, transforms=1, hidden=(8, 8))
        >>> k = torch.randint(0, 256, (6, 1, 4, 4))
        >>> ll = discrete_log_likelihood(flow().log_prob, k, UniformDequantizer(), logit_alpha=0.05)
        >>> ll.shape, bool(discrete_bits_per_dim(ll.mean(), 16) > 0)
        (torch.Size([6]), True)
    """
    if not hasattr(dequantizer, "bins"):
        raise TypeError("dequantizer must be a UniformDequantizer or VariationalDequantizer")
    if k.dim() < 3:
        raise ValueError(f"k must be images (..., C, H, W), got shape {tuple(k.shape)}")
    bins = dequantizer.bins
    if ((k < 0) | (k > bins - 1) | (k != k.round())).any():
        raise ValueError(
            f"k must hold integers 0..{bins - 1} (the raw levels, not images scaled to [0, 1])"
        )
    u, log_q = dequantizer(k)
    x = (k.to(u.dtype) + u) / bins
    dims = x.shape[-3] * x.shape[-2] * x.shape[-1]
    if logit_alpha is None:
        log_px = log_prob(x)
    else:
        y, ladj = logit(x, logit_alpha)
        log_px = log_prob(y) + ladj
    return log_px - dims * math.log(bins) - log_q


def discrete_bits_per_dim(log_likelihood: Tensor | float, dims: int) -> float:
    r"""Bits per dimension :math:`-\log_2 P(k) / D` from a log-likelihood (nats) of discrete data.

    Example:
        >>> round(discrete_bits_per_dim(-784 * math.log(256), 784), 6)  # a uniform model of 8-bit pixels
        8.0
    """
    if not isinstance(dims, int) or dims < 1:
        raise ValueError(f"dims must be a positive integer, got {dims!r}")
    return -float(torch.as_tensor(log_likelihood).detach().double().mean()) / (dims * math.log(2))
