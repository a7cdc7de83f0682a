"""Autoregressive presets: ``maf``, ``iaf``, ``nsf``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..checks import check_choice, check_count
from ..core import Flow
from ..transforms import (
    AffineMap,
    ElementwiseMap,
    Inverse,
    MaskedAutoregressive,
    SplineMap,
)
from .building import passes_options_to, split_options
from .registry import register

__all__ = ["iaf", "maf", "nsf"]

ORDERS = ("reverse", "random")


def orderings(features: int, transforms: int, order: str) -> list[torch.Tensor]:
    """Per-layer autoregressive orderings: ``"reverse"`` alternates natural and reversed,
    ``"random"`` draws seeded permutations."""
    check_choice("order", order, ORDERS)
    if order == "reverse":
        natural = torch.arange(features)
        return [natural if i % 2 == 0 else natural.flip(0) for i in range(transforms)]
    generator = torch.Generator().manual_seed(0)
    return [torch.randperm(features, generator=generator, device="cpu") for _ in range(transforms)]


def _map_layers(
    preset: Callable[..., Flow],
    features: int,
    context: int,
    transforms: int,
    order: str,
    options: dict[str, Any],
    *,
    wrap: Callable[[ElementwiseMap], ElementwiseMap] | None = None,
    **map_options: Any,
) -> list[MaskedAutoregressive]:
    """``transforms`` :class:`MaskedAutoregressive` layers in the preset's ``order``, for a
    preset passing its options to ``(MaskedAutoregressive, map class, ...)``: each layer takes
    its share of the options, each map its share and ``map_options``, wrapped in ``wrap``
    (:class:`~pyroflows.transforms.InverseMap` for a map whose explicit direction is
    data-to-noise, as the neural autoregressive papers write theirs)."""
    layer, transformer, *_ = split_options(preset, options)
    map_class: type[ElementwiseMap] = preset.passes_options_to[1]  # type: ignore[attr-defined]

    def make_map() -> ElementwiseMap:
        map = map_class(**transformer, **map_options)
        return map if wrap is None else wrap(map)

    orders = orderings(features, check_count("transforms", transforms, 1), order)
    return [MaskedAutoregressive(features, make_map(), context, order=o, **layer) for o in orders]


@register("maf")
@passes_options_to(MaskedAutoregressive, AffineMap, fixed=("map",))
def maf(
    features: int, context: int = 0, transforms: int = 5, order: str = "reverse", **options: Any
) -> Flow:
    r"""Masked autoregressive flow (Papamakarios, Pavlakou & Murray, NeurIPS 2017, https://arxiv.org/abs/1705.07057).

    ``transforms`` affine autoregressive layers
    :math:`x_i = z_i e^{s_i(x_{<i}, c)} + t_i(x_{<i}, c)` with MADE conditioners. **Fast
    direction: density** (``log_prob`` is one pass per layer); sampling takes ``features``
    passes per layer.

    ``order``: ``"reverse"`` alternates natural and reversed orderings between layers,
    ``"random"`` draws seeded random ones. Every other option goes to each layer, a
    :class:`~pyroflows.transforms.MaskedAutoregressive` (``hidden``, ``activation``,
    ``residual``), or to its :class:`~pyroflows.transforms.AffineMap` (``log_scale_bound``).
    """
    return Flow(_map_layers(maf, features, context, transforms, order, options))


@register("iaf")
@passes_options_to(MaskedAutoregressive, AffineMap, fixed=("map",))
def iaf(
    features: int, context: int = 0, transforms: int = 5, order: str = "reverse", **options: Any
) -> Flow:
    r"""Inverse autoregressive flow (Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling,
    NeurIPS 2016).

    The inverses of MAF layers: :math:`x_i = (z_i - t_i(z_{<i}, c)) e^{-s_i(z_{<i}, c)}`.
    **Fast direction: sampling** (``rsample_and_log_prob`` is one pass per layer, which is
    what variational inference needs); ``log_prob`` of external data takes ``features``
    passes per layer.

    Options: as :func:`maf` (:class:`~pyroflows.transforms.MaskedAutoregressive` and
    :class:`~pyroflows.transforms.AffineMap` take all but ``transforms`` and ``order``).
    """
    layers = _map_layers(iaf, features, context, transforms, order, options)
    return Flow([Inverse(layer) for layer in layers])


@register("nsf")
@passes_options_to(MaskedAutoregressive, SplineMap, fixed=("map",))
def nsf(
    features: int, context: int = 0, transforms: int = 3, order: str = "reverse", **options: Any
) -> Flow:
    """Neural spline flow, autoregressive form (Durkan, Bekasov, Murray & Papamakarios, "Neural
    Spline Flows", NeurIPS 2019: RQ-NSF (AR)).

    ``transforms`` rational-quadratic spline autoregressive layers on ``[-bound, bound]`` with
    identity tails (inputs outside the interval pass through unchanged, never NaN), MADE
    conditioners, in the ``order`` of :func:`maf`. **Fast direction: density**; sampling takes
    ``features`` passes per layer.

    Every other option goes to each layer, a
    :class:`~pyroflows.transforms.MaskedAutoregressive` (``hidden``, ``activation``,
    ``residual``), or to its :class:`~pyroflows.transforms.SplineMap` (``bins``, ``bound``).
    """
    return Flow(_map_layers(nsf, features, context, transforms, order, options))
