r"""Flows over images: :class:`ImageFlow` is a :class:`~pyroflows.Flow` whose event shape is
:math:`(C, H, W)`, with a standard normal base of its noise-side shape.

.. math:: \log p(x \mid c) = \log \mathcal{N}\big(T^{-1}(x; c); 0, I\big)
          + \log\left|\det \frac{\partial T^{-1}}{\partial x}\right|,

the log-determinant summed over all :math:`CHW` values. ``flow(context).log_prob(x)`` maps
``(..., C, H, W)`` to ``(...)``, and ``sample((n,))`` returns ``(n, *batch, C, H, W)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions import constraints

from ..checks import check_context
from ..core import Flow, FlowDistribution, StandardNormal
from ..transforms.base import Bijection
from ..transforms.image import ImageCompose, check_image, check_shape

__all__ = ["ImageFlow", "ImageFlowDistribution"]


class ImageFlowDistribution(FlowDistribution):
    """A :class:`~pyroflows.core.FlowDistribution` with event shape ``(C, H, W)``.

    Args:
        base: base distribution whose event shape is the transform's noise-side shape.
        transform: an image bijection or its conditioned view.
        shape: the data-side event shape.
    """

    support = constraints.independent(constraints.real, 3)

    def __init__(self, base: dist.TorchDistribution, transform, shape: Sequence[int],  # noqa: ANN001
                 validate_args=None) -> None:  # noqa: ANN001
        self.transform = transform
        self.features = transform.features
        self.shape = check_shape(shape)
        if math.prod(base.event_shape) != math.prod(self.shape):
            raise ValueError(f"the base has event shape {tuple(base.event_shape)}; the flow's is {self.shape}")
        self.base_dist = base
        self.transforms = [transform]
        torch.distributions.Distribution.__init__(self, base.batch_shape, torch.Size(self.shape),
                                                  validate_args=validate_args)

    def _check(self, x: Tensor) -> None:
        check_image(x, self.shape, "value")

    def expand(self, batch_shape, _instance=None) -> ImageFlowDistribution:  # noqa: ANN001
        return ImageFlowDistribution(self.base_dist.expand(torch.Size(batch_shape)), self.transform, self.shape)


class ImageFlow(Flow):
    r"""A normalizing flow over images: a standard normal base and image bijections.

    Args:
        transforms: image bijections listed from the base side to the data side; each one's
            ``shape`` is the next one's ``base_shape``.

    ``flow.shape`` is the data's event shape :math:`(C, H, W)`, ``flow.features`` the number of
    values :math:`CHW`. Conditional flows take a context vector ``(..., c)``.

    Example:
        >>> import pyroflows
        >>> flow = pyroflows.flows.build("glow", (1, 4, 4), levels=2, transforms=1, hidden=(8, 8))
        >>> d = flow()
        >>> d.event_shape, d.sample((3,)).shape, d.log_prob(torch.randn(3, 1, 4, 4)).shape
        (torch.Size([1, 4, 4]), torch.Size([3, 1, 4, 4]), torch.Size([3]))
    """

    def __init__(self, transforms: Sequence[Bijection]) -> None:
        nn.Module.__init__(self)
        self.bijection = ImageCompose(transforms)
        self.features = self.bijection.features
        self.context_features = self.bijection.context_features
        self.shape = self.bijection.shape
        self.base = StandardNormal(self.bijection.base_shape)
        self.config: dict | None = None

    def forward(self, context: Tensor | None = None) -> ImageFlowDistribution:
        """The distribution :math:`p(x \\mid c)` over ``(C, H, W)`` images."""
        check_context(context, self.context_features)
        batch_shape = torch.Size() if context is None else context.shape[:-1]
        return ImageFlowDistribution(self.base(batch_shape), self.transform(context), self.shape)

    def extra_repr(self) -> str:
        text = f"shape={self.shape}"
        if self.context_features:
            text += f", context={self.context_features}"
        return text
