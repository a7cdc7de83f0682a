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

from .checks import (
    as_sample_shape,
    check_allocation,
    check_batch,
    check_context,
    check_dtype,
    check_event,
    check_finite,
    check_not_nan,
    validates,
)
from .nn.transaction import Transactional, transaction
from .transforms.base import Bijection, Compose
from .transforms.conventions import real_events

__all__ = [
    "Flow",
    "FlowDistribution",
    "StandardNormal",
    "StandardNormalDistribution",
    "Transactional",
    "transaction",
]


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
        check_allocation(shape, self.zeros.dtype, self.zeros.device)
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

    def __init__(
        self,
        base: dist.TorchDistribution,
        transform,  # noqa: ANN001
        validate_args: bool | None = None,
        *,
        support: constraints.Constraint | None = None,
    ) -> None:
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
        self._support = support
        # Pyro's public switch (pyro.enable_validation) unless the caller says otherwise.
        self.validates = validates(validate_args)
        torch.distributions.Distribution.__init__(
            self, base.batch_shape, torch.Size(transform.shape), validate_args=validate_args
        )

    @property
    def support(self) -> constraints.Constraint:  # type: ignore[override]
        """The data's support: all real events, or what the flow was built with (the unit
        cube ``independent(unit_interval, 1)`` for a destructor on the cube)."""
        return real_events(len(self.event_shape)) if self._support is None else self._support

    @property
    def dtype(self) -> torch.dtype | None:
        """The dtype the flow computes in (its base's), or ``None`` when the base does not say."""
        try:
            return self.base_dist.mean.dtype
        except (NotImplementedError, AttributeError, RuntimeError):
            return None

    def _check(self, x: Tensor) -> None:
        check_event(x, self.event_shape, "value")
        check_dtype(x, self.dtype, "value")
        check_batch(x.shape[: x.dim() - len(self.event_shape)], self.batch_shape, "value")
        if self.validates:
            check_not_nan(x, "value")

    def log_prob(self, value: Tensor) -> Tensor:
        r""":math:`\log p(x)`; shape ``value.shape[:-len(event_shape)]`` broadcast with the batch
        shape; ``-inf`` outside the flow's :attr:`support`.

        Raises TypeError for a value whose dtype is not the flow's, ValueError for a wrong event
        shape, batch dimensions that do not broadcast with the batch shape or (under
        ``pyro.enable_validation``, Pyro's default) NaN values.
        """
        self._check(value)
        # An infinite entry: the density vanishes there (-inf), evaluated at a finite stand-in
        # (static shapes; the transforms would give NaN at inf).
        infinite = torch.isinf(value)
        at_infinity = infinite.flatten(value.dim() - len(self.event_shape)).any(-1)
        value = torch.where(infinite, torch.zeros_like(value), value)
        if self._support is None:
            z, ladj = self.transform.inverse_and_ladj(value)
            log_prob = self.base_dist.log_prob(z) + ladj
            return torch.where(at_infinity, torch.full_like(log_prob, -torch.inf), log_prob)
        # Evaluate at a point of the support (static shapes, finite gradients), then mask.
        inside = self._support.check(value) & ~at_infinity
        if getattr(self._support, "base_constraint", self._support) is constraints.unit_interval:
            value = value.clamp(0, 1)
        z, ladj = self.transform.inverse_and_ladj(value)
        log_prob = self.base_dist.log_prob(z) + ladj
        return torch.where(inside, log_prob, torch.full_like(log_prob, -torch.inf))

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        """Reparametrised samples ``sample_shape + batch_shape + event_shape`` (an int ``n``
        means ``(n,)``)."""
        return self.rsample_and_log_prob(sample_shape)[0]

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        """Samples without gradient; ``sample_shape`` as in :meth:`rsample`."""
        with torch.no_grad():
            return self.rsample(sample_shape)

    def rsample_and_log_prob(
        self, sample_shape: torch.Size = torch.Size()
    ) -> tuple[Tensor, Tensor]:
        """Reparametrised samples and their log-density from one forward pass.

        Returns ``(x, log_prob)`` with shapes ``sample_shape + batch_shape + event_shape``
        and ``sample_shape + batch_shape``. An int ``n`` means ``(n,)``; anything but ints
        raises TypeError.
        """
        z = self.base_dist.rsample(as_sample_shape(sample_shape))
        x, ladj = self.transform.call_and_ladj(z)
        return x, self.base_dist.log_prob(z) - ladj

    def expand(self, batch_shape, _instance=None) -> FlowDistribution:  # noqa: ANN001
        # The transform broadcasts over batch dims, so only the base needs expanding; this is
        # what pyro.plate calls on a flow used as a prior inside a plate.
        return FlowDistribution(
            self.base_dist.expand(torch.Size(batch_shape)),
            self.transform,
            self.validates,
            support=self._support,
        )


class Flow(Transactional, nn.Module):
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
        support: the data's support when narrower than all real events (a destructor's flow
            on the cube has ``independent(unit_interval, 1)``): ``log_prob`` is ``-inf``
            outside it.

    Attributes: ``event_shape`` (``torch.Size``, the data's event shape), ``features`` (its
    number of values), ``context_features`` (``0`` when unconditional); a flow meets the
    :class:`~pyroflows.protocol.DensityModel` protocol.

    ``load_state_dict`` is transactional (:class:`Transactional`): it loads everything or
    raises and leaves the flow as it was. ``log_prob`` refuses a value of another dtype
    (TypeError naming both; :func:`~pyroflows.infer.fit` converts data for you) and, under
    ``pyro.enable_validation`` (Pyro's default), NaN in the value or the context (ValueError).

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

    def __init__(
        self,
        transforms: Sequence[Bijection],
        base: nn.Module | None = None,
        support: constraints.Constraint | None = None,
    ) -> None:
        super().__init__()
        self.bijection = Compose(transforms)
        self.event_shape = torch.Size(self.bijection.shape)
        self.features = self.bijection.features
        self.context_features = self.bijection.context_features
        self.base = StandardNormal(self.bijection.base_shape) if base is None else base
        self.support = support
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
        one, or (under ``pyro.enable_validation``, Pyro's default) a context with NaN values;
        TypeError for a context whose dtype is not the flow's.
        """
        check_context(context, self.context_features)
        batch_shape = torch.Size() if context is None else context.shape[:-1]
        distribution = FlowDistribution(
            self.base(batch_shape),
            self.transform(context),
            support=getattr(self, "support", None),
        )
        if context is not None:
            check_dtype(context, distribution.dtype, "context")
            if distribution.validates:
                check_finite(context, "context")
        return distribution

    def extra_repr(self) -> str:
        shape = tuple(self.event_shape)
        text = f"features={self.features}" if len(shape) == 1 else f"shape={shape}"
        if self.context_features:
            text += f", context={self.context_features}"
        return text
