"""Coupling presets: ``nice``, ``realnvp``, ``nsf-coupling``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
from .registry import check_transforms, register

__all__ = ["nice", "nsf_coupling", "realnvp"]


def _couplings(
    features: int,
    context: int,
    transforms: int,
    make_map: Callable[[], ElementwiseMap],
    hidden: Sequence[int],
    conditioner: str,
    activation: str,
    lu: bool = False,
) -> list[Bijection]:
    if features < 2:
        raise ValueError("coupling flows need at least 2 features; for 1-D data use 'maf' or 'nsf'")
    check_transforms(transforms)
    layers = []
    for i in range(transforms):
        if lu and i > 0:
            layers.append(LULinear(features, permute=True, seed=i))
        layers.append(
            Coupling(features, make_map(), alternating_mask(features, i), context,
                     tuple(hidden), conditioner, activation)
        )
    return layers


def _stack(layers: list[Bijection], reversible: bool) -> Flow:
    """The flow of ``layers``; ``reversible=True`` wraps them in one :class:`ReversibleCompose`."""
    if not isinstance(reversible, bool):
        raise TypeError(f"reversible must be True or False, got {reversible!r}")
    return Flow([ReversibleCompose(layers)] if reversible else layers)


@register("nice")
def nice(
    features: int,
    context: int = 0,
    transforms: int = 4,
    hidden: Sequence[int] = (64, 64),
    conditioner: str = "mlp",
    activation: str = "relu",
    reversible: bool = False,
) -> Flow:
    """NICE (Dinh, Krueger & Bengio, "NICE: Non-linear Independent Components Estimation", 2014).

    Additive couplings :math:`x_B = z_B + t(z_A, c)` with alternating masks, after a learnable
    diagonal scaling :math:`\\operatorname{diag}(e^{s})` at the base side (the only layer that
    changes volume). Fast in both directions.

    Options: ``transforms`` couplings, conditioner ``hidden`` widths, ``conditioner``
    (``"mlp"``/``"resnet"``), ``activation``, ``reversible``.

    ``reversible=True`` wraps the stack in a
    :class:`~pyroflows.transforms.ReversibleCompose`: the backward pass rebuilds each layer's
    input from its output (RevNet, Gomez et al. 2017), so activation memory stays flat as
    ``transforms`` grows, for more time per step; outputs are identical and gradients agree
    to rounding.
    """
    layers = _couplings(features, context, transforms, AdditiveMap, hidden, conditioner, activation)
    return _stack([ElementwiseAffine(features), *layers], reversible)


@register("realnvp")
def realnvp(
    features: int,
    context: int = 0,
    transforms: int = 6,
    hidden: Sequence[int] = (64, 64),
    conditioner: str = "mlp",
    activation: str = "relu",
    log_scale_bound: float = 3.0,
    reversible: bool = False,
) -> Flow:
    """RealNVP (Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017).

    Affine couplings :math:`x_B = z_B e^{s(z_A, c)} + t(z_A, c)` with alternating masks.
    Fast in both directions.

    Options: ``transforms``, ``hidden``, ``conditioner``, ``activation``,
    ``log_scale_bound`` (soft bound on each layer's log-scale), ``reversible``.

    ``reversible=True`` wraps the stack in a
    :class:`~pyroflows.transforms.ReversibleCompose`: the backward pass rebuilds each layer's
    input from its output (RevNet, Gomez et al. 2017), so activation memory stays flat as
    ``transforms`` grows, for more time per step; outputs are identical and gradients agree
    to rounding.
    """
    layers = _couplings(features, context, transforms, lambda: AffineMap(log_scale_bound),
                        hidden, conditioner, activation)
    return _stack(layers, reversible)


@register("nsf-coupling")
def nsf_coupling(
    features: int,
    context: int = 0,
    transforms: int = 4,
    hidden: Sequence[int] = (64, 64),
    bins: int = 8,
    bound: float = 5.0,
    conditioner: str = "mlp",
    activation: str = "relu",
    lu: bool = True,
    reversible: bool = False,
) -> Flow:
    """Neural spline flow, coupling form (Durkan, Bekasov, Murray & Papamakarios, "Neural Spline
    Flows", NeurIPS 2019: RQ-NSF (C)).

    Rational-quadratic spline couplings on ``[-bound, bound]`` with identity tails outside,
    alternating masks, and (``lu=True``) an LU-parametrised linear layer between couplings, as
    in the paper. Fast in both directions.

    Options: ``transforms``, ``hidden``, ``bins``, ``bound``, ``conditioner``, ``activation``,
    ``lu``, ``reversible``.

    ``reversible=True`` wraps the stack in a
    :class:`~pyroflows.transforms.ReversibleCompose`: the backward pass rebuilds each layer's
    input from its output (RevNet, Gomez et al. 2017), so activation memory stays flat as
    ``transforms`` grows, for more time per step; outputs are identical and gradients agree
    to rounding.
    """
    layers = _couplings(features, context, transforms, lambda: SplineMap(bins, bound),
                        hidden, conditioner, activation, lu=lu)
    return _stack(layers, reversible)

