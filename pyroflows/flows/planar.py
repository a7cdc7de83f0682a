"""Presets of the planar-style flows, sampling-fast and made for posteriors: ``planar``,
``radial`` (Rezende & Mohamed, ICML 2015, https://arxiv.org/abs/1505.05770) and ``sylvester`` (van den Berg et al., UAI 2018)."""

from __future__ import annotations

from typing import Any

from ..core import Flow
from ..transforms import Planar, Radial, Sylvester
from .building import passes_options_to, split_options, stack
from .registry import register

__all__ = ["planar", "radial", "sylvester"]


@register("planar")
@passes_options_to(Planar)
def planar(features: int, context: int = 0, transforms: int = 8, **options: Any) -> Flow:
    r"""Planar flow (Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015).

    ``transforms`` layers :math:`x = z + \hat u \tanh(w^\top z + b)` with the paper's
    :math:`\hat u` reparametrisation (:math:`w^\top \hat u > -1`, invertible for any
    parameter value). **Fast direction: sampling** (one :math:`O(d)` pass per layer); density
    needs one bracketed scalar bisection per layer (about 64 cheap steps in float64, 34 in
    float32). Conditional form: each layer's :math:`(u, w, b)` are free parameters plus an MLP
    of the context (amortised).

    The other options go to each :class:`~pyroflows.transforms.Planar` layer (``hidden`` and
    ``activation`` of the context networks, ``iterations``).
    """
    (layer,) = split_options(planar, options)
    return Flow(stack(transforms, lambda i: Planar(features, context, **layer)))


@register("radial")
@passes_options_to(Radial)
def radial(features: int, context: int = 0, transforms: int = 8, **options: Any) -> Flow:
    r"""Radial flow (Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015).

    ``transforms`` layers :math:`x = z + \beta (z - z_0)/(\alpha + \|z - z_0\|)` with
    :math:`\alpha > 0`, :math:`\beta > -\alpha` by parametrisation. **Fast in both directions**:
    the inverse radius is the positive root of a quadratic (closed form), one :math:`O(d)` pass
    per layer. Conditional form: :math:`(z_0, \alpha, \beta)` free plus an MLP of the context.

    The other options go to each :class:`~pyroflows.transforms.Radial` layer (``hidden`` and
    ``activation`` of the context networks).
    """
    (layer,) = split_options(radial, options)
    return Flow(stack(transforms, lambda i: Radial(features, context, **layer)))


@register("sylvester")
@passes_options_to(Sylvester, fixed=("flip",))
def sylvester(features: int, context: int = 0, transforms: int = 4, **options: Any) -> Flow:
    r"""Sylvester flow (van den Berg, Hasenclever, Tomczak & Welling, "Sylvester Normalizing Flows
    for Variational Inference", UAI 2018).

    ``transforms`` layers :math:`x = z + QR\tanh(\tilde R Q^\top z + b)` with square
    triangular :math:`R, \tilde R` (diagonals :math:`\tanh`-bounded, so
    :math:`r_{ii}\tilde r_{ii} > -1`) and :math:`Q` a product of ``reflections`` Householder
    matrices (H-SNF), composed with the order reversal on every other layer;
    ``reflections=0`` gives the triangular T-SNF. **Fast direction: sampling**
    (:math:`O(Kd + d^2)` per layer); density inverts each layer exactly by back-substitution:
    ``features`` sweeps of a batched scalar bisection. Conditional form: all layer parameters
    free plus an MLP of the context.

    The other options go to each :class:`~pyroflows.transforms.Sylvester` layer
    (``reflections``, ``hidden`` and ``activation`` of the context networks, ``iterations``).
    """
    (layer,) = split_options(sylvester, options)
    return Flow(stack(transforms, lambda i: Sylvester(features, context, flip=i % 2 == 1, **layer)))
