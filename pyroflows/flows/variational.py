r"""The ``nsf-iaf`` preset: a sampling-fast spline flow for variational posteriors (the flow
autoguides' default).

A variational guide draws samples and evaluates their density in the same pass, so its layers
are one pass in the sampling direction (inverse autoregressive orientation, Kingma et al.
2016). Splines alone cannot change scale outside their interval, which posteriors such as
Neal's funnel need; an affine layer at the base side and an affine stage after each spline
provide it, the spline the shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..core import Flow
from ..transforms import AffineMap, ElementwiseMap, Inverse, InverseMap, MaskedAutoregressive
from ..transforms.affine_spline import AffineSplineMap
from .autoregressive import orderings
from .registry import check_transforms, register

__all__ = ["inverse_autoregressive", "nsf_iaf"]


def inverse_autoregressive(
    features: int, map: ElementwiseMap, context: int = 0, **options: Any
) -> Inverse:
    r"""Inverse autoregressive layer :math:`x_i = \tau(z_i;\ \theta_i(z_{<i}, c))`.

    The parameters come from the *base-side* values, so sampling with its log-density is one
    MADE pass (``fast_direction = "forward"``); the inverse (density of external points) takes
    ``features`` passes. Built from the shared pieces:
    ``Inverse(MaskedAutoregressive(features, InverseMap(map), context, **options))``, so the
    options are :class:`~pyroflows.transforms.MaskedAutoregressive`'s (``hidden``, ``order``,
    ``activation``, ``residual``). Shapes: (..., features) in and out, context (..., context).

    Example:
        >>> layer = inverse_autoregressive(3, AffineMap(), hidden=(8,))
        >>> layer.fast_direction
        'forward'
    """
    return Inverse(MaskedAutoregressive(features, InverseMap(map), context, **options))


@register("nsf-iaf")
def nsf_iaf(
    features: int,
    context: int = 0,
    transforms: int = 2,
    hidden: Sequence[int] = (32, 32),
    bins: int = 4,
    bound: float = 5.0,
    log_scale_bound: float = 6.0,
    activation: str = "relu",
    affine_first: bool = True,
    tails: str = "identity",
) -> Flow:
    r"""Inverse autoregressive flow with spline and affine stages (the guides' default).

    ``transforms`` :func:`inverse_autoregressive` layers alternating the natural and the
    reversed order. With ``affine_first`` and ``transforms >= 2`` the first layer (at the
    base side, natural order) has the affine transformer :math:`x_i = t_i + e^{s_i} z_i`
    (:class:`~pyroflows.transforms.AffineMap`, log-scale soft-clamped to
    ``log_scale_bound``); every other layer has an
    :class:`~pyroflows.transforms.affine_spline.AffineSplineMap`,
    :math:`x_i = t_i + e^{s_i} g_i(z_i)` with :math:`g_i` a rational-quadratic spline
    (Durkan et al. 2019, https://arxiv.org/abs/1906.04032). **Fast direction: sampling** (``rsample_and_log_prob`` is one MADE
    pass per layer); ``log_prob`` of external points takes ``features`` passes per layer.
    Starts as the identity map. Shapes: ``features`` in, ``features`` out.

    Unlike ``nsf`` (spline-only autoregressive layers, fast density), this is the flow
    ``AutoFlow``, ``AutoMeanFieldFlow`` and ``AutoAmortizedFlow`` use by default.

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
      (0.13-0.16);
    * ``tails="identity"``: ``"linear"`` (learned tail slopes) removed the far outliers that
      identity tails give the non-centred eight schools (worst sd ratio at most 1.27 on eight
      seeds, against up to 2.63) and fit the banana better (KL 0.087 against 0.118), but did
      worse on the centred eight schools and on a mixture's variational EM at one seed each
      (``docs/choosing.rst``).

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
            an ``AffineSplineMap`` one).
        tails: the splines' tails, ``"identity"`` or ``"linear"`` (slopes learned, see
            :class:`~pyroflows.transforms.SplineMap`).

    Raises:
        ValueError: ``transforms < 1``. TypeError: a non-bool ``affine_first``.

    Example:
        >>> flow = pyroflows.flows.build("nsf-iaf", 3)
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
        map = (
            AffineMap(log_scale_bound)
            if affine
            else AffineSplineMap(bins, bound, log_scale_bound, tails)
        )
        layers.append(
            inverse_autoregressive(
                features, map, context, hidden=hidden, order=order, activation=activation
            )
        )
    return Flow(layers)
