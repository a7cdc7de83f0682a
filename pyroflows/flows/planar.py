"""Presets of the planar-style flows, sampling-fast and made for posteriors: ``planar``,
``radial`` (Rezende & Mohamed, ICML 2015) and ``sylvester`` (van den Berg et al., UAI 2018)."""

from __future__ import annotations

from collections.abc import Sequence

from ..core import Flow
from ..transforms import Planar, Radial, Sylvester
from .registry import check_transforms, register

__all__ = ["planar", "radial", "sylvester"]


@register("planar")
def planar(
    features: int,
    context: int = 0,
    transforms: int = 8,
    hidden: Sequence[int] = (64, 64),
    activation: str = "relu",
) -> Flow:
    r"""Planar flow (Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015).

    ``transforms`` layers :math:`x = z + \hat u \tanh(w^\top z + b)` with the paper's
    :math:`\hat u` reparametrisation (:math:`w^\top \hat u > -1`, invertible for any
    parameter value). **Fast direction: sampling** (one :math:`O(d)` pass per layer); density
    needs one bracketed scalar bisection per layer (about 64 cheap steps in float64, 34 in
    float32). Conditional form: each layer's :math:`(u, w, b)` are free parameters plus an MLP
    of the context (amortised).

    Options: ``transforms``; ``hidden`` and ``activation`` of the context networks (used only
    with ``context > 0``).
    """
    check_transforms(transforms)
    return Flow([Planar(features, context, tuple(hidden), activation) for _ in range(transforms)])


@register("radial")
def radial(
    features: int,
    context: int = 0,
    transforms: int = 8,
    hidden: Sequence[int] = (64, 64),
    activation: str = "relu",
) -> Flow:
    r"""Radial flow (Rezende & Mohamed, "Variational Inference with Normalizing Flows", ICML 2015).

    ``transforms`` layers :math:`x = z + \beta (z - z_0)/(\alpha + \|z - z_0\|)` with
    :math:`\alpha > 0`, :math:`\beta > -\alpha` by parametrisation. **Fast in both directions**:
    the inverse radius is the positive root of a quadratic (closed form), one :math:`O(d)` pass
    per layer. Conditional form: :math:`(z_0, \alpha, \beta)` free plus an MLP of the context.

    Options: ``transforms``; ``hidden`` and ``activation`` of the context networks (used only
    with ``context > 0``).
    """
    check_transforms(transforms)
    return Flow([Radial(features, context, tuple(hidden), activation) for _ in range(transforms)])


@register("sylvester")
def sylvester(
    features: int,
    context: int = 0,
    transforms: int = 4,
    hidden: Sequence[int] = (64, 64),
    reflections: int = 2,
    activation: str = "relu",
) -> Flow:
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

    Options: ``transforms``, ``reflections``; ``hidden`` and ``activation`` of the context
    networks (used only with ``context > 0``).
    """
    check_transforms(transforms)
    return Flow([Sylvester(features, context, tuple(hidden), reflections, flip=i % 2 == 1,
                           activation=activation) for i in range(transforms)])
