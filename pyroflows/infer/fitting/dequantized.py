r"""A continuous image model as a model of discrete pixel levels, through the dequantisation
bound, so that :func:`~pyroflows.infer.fit` trains it (and its dequantiser) like any density.

For levels :math:`k \in \{0..B-1\}^D`, ``Dequantized(flow, dequantizer)()`` is a distribution
whose ``log_prob(k)`` is the one-sample estimate of the lower bound (see
:mod:`~pyroflows.infer.fitting.dequantization`)

.. math:: \log P(k) \ \ge\ \mathbb{E}_{u \sim q(\cdot \mid k)}\Big[\log p\Big(\frac{k+u}{B}\Big)
          - D \log B - \log q(u \mid k)\Big],

differentiable in the flow and in a variational dequantiser. It is random: evaluate it under a
fixed seed to compare models (``fit`` does so for its validation score).
"""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions import constraints

from .dequantization import UniformDequantizer, discrete_log_likelihood

__all__ = ["Dequantized", "DequantizedDistribution"]


class Dequantized(nn.Module):
    r"""A model of discrete images from a continuous one: the density protocol for levels.

    Args:
        model: a continuous model of images in :math:`[0, 1]^D` (or of their logits with
            ``logit_alpha``), e.g. ``pyroflows.flows.build("glow", (1, 28, 28))``.
        dequantizer: :class:`~pyroflows.infer.fitting.dequantization.UniformDequantizer`
            (default) or ``VariationalDequantizer`` (trained jointly: its parameters are this
            module's too).
        logit_alpha: RealNVP's logit preprocessing constant (its Jacobian is included).

    Attributes: ``event_shape`` and ``context_features`` are the model's.

    Example:
        >>> import pyroflows
        >>> flow = pyroflows.flows.build("glow", (1, 4, 4), levels=1, transforms=1, hidden=(8, 8))
        >>> levels = Dequantized(flow, logit_alpha=0.05)
        >>> levels().log_prob(torch.randint(0, 256, (3, 1, 4, 4))).shape
        torch.Size([3])
    """

    def __init__(
        self,
        model: nn.Module,
        dequantizer: nn.Module | None = None,
        logit_alpha: float | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if logit_alpha is not None and not 0 < logit_alpha < 0.5:
            raise ValueError(f"logit_alpha must lie in (0, 0.5), got {logit_alpha!r}")
        self.model = model
        self.dequantizer = UniformDequantizer() if dequantizer is None else dequantizer
        if not hasattr(self.dequantizer, "bins"):
            raise TypeError("dequantizer must be a UniformDequantizer or VariationalDequantizer")
        self.logit_alpha = logit_alpha
        self.context_features = getattr(model, "context_features", 0)
        shape = getattr(model, "event_shape", None) or getattr(model, "shape", None)
        if shape is not None:
            self.event_shape = torch.Size(shape)

    def forward(self, context: Tensor | None = None) -> DequantizedDistribution:
        """The distribution of the levels given ``context``."""
        base = self.model() if context is None else self.model(context)
        return DequantizedDistribution(base, self.dequantizer, self.logit_alpha)


class DequantizedDistribution(dist.TorchDistribution):
    """Levels :math:`0..B-1` of images whose dequantised values follow ``base``.

    ``log_prob(k)`` is the (random) dequantisation bound per image; ``sample`` draws from the
    continuous model and rounds down to levels.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(
        self, base: dist.TorchDistribution, dequantizer: nn.Module, logit_alpha: float | None
    ) -> None:
        self.base = base
        self.dequantizer = dequantizer
        self.logit_alpha = logit_alpha
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @constraints.dependent_property(is_discrete=True, event_dim=3)
    def support(self) -> constraints.Constraint:
        return constraints.independent(
            constraints.integer_interval(0, self.dequantizer.bins - 1), 3
        )

    def log_prob(self, value: Tensor) -> Tensor:
        return discrete_log_likelihood(
            self.base.log_prob, value, self.dequantizer, self.logit_alpha
        )

    @torch.no_grad()
    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        x = self.base.sample(sample_shape)
        if self.logit_alpha is not None:
            x = (torch.sigmoid(x) - self.logit_alpha) / (1 - 2 * self.logit_alpha)
        bins = self.dequantizer.bins
        return torch.floor(x * bins).clamp(0, bins - 1)

    def expand(self, batch_shape, _instance=None) -> DequantizedDistribution:  # noqa: ANN001
        return DequantizedDistribution(
            self.base.expand(batch_shape), self.dequantizer, self.logit_alpha
        )
