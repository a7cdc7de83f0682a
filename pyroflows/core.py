r"""The flow abstraction: :class:`Flow` (a module) builds :class:`FlowDistribution` (a Pyro
distribution) for a given context, over any event shape (vectors ``(D,)``, images ``(C, H, W)``).

A normalizing flow is :math:`x = T(z; c)` with :math:`z \sim p_Z`, whose density is

.. math:: \log p(x \mid c) = \log p_Z(T^{-1}(x; c)) + \log\left|\det \frac{\partial T^{-1}}{\partial x}\right|,

the log-determinant summed over the event's values. A :class:`Flow` meets the
:class:`~pyroflows.protocol.DensityModel` protocol.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions import constraints

from .checks import check_context, check_event
from .transforms.base import Bijection, Compose, real_events

__all__ = ["Flow", "FlowDistribution", "StandardNormal", "StandardNormalDistribution"]


class StandardNormalDistribution(dist.TorchDistribution):
    r""":math:`\mathcal{N}(0, I)` over vectors :math:`(d,)` or images :math:`(C, H, W)`, with a
    batch shape and a lean ``log_prob`` :math:`-\tfrac12\lVert z \rVert^2 - \tfrac n2 \log 2\pi`
    (:math:`n` values per event; a third of the cost of ``Normal(0, 1).to_event(1)``, which
    matters on a flow's hot path).

    Args:
        zeros: a tensor of zeros of the event shape that carries the device and dtype.
        batch_shape: the batch shape.
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, zeros: Tensor, batch_shape: torch.Size = torch.Size()) -> None:
        self.zeros = zeros
        self._event_dims = tuple(range(-zeros.dim(), 0))
        self._log_normalizer = 0.5 * zeros.numel() * math.log(2 * math.pi)
        super().__init__(torch.Size(batch_shape), zeros.shape, validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        return real_events(self.zeros.dim())

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        return torch.randn(shape, dtype=self.zeros.dtype, device=self.zeros.device)

    def log_prob(self, value: Tensor) -> Tensor:
        log_prob = -0.5 * value.square().sum(self._event_dims) - self._log_normalizer
        if len(self.batch_shape):
            log_prob = log_prob.expand(torch.broadcast_shapes(log_prob.shape, self.batch_shape))
        return log_prob

    def expand(self, batch_shape, _instance=None) -> StandardNormalDistribution:  # noqa: ANN001
        return StandardNormalDistribution(self.zeros, torch.Size(batch_shape))

    @property
    def mean(self) -> Tensor:
        return self.zeros.expand(self.batch_shape + self.event_shape)

    @property
    def variance(self) -> Tensor:
        return torch.ones_like(self.zeros).expand(self.batch_shape + self.event_shape)

    def entropy(self) -> Tensor:
        value = self._log_normalizer + 0.5 * self.zeros.numel()
        return self.zeros.new_full(self.batch_shape, value)


class StandardNormal(nn.Module):
    r"""Lazy standard normal base :math:`\mathcal{N}(0, I)` over ``features`` values (an int)
    or an event shape such as ``(C, H, W)``, that follows the module's device and dtype
    (through a ``zeros`` buffer)."""

    def __init__(self, features: int | Sequence[int]) -> None:
        super().__init__()
        shape = (features,) if isinstance(features, int) else tuple(features)
        self.features = math.prod(shape)
        self.shape = shape
        self.register_buffer("zeros", torch.zeros(shape))

    def forward(self, batch_shape: torch.Size = torch.Size()) -> StandardNormalDistribution:
        return StandardNormalDistribution(self.zeros, batch_shape)


class FlowDistribution(dist.TransformedDistribution):
    r"""A Pyro distribution :math:`p(x \mid c)` defined by a base and a (conditioned) bijection.

    Unlike a plain ``TransformedDistribution``, density evaluation makes one call to
    ``inverse_and_ladj`` and sampling one call to ``call_and_ladj``, so a MAF's ``log_prob``
    or an IAF's ``rsample_and_log_prob`` is a single network pass and nothing depends on a
    cache. The batch shape is the context's batch shape (``()`` without context); the event
    shape is the transform's data-side ``shape`` (``(d,)`` or ``(C, H, W)``).

    Args:
        base: base distribution with event shape the transform's ``base_shape``.
        transform: a :class:`~pyroflows.transforms.Bijection` or its conditioned view.

    Example:
        >>> from pyroflows.transforms import Squeeze
        >>> d = FlowDistribution(StandardNormal((4, 1, 1))(), Squeeze((1, 2, 2)))
        >>> d.event_shape, d.log_prob(torch.zeros(3, 1, 2, 2)).shape
        (torch.Size([1, 2, 2]), torch.Size([3]))
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, base: dist.TorchDistribution, transform, validate_args=None) -> None:  # noqa: ANN001
        self.transform = transform
        self.features = transform.features
        if tuple(base.event_shape) != tuple(transform.base_shape):
            raise ValueError(
                f"the base has event shape {tuple(base.event_shape)}; the transform needs "
                f"{tuple(transform.base_shape)}"
            )
        # TransformedDistribution.__init__ re-derives shapes through ComposeTransform on every
        # call (a third of the cost of flow() for a small model); ours are known, so set the
        # same attributes directly.
        self.base_dist = base
        self.transforms = [transform]
        torch.distributions.Distribution.__init__(
            self, base.batch_shape, torch.Size(transform.shape), validate_args=validate_args
        )

    @property
    def support(self) -> constraints.Constraint:  # type: ignore[override]
        return real_events(len(self.event_shape))

    def _check(self, x: Tensor) -> None:
        check_event(x, self.event_shape, "value")

    def log_prob(self, value: Tensor) -> Tensor:
        """:math:`\\log p(x)`; shape ``value.shape[:-len(event_shape)]`` broadcast with the batch
        shape."""
        self._check(value)
        z, ladj = self.transform.inverse_and_ladj(value)
        return self.base_dist.log_prob(z) + ladj

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return self.rsample_and_log_prob(sample_shape)[0]

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def rsample_and_log_prob(
        self, sample_shape: torch.Size = torch.Size()
    ) -> tuple[Tensor, Tensor]:
        """Reparametrised samples and their log-density from one forward pass.

        Returns ``(x, log_prob)`` with shapes ``sample_shape + batch_shape + event_shape``
        and ``sample_shape + batch_shape``.
        """
        z = self.base_dist.rsample(sample_shape)
        x, ladj = self.transform.call_and_ladj(z)
        return x, self.base_dist.log_prob(z) - ladj

    def expand(self, batch_shape, _instance=None) -> FlowDistribution:  # noqa: ANN001
        # The transform broadcasts over batch dims, so only the base needs expanding; this is
        # what pyro.plate calls on a flow used as a prior inside a plate.
        return FlowDistribution(self.base_dist.expand(torch.Size(batch_shape)), self.transform)


class Flow(nn.Module):
    r"""A normalizing flow: a base distribution and a stack of bijections, as a module, over
    any event shape.

    ``flow(context)`` returns a :class:`FlowDistribution` (a Pyro distribution) and
    ``flow.transform(context)`` the composed transform; the flow itself holds the parameters,
    so it trains like any ``nn.Module`` and moves with ``.to(device, dtype)``.

    Args:
        transforms: bijections listed from the base side to the data side
            (:math:`x = T_n \circ \dots \circ T_1(z)`); each one's ``shape`` is the next
            one's ``base_shape``.
        base: a module returning the base distribution given a batch shape; default
            :class:`StandardNormal` over the first bijection's ``base_shape``.

    Attributes: ``event_shape`` (``torch.Size``, the data's event shape), ``features`` (its
    number of values), ``context_features`` (``0`` when unconditional); a flow meets the
    :class:`~pyroflows.protocol.DensityModel` protocol.

    Shapes: without context, ``flow().log_prob(x)`` maps ``(..., *event_shape)`` to ``(...)``.
    With a context of shape (B, c), ``flow(c)`` has batch shape (B,), ``log_prob`` takes
    ``(..., B, *event_shape)`` and ``sample((n,))`` returns ``(n, B, *event_shape)``.

    Example:
        >>> import pyroflows
        >>> flow = pyroflows.flows.build("maf", features=2, context=1)
        >>> d = flow(torch.zeros(5, 1))
        >>> d.sample((3,)).shape, d.log_prob(torch.zeros(5, 2)).shape
        (torch.Size([3, 5, 2]), torch.Size([5]))
        >>> images = pyroflows.flows.build("glow", (1, 4, 4), levels=2, transforms=1, hidden=(8,))
        >>> images.event_shape, images().log_prob(torch.randn(3, 1, 4, 4)).shape
        (torch.Size([1, 4, 4]), torch.Size([3]))
    """

    def __init__(self, transforms: Sequence[Bijection], base: nn.Module | None = None) -> None:
        super().__init__()
        self.bijection = Compose(transforms)
        self.event_shape = torch.Size(self.bijection.shape)
        self.features = self.bijection.features
        self.context_features = self.bijection.context_features
        self.base = StandardNormal(self.bijection.base_shape) if base is None else base
        self.config: dict | None = None

    @property
    def transforms(self) -> nn.ModuleList:
        """The bijections, base side first."""
        return self.bijection.parts

    def transform(self, context: Tensor | None = None):  # noqa: ANN201
        """The composed transform, conditioned on ``context`` when the flow is conditional."""
        return self.bijection.condition(context)

    def forward(self, context: Tensor | None = None) -> FlowDistribution:
        """The distribution :math:`p(x \\mid c)`; call the flow, ``flow(context)``, rather than this.

        Raises ValueError when a conditional flow gets no context, or an unconditional one gets
        one.
        """
        check_context(context, self.context_features)
        batch_shape = torch.Size() if context is None else context.shape[:-1]
        return FlowDistribution(self.base(batch_shape), self.transform(context))

    def extra_repr(self) -> str:
        shape = tuple(self.event_shape)
        text = f"features={self.features}" if len(shape) == 1 else f"shape={shape}"
        if self.context_features:
            text += f", context={self.context_features}"
        return text
