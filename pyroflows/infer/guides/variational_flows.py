r"""Flows for variational posteriors: sampling-fast layers and how guides resolve a ``flow=``.

A variational guide draws samples and evaluates their density at the same time, so its layers
should be one pass in the sampling direction (inverse autoregressive orientation, Kingma et al.
2016). :func:`resolve_flow` turns a registry name, a :class:`~pyroflows.Flow`, a deep
destructor's ``as_flow()`` or a callable into such a flow:

* the name ``"nsf"`` (the guides' default) builds :func:`variational_nsf`: inverse
  autoregressive layers, the first (base-side) one affine, the others a rational-quadratic
  spline followed by an affine map, both conditioned by one MADE. Splines alone cannot change
  scale outside their interval, which is what posteriors such as Neal's funnel need; the
  affine stages provide it, the spline the shape;
* any other registry name builds that preset, with every density-fast layer (MAF, NSF-AR)
  wrapped in :class:`~pyroflows.transforms.Inverse` so sampling is one pass;
* a :class:`~pyroflows.Flow` (including ``DeepDestructor.as_flow()``) is used as given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ...checks import check_options
from ...core import Flow
from ...flows import available, build
from ...flows.autoregressive import orderings
from ...flows.registry import check_transforms
from ...transforms import (
    AffineMap,
    ElementwiseMap,
    Inverse,
    InverseMap,
    MaskedAutoregressive,
    SplineMap,
)
from ...transforms.elementwise import broadcast_params, soft_clamp

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
        return params[..., -2], soft_clamp(params[..., -1], self.log_scale_bound)

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
    hidden: Sequence[int] = (32, 32),
    bins: int = 4,
    bound: float = 5.0,
    log_scale_bound: float = 6.0,
    activation: str = "relu",
    affine_first: bool = True,
) -> Flow:
    r"""Inverse autoregressive flow with spline and affine stages (the guides' ``"nsf"``).

    ``transforms`` :func:`inverse_autoregressive` layers alternating the natural and the
    reversed order. With ``affine_first`` and ``transforms >= 2`` the first layer (at the
    base side, natural order) has the affine transformer :math:`x_i = t_i + e^{s_i} z_i`
    (:class:`~pyroflows.transforms.AffineMap`, log-scale soft-clamped to
    ``log_scale_bound``); every other layer has an :class:`AffineSplineMap` (inverse
    autoregressive flows, Kingma et al. 2016; rational-quadratic splines, Durkan et al. 2019).
    Starts as the identity map. Shapes: ``features`` in, ``features`` out.

    Why these defaults (chosen with ``AutoFlow`` on the targets of
    ``benchmarks/vi_targets.py``: SVI with ``Adam(lr=5e-3)``, one-particle ``Trace_ELBO``,
    2000 steps, mean :math:`\mathrm{KL}(q\,\|\,p)` over seeds; the defaults' own run is in
    ``benchmarks/results/vi_targets.json``):

    * the affine first layer learns the scale of later coordinates as a function of earlier
      ones (Neal's funnel, :math:`\log\sigma_x = v/2`, is exactly one such layer), which a
      spline transformer learns slowly: two spline layers of width 16 reached KL 0.8-1.05 on
      the 10-D funnel, an affine layer then a spline layer of width 32 about 0.35;
    * the spline layer gives the shape an affine layer lacks (the 2-D banana: two affine
      layers reach KL 0.16, affine then spline about 0.09);
    * ``bins=4``: fewer spline parameters, less gradient noise with one particle (banana,
      6 seeds: 0.087 with 4 bins, 0.097 with 2, 0.118 with 8; 3 seeds: 0.15 with 16);
    * ``hidden=(32, 32)``: width 16 learns too slowly, widths 48 and 64 were noisier for the
      same 2000 steps; smooth activations (``elu``, ``tanh``) were worse than ``relu``;
      a third layer helped the funnel (0.27 with affine, spline, affine) but not the banana
      (0.13-0.16).

    Args:
        features: event size :math:`D`.
        context: context size (amortised guides).
        transforms: number of layers (at least 1).
        hidden: MADE widths.
        bins: spline bins :math:`K`.
        bound: spline half-width.
        log_scale_bound: bound on every affine log-scale.
        activation: MADE non-linearity.
        affine_first: make the first of two or more layers affine (a single layer is always
            an :class:`AffineSplineMap` one).

    Example:
        >>> flow = variational_nsf(3)
        >>> x, log_q = flow().rsample_and_log_prob((5,))
        >>> x.shape, log_q.shape
        (torch.Size([5, 3]), torch.Size([5]))
    """
    check_transforms(transforms)
    if not isinstance(affine_first, bool):
        raise TypeError(f"affine_first must be a bool, got {type(affine_first).__name__}")
    layers = []
    for k, order in enumerate(orderings(features, transforms, "reverse")):
        affine = affine_first and transforms >= 2 and k == 0
        map = AffineMap(log_scale_bound) if affine else AffineSplineMap(bins, bound, log_scale_bound)
        layers.append(inverse_autoregressive(features, map, context, tuple(hidden), order, activation))
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
            check_options("flow", "nsf", variational_nsf, options)
            return variational_nsf(features, context, **options)
        if spec not in available("vector"):
            raise ValueError(f"unknown flow {spec!r}; available: {', '.join(available('vector'))}")
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
