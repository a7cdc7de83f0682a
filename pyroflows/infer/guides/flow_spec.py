r"""How the flow guides turn their ``flow=`` argument into a sampling-fast flow.

A variational guide draws samples and evaluates their density at the same time, so its layers
should be one pass in the sampling direction. :func:`resolve_flow` turns

* a registry name into that preset (:func:`pyroflows.flows.build`), with every density-fast
  layer (MAF, NSF-AR) wrapped in :class:`~pyroflows.transforms.Inverse` so sampling is one
  pass; the guides' default, :data:`DEFAULT_FLOW` = ``"nsf-iaf"``
  (:func:`~pyroflows.flows.variational.nsf_iaf`), is sampling-fast already;
* a :class:`~pyroflows.Flow` (including ``DeepDestructor.as_flow()``) into itself;
* a factory ``features -> Flow`` (``(features, context) -> Flow`` for a conditional guide)
  into the flow it returns,

checking its size against the latent space.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...core import Flow
from ...flows import available, build
from ...transforms import Inverse

__all__ = ["DEFAULT_FLOW", "FlowSpec", "check_flow_name", "resolve_flow"]

#: The flow guides' default preset.
DEFAULT_FLOW = "nsf-iaf"

FlowSpec = str | Flow | Callable[..., Flow]


def check_flow_name(spec: Any) -> None:
    """ValueError for a string ``spec`` that is not a vector preset of the registry."""
    if isinstance(spec, str) and spec not in available("vector"):
        raise ValueError(f"unknown flow {spec!r}; available: {', '.join(available('vector'))}")


def _for_sampling(flow: Flow) -> Flow:
    layers = [Inverse(t) if t.fast_direction == "inverse" else t for t in flow.transforms]
    out = Flow(layers, flow.base)
    out.config = flow.config
    return out


def resolve_flow(spec: FlowSpec, features: int, context: int = 0, **options: Any) -> Flow:
    """Turn a guide's ``flow=`` argument into a sampling-fast :class:`~pyroflows.Flow` of
    ``features`` (and ``context`` context features).

    Raises ``ValueError`` for an unknown name or a flow of the wrong size, ``TypeError`` for
    unknown options or an unsupported object, all before any training.

    Example:
        >>> resolve_flow("maf", 3, transforms=1, hidden=(8,)).transforms[0].fast_direction
        'forward'
    """
    if isinstance(spec, str):
        check_flow_name(spec)
        return _for_sampling(build(spec, features, context=context, **options))
    if options:
        raise TypeError(f"flow options {sorted(options)} only apply when flow is a registry name")
    if isinstance(spec, Flow):
        flow = spec
    elif callable(spec):
        flow = spec(features) if not context else spec(features, context)
        if not isinstance(flow, Flow):
            raise TypeError(
                f"the flow factory returned {type(flow).__name__}, not a pyroflows.Flow"
            )
    else:
        raise TypeError(
            f"flow must be a registry name, a pyroflows.Flow or a factory, got {type(spec).__name__}"
        )
    if flow.features != features:
        raise ValueError(
            f"the flow has {flow.features} features but the latent space has {features}"
        )
    if flow.context_features != context:
        raise ValueError(
            f"the flow takes a context of {flow.context_features} features, expected {context}"
        )
    return flow
