"""Coupling presets: ``nice``, ``realnvp``, ``nsf-coupling``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..checks import check_flag
from ..core import Flow
from ..transforms import (
    AdditiveMap,
    AffineMap,
    Bijection,
    Coupling,
    ElementwiseAffine,
    ElementwiseMap,
    LULinear,
    SplineMap,
    alternating_mask,
)
from ..transforms.reversible import ReversibleCompose
from .building import passes_options_to, split_options, stack
from .registry import register

__all__ = ["nice", "nsf_coupling", "realnvp"]


def _couplings(
    features: int,
    context: int,
    transforms: int,
    make_map: Callable[[], ElementwiseMap],
    options: dict[str, Any],
    lu: bool = False,
) -> list[Bijection]:
    """``transforms`` :class:`Coupling` layers with alternating masks, each taking ``options``;
    with ``lu``, an LU-parametrised linear layer between consecutive ones."""
    if features < 2:
        raise ValueError("coupling flows need at least 2 features; for 1-D data use 'maf' or 'nsf'")
    mix = (lambda i: LULinear(features, permute=True, seed=i)) if check_flag("lu", lu) else None
    return stack(
        transforms,
        lambda i: Coupling(features, make_map(), alternating_mask(features, i), context, **options),
        between=mix,
    )


def _flow(layers: list[Bijection], reversible: bool) -> Flow:
    """The flow of ``layers``; ``reversible=True`` wraps them in one :class:`ReversibleCompose`."""
    return Flow([ReversibleCompose(layers)] if check_flag("reversible", reversible) else layers)


@register("nice")
@passes_options_to(Coupling, fixed=("map", "mask"))
def nice(
    features: int, context: int = 0, transforms: int = 4, reversible: bool = False, **options: Any
) -> Flow:
    """NICE (Dinh, Krueger & Bengio, "NICE: Non-linear Independent Components Estimation", 2014, https://arxiv.org/abs/1410.8516).

    ``transforms`` additive couplings :math:`x_B = z_B + t(z_A, c)` with alternating masks,
    after a learnable diagonal scaling :math:`\\operatorname{diag}(e^{s})` at the base side (the
    only layer that changes volume). Fast in both directions. The other options go to each
    :class:`~pyroflows.transforms.Coupling` (``hidden``, ``conditioner``, ``activation``).

    ``reversible=True`` wraps the stack in a
    :class:`~pyroflows.transforms.ReversibleCompose`: the backward pass rebuilds each layer's
    input from its output (RevNet, Gomez et al. 2017, https://arxiv.org/abs/1707.04585), so activation memory stays flat as
    ``transforms`` grows, for more time per step; outputs are identical and gradients agree
    to rounding.
    """
    (coupling,) = split_options(nice, options)
    layers = _couplings(features, context, transforms, AdditiveMap, coupling)
    return _flow([ElementwiseAffine(features), *layers], reversible)


@register("realnvp")
@passes_options_to(Coupling, AffineMap, fixed=("map", "mask"))
def realnvp(
    features: int, context: int = 0, transforms: int = 6, reversible: bool = False, **options: Any
) -> Flow:
    """RealNVP (Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017, https://arxiv.org/abs/1605.08803).

    ``transforms`` affine couplings :math:`x_B = z_B e^{s(z_A, c)} + t(z_A, c)` with
    alternating masks. Fast in both directions. The other options go to each
    :class:`~pyroflows.transforms.Coupling` (``hidden``, ``conditioner``, ``activation``) or
    its :class:`~pyroflows.transforms.AffineMap` (``log_scale_bound``). ``reversible`` as in
    :func:`nice`.
    """
    coupling, affine = split_options(realnvp, options)
    layers = _couplings(features, context, transforms, lambda: AffineMap(**affine), coupling)
    return _flow(layers, reversible)


@register("nsf-coupling")
@passes_options_to(Coupling, SplineMap, fixed=("map", "mask"))
def nsf_coupling(
    features: int,
    context: int = 0,
    transforms: int = 4,
    lu: bool = True,
    reversible: bool = False,
    **options: Any,
) -> Flow:
    """Neural spline flow, coupling form (Durkan, Bekasov, Murray & Papamakarios, "Neural Spline
    Flows", NeurIPS 2019: RQ-NSF (C)).

    ``transforms`` rational-quadratic spline couplings on ``[-bound, bound]`` with identity
    tails outside, alternating masks, and (``lu=True``) an LU-parametrised linear layer between
    couplings, as in the paper. Fast in both directions. The other options go to each
    :class:`~pyroflows.transforms.Coupling` (``hidden``, ``conditioner``, ``activation``) or
    its :class:`~pyroflows.transforms.SplineMap` (``bins``, ``bound``). ``reversible`` as in
    :func:`nice`.
    """
    coupling, spline = split_options(nsf_coupling, options)
    layers = _couplings(features, context, transforms, lambda: SplineMap(**spline), coupling, lu)
    return _flow(layers, reversible)
