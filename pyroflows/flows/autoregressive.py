"""Autoregressive presets: ``maf``, ``iaf``, ``nsf``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..core import Flow
from ..transforms import (
    AffineMap,
    Bijection,
    ElementwiseMap,
    Inverse,
    MaskedAutoregressive,
    SplineMap,
)
from .registry import check_transforms, register

__all__ = ["iaf", "maf", "nsf"]


def orderings(features: int, transforms: int, order: str) -> list[torch.Tensor]:
    """Per-layer autoregressive orderings: ``"reverse"`` alternates natural and reversed,
    ``"random"`` draws seeded permutations."""
    if order == "reverse":
        natural = torch.arange(features)
        return [natural if i % 2 == 0 else natural.flip(0) for i in range(transforms)]
    if order == "random":
        generator = torch.Generator().manual_seed(0)
        return [torch.randperm(features, generator=generator) for _ in range(transforms)]
    raise ValueError(f"order must be 'reverse' or 'random', got {order!r}")


def _autoregressive(
    features: int,
    context: int,
    transforms: int,
    make_map: Callable[[], ElementwiseMap],
    hidden: Sequence[int],
    order: str,
    activation: str,
    residual: bool,
) -> list[MaskedAutoregressive]:
    check_transforms(transforms)
    return [
        MaskedAutoregressive(features, make_map(), context, tuple(hidden), o, activation, residual)
        for o in orderings(features, transforms, order)
    ]


@register("maf")
def maf(
    features: int,
    context: int = 0,
    transforms: int = 5,
    hidden: Sequence[int] = (64, 64),
    order: str = "reverse",
    activation: str = "relu",
    residual: bool = False,
    log_scale_bound: float = 3.0,
) -> Flow:
    """Masked autoregressive flow (Papamakarios, Pavlakou & Murray, NeurIPS 2017).

    Affine autoregressive layers :math:`x_i = z_i e^{s_i(x_{<i}, c)} + t_i(x_{<i}, c)` with
    MADE conditioners. **Fast direction: density** (``log_prob`` is one pass per layer);
    sampling takes ``features`` passes per layer.

    Options: ``transforms``, ``hidden``, ``order`` (``"reverse"`` alternates natural and
    reversed orderings, ``"random"`` draws seeded random ones), ``activation``, ``residual``
    (residual MADE), ``log_scale_bound``.
    """
    layers = _autoregressive(features, context, transforms, lambda: AffineMap(log_scale_bound),
                             hidden, order, activation, residual)
    return Flow(layers)


@register("iaf")
def iaf(
    features: int,
    context: int = 0,
    transforms: int = 5,
    hidden: Sequence[int] = (64, 64),
    order: str = "reverse",
    activation: str = "relu",
    residual: bool = False,
    log_scale_bound: float = 3.0,
) -> Flow:
    """Inverse autoregressive flow (Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling,
    NeurIPS 2016).

    The inverses of MAF layers: :math:`x_i = (z_i - t_i(z_{<i}, c)) e^{-s_i(z_{<i}, c)}`.
    **Fast direction: sampling** (``rsample_and_log_prob`` is one pass per layer, which is
    what variational inference needs); ``log_prob`` of external data takes ``features``
    passes per layer.

    Options: as :func:`maf`.
    """
    layers: list[Bijection] = _autoregressive(features, context, transforms,
                                              lambda: AffineMap(log_scale_bound),
                                              hidden, order, activation, residual)
    return Flow([Inverse(layer) for layer in layers])


@register("nsf")
def nsf(
    features: int,
    context: int = 0,
    transforms: int = 3,
    hidden: Sequence[int] = (64, 64),
    bins: int = 8,
    bound: float = 5.0,
    order: str = "reverse",
    activation: str = "relu",
    residual: bool = False,
) -> Flow:
    """Neural spline flow, autoregressive form (Durkan, Bekasov, Murray & Papamakarios, "Neural
    Spline Flows", NeurIPS 2019: RQ-NSF (AR)).

    Rational-quadratic spline autoregressive layers on ``[-bound, bound]`` with identity tails
    (inputs outside the interval pass through unchanged, never NaN), MADE conditioners.
    **Fast direction: density**; sampling takes ``features`` passes per layer.

    Options: ``transforms``, ``hidden``, ``bins``, ``bound``, ``order``, ``activation``,
    ``residual``.
    """
    layers = _autoregressive(features, context, transforms, lambda: SplineMap(bins, bound),
                             hidden, order, activation, residual)
    return Flow(layers)
