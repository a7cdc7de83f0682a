r"""Flows for variational posteriors: sampling-fast layers and how guides resolve a ``flow=``.

A variational guide draws samples and evaluates their density at the same time, so its layers
should be one pass in the sampling direction (inverse autoregressive orientation, Kingma et al.
2016). :func:`resolve_flow` turns a registry name, a :class:`~pyroflows.Flow`, a deep
destructor's ``as_flow()`` or a callable into such a flow:

* the name ``"nsf"`` (the guides' default) builds :func:`variational_nsf`: inverse
  autoregressive layers whose transformer is a rational-quadratic spline followed by an
  affine map, both conditioned by one MADE. Splines alone cannot change scale outside their
  interval, which is what posteriors such as Neal's funnel need; the affine stage provides it,
  the spline the shape;
* any other registry name builds that preset, with every density-fast layer (MAF, NSF-AR)
  wrapped in :class:`~pyroflows.transforms.Inverse` so sampling is one pass;
* a :class:`~pyroflows.Flow` (including ``DeepDestructor.as_flow()``) is used as given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..core import Flow
from ..flows import available, build
from ..flows.autoregressive import orderings
from ..flows.registry import check_transforms
from ..transforms import ElementwiseMap, Inverse, InverseMap, MaskedAutoregressive, SplineMap
from ..transforms.elementwise import broadcast_params

__all__ = ["AffineSplineMap", "inverse_autoregressive", "resolve_flow", "variational_nsf"]


class AffineSplineMap(ElementwiseMap):
    r"""A rational-quadratic spline followed by an affine map, :math:`v = t + e^{s}\,g(u)`.

    All-zero parameters give the identity. The log-scale is soft-clamped,
    :math:`s = b\tanh(\tilde s/b)`.

    Args:
        bins: spline bins :math:`K`.
        bound: spline half-width.
        log_scale_bound: the bound :math:`b` on the affine log-scale.
    """

    def __init__(self, bins: int = 8, bound: float = 5.0, log_scale_bound: float = 6.0) -> None:
        super().__init__()
        self.spline = SplineMap(bins, bound)
        self.log_scale_bound = float(log_scale_bound)
        self.num_params = self.spline.num_params + 2

    def _affine(self, params: Tensor) -> tuple[Tensor, Tensor]:
        b = self.log_scale_bound
        return params[..., -2], b * torch.tanh(params[..., -1] / b)

    def forward(self, u: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        u, params = broadcast_params(u, params)
        g, ladj = self.spline(u, params[..., :-2])
        shift, log_scale = self._affine(params)
        return shift + log_scale.exp() * g, ladj + log_scale

    def inverse(self, v: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        v, params = broadcast_params(v, params)
        shift, log_scale = self._affine(params)
        u, ladj = self.spline.inverse((v - shift) * torch.exp(-log_scale), params[..., :-2])
        return u, ladj - log_scale


def inverse_autoregressive(
    features: int,
    map: ElementwiseMap,
    context: int = 0,
    hidden: Sequence[int] = (64, 64),
    order: Sequence[int] | Tensor | None = None,
    activation: str = "relu",
) -> Inverse:
    r"""Inverse autoregressive layer :math:`x_i = \tau(z_i;\ \theta_i(z_{<i}, c))`.

    The parameters come from the *base-side* values, so sampling with its log-density is one
    MADE pass (``fast_direction = "forward"``); the inverse (density of external points) takes
    ``features`` passes. This is the orientation variational posteriors need. Built from the
    shared pieces: ``Inverse(MaskedAutoregressive(features, InverseMap(map), ...))``.
    """
    return Inverse(MaskedAutoregressive(features, InverseMap(map), context, tuple(hidden), order, activation))


def variational_nsf(
    features: int,
    context: int = 0,
    transforms: int = 2,
    hidden: Sequence[int] = (16, 16),
    bins: int = 8,
    bound: float = 5.0,
    log_scale_bound: float = 6.0,
    activation: str = "relu",
) -> Flow:
    """Inverse autoregressive neural spline flow with affine stages (the guides' ``"nsf"``).

    ``transforms`` layers alternating the natural and the reversed order, each
    :func:`inverse_autoregressive` with an :class:`AffineSplineMap` transformer. Starts as the
    identity map.
    """
    check_transforms(transforms)
    layers = [
        inverse_autoregressive(features, AffineSplineMap(bins, bound, log_scale_bound), context,
                               tuple(hidden), order, activation)
        for order in orderings(features, transforms, "reverse")
    ]
    return Flow(layers)


def _for_sampling(flow: Flow) -> Flow:
    layers = [Inverse(t) if t.fast_direction == "inverse" else t for t in flow.transforms]
    out = Flow(layers, flow.base)
    out.config = flow.config
    return out


def resolve_flow(spec: Any, features: int, context: int = 0, **options: Any) -> Flow:
    """Turn a guide's ``flow=`` argument into a :class:`~pyroflows.Flow` of ``features``.

    Raises ``ValueError`` for an unknown name or a flow of the wrong size, ``TypeError`` for
    unknown options or an unsupported object, all before any training.
    """
    if isinstance(spec, str):
        if spec == "nsf":
            import inspect

            accepted = list(inspect.signature(variational_nsf).parameters)[2:]
            unknown = sorted(set(options) - set(accepted))
            if unknown:
                raise TypeError(f"flow 'nsf' got unknown options {unknown}; its options are {accepted}")
            return variational_nsf(features, context, **options)
        if spec not in available():
            raise ValueError(f"unknown flow {spec!r}; available: {', '.join(available())}")
        return _for_sampling(build(spec, features, context=context, **options))
    if options:
        raise TypeError(f"flow options {sorted(options)} only apply when flow is a registry name")
    if isinstance(spec, Flow):
        flow = spec
    elif callable(spec):
        flow = spec(features) if not context else spec(features, context)
        if not isinstance(flow, Flow):
            raise TypeError(f"the flow factory returned {type(flow).__name__}, not a pyroflows.Flow")
    else:
        raise TypeError(f"flow must be a registry name, a pyroflows.Flow or a factory, got {type(spec).__name__}")
    if flow.features != features:
        raise ValueError(f"the flow has {flow.features} features but the latent space has {features}")
    if flow.context_features != context:
        raise ValueError(f"the flow takes a context of {flow.context_features} features, expected {context}")
    return flow


FlowSpec = str | Flow | Callable[..., Flow]
