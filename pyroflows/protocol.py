r"""The one protocol every pyroflows model meets: a module whose call with an optional context
returns a Pyro distribution :math:`p(x \mid c)`.

Flows (vectors and images), the autoregressive density models (MADE, NADE, RNADE, ...),
PixelCNN and destructors' flows (``Destructor.as_flow()``) all meet it, so inference code
(fitting, guides, sampling) takes any of them. The distribution ``model(context)`` has

* batch shape ``context.shape[:-1]`` (``()`` without context) and event shape
  ``model.event_shape``;
* ``log_prob(x)``: :math:`\log p(x \mid c)`, ``(..., *batch, *event) -> (..., *batch)``;
* ``sample(sample_shape)``: ``sample_shape + batch_shape + event_shape``;
* when ``has_rsample``: ``rsample(sample_shape)`` and ``rsample_and_log_prob(sample_shape)``,
  reparametrised samples and their log-density from one pass.

Example:
    >>> import pyroflows
    >>> isinstance(pyroflows.flows.build("maf", 2), DensityModel)
    True
    >>> isinstance(pyroflows.density.build("made", 2), DensityModel)
    True
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor
from torch.distributions import Distribution

__all__ = ["DensityModel"]


@runtime_checkable
class DensityModel(Protocol):
    """A model whose call ``model(context=None)`` returns a Pyro distribution over events of
    shape ``event_shape`` (see the module docstring for the shapes).

    Attributes:
        event_shape: the event shape, ``(d,)`` for vectors or ``(C, H, W)`` for images.
        context_features: size of the context vector; ``0`` for an unconditional model, which
            is called with no context.

    ``isinstance(model, DensityModel)`` checks that the attributes and the call exist (not
    their types).
    """

    event_shape: torch.Size
    context_features: int

    def __call__(self, context: Tensor | None = None) -> Distribution:
        """The distribution :math:`p(x \\mid c)`: a Pyro distribution (a torch ``Distribution``
        with Pyro's ``TorchDistributionMixin``)."""
        ...
