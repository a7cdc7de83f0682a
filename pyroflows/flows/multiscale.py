r"""Multi-scale image presets: ``glow`` and ``realnvp-image``.

Both are built from the same pieces (:mod:`pyroflows.transforms.multiscale`,
:class:`~pyroflows.transforms.ImageCoupling`, :class:`~pyroflows.transforms.ChannelActNorm`,
:class:`~pyroflows.transforms.InvertibleConv1x1`) and registered as image presets
(``event_dims=3``): ``build("glow", features=(C, H, W), ...)`` returns a :class:`~pyroflows.Flow`
with event shape ``(C, H, W)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..core import Flow
from ..transforms import (
    AdditiveMap,
    AffineMap,
    Bijection,
    ChannelActNorm,
    Compose,
    ImageCoupling,
    InvertibleConv1x1,
    MultiScale,
    Squeeze,
)
from ..transforms.conventions import check_image_shape
from .registry import check_transforms, register

__all__ = ["glow", "realnvp_image"]


def _widths(hidden: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(hidden, int) and not isinstance(hidden, bool):
        return (hidden, hidden)
    if isinstance(hidden, str) or not isinstance(hidden, Sequence):
        raise TypeError(f"hidden must be an int or a sequence of channel counts, got {hidden!r}")
    return tuple(hidden)


def _check_levels(levels: int, shape: tuple[int, int, int], squeezes: int, name: str) -> None:
    if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
        raise ValueError(f"levels must be a positive integer, got {levels!r}")
    step = 2**squeezes
    if shape[1] % step or shape[2] % step:
        raise ValueError(
            f"{name} with levels={levels} squeezes {squeezes} times: height and width must be "
            f"multiples of {step}, got shape {shape}"
        )


def _nest(heads: list[list[Bijection]]) -> Bijection:
    """Scales' heads (each listed base side first), finest first, into nested MultiScale."""
    inner: Bijection = Compose(heads[-1])
    for head in reversed(heads[:-1]):
        inner = MultiScale(Compose(head), inner)
    return inner


@register("glow", event_dims=3)
def glow(
    features: tuple[int, int, int],
    context: int = 0,
    transforms: int = 4,
    hidden: int | Sequence[int] = (128, 128),
    levels: int = 2,
    affine: bool = True,
    split_prior: bool = True,
    log_scale_bound: float = 3.0,
    activation: str = "relu",
) -> Flow:
    r"""Glow (Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018, https://arxiv.org/abs/1807.03039).

    ``levels`` scales; at each, in the density direction: squeeze, then ``transforms`` steps of
    ActNorm (per channel, data-dependent initialisation), invertible 1x1 convolution (LU) and a
    channel coupling (affine with a soft-clamped log-scale, or additive with ``affine=False``)
    with Glow's conv-ReLU-conv-ReLU-zero-conv network; then half of the channels is factored
    out (not at the last scale). With ``split_prior`` the factored half gets Glow's learned
    prior :math:`\mathcal{N}(\mu(h_1), \sigma(h_1)^2)`, written as one more affine coupling.
    Height and width must be multiples of :math:`2^\text{levels}`.

    Options: ``transforms`` (steps per scale), ``hidden`` (conditioner channels, an int or
    widths), ``levels``, ``affine``, ``split_prior``, ``log_scale_bound``, ``activation``;
    ``context``: class-conditional through a context vector broadcast into every conditioner.
    """
    shape = check_image_shape(features, "features")
    check_transforms(transforms)
    _check_levels(levels, shape, levels, "glow")
    widths = _widths(hidden)
    make_map = (lambda: AffineMap(log_scale_bound)) if affine else AdditiveMap
    heads: list[list[Bijection]] = []
    c, h, w = shape
    for level in range(levels):
        squeezed = (4 * c, h // 2, w // 2)
        # Density order: squeeze, steps (actnorm, 1x1 conv, coupling), split prior.
        density: list[Bijection] = [Squeeze((c, h, w))]
        for k in range(transforms):
            density += [
                ChannelActNorm(squeezed),
                InvertibleConv1x1(squeezed, seed=level * transforms + k),
                ImageCoupling(
                    squeezed,
                    make_map(),
                    "channel",
                    k % 2,
                    context,
                    hidden=widths,
                    conditioner="glow",
                    activation=activation,
                ),
            ]
        if split_prior and level < levels - 1:
            density.append(
                ImageCoupling(
                    squeezed,
                    AffineMap(log_scale_bound),
                    "channel",
                    0,
                    context,
                    hidden=widths,
                    conditioner="glow",
                    activation=activation,
                )
            )
        heads.append(density[::-1])
        c, h, w = 2 * c, h // 2, w // 2
    return Flow([_nest(heads)])


@register("realnvp-image", event_dims=3)
def realnvp_image(
    features: tuple[int, int, int],
    context: int = 0,
    transforms: int = 3,
    hidden: int | Sequence[int] = (64, 64),
    levels: int = 2,
    actnorm: bool = True,
    log_scale_bound: float = 3.0,
    activation: str = "relu",
) -> Flow:
    r"""RealNVP's multi-scale image flow (Dinh, Sohl-Dickstein & Bengio, "Density estimation using
    Real NVP", ICLR 2017).

    ``levels`` scales; at each but the last, in the density direction: ``transforms`` affine
    couplings with alternating checkerboard masks, a squeeze, ``transforms`` couplings with
    alternating channel masks, and half of the channels factored out; the last scale has
    ``transforms + 1`` checkerboard couplings (the paper: 3, 3 and 4). The conditioner is a
    residual convolutional network with ``len(hidden)`` blocks of ``hidden[0]`` channels.
    The paper's batch normalisation is replaced by a per-channel ActNorm before each coupling
    (``actnorm=True``), which is the same map at training and test time. Height and width must
    be multiples of :math:`2^{\text{levels} - 1}`.

    Options: ``transforms``, ``hidden``, ``levels``, ``actnorm``, ``log_scale_bound``,
    ``activation``; ``context`` as for ``glow``.
    """
    shape = check_image_shape(features, "features")
    check_transforms(transforms)
    _check_levels(levels, shape, levels - 1, "realnvp-image")
    widths = _widths(hidden)

    def couplings(at: tuple[int, int, int], mask: str, count: int) -> list[Bijection]:
        out: list[Bijection] = []
        for k in range(count):
            if actnorm:
                out.append(ChannelActNorm(at))
            out.append(
                ImageCoupling(
                    at,
                    AffineMap(log_scale_bound),
                    mask,
                    k % 2,
                    context,
                    hidden=widths,
                    conditioner="resnet",
                    activation=activation,
                )
            )
        return out

    heads: list[list[Bijection]] = []
    c, h, w = shape
    for level in range(levels):
        if level == levels - 1:
            density = couplings((c, h, w), "checkerboard", transforms + 1)
        else:
            squeezed = (4 * c, h // 2, w // 2)
            density = [
                *couplings((c, h, w), "checkerboard", transforms),
                Squeeze((c, h, w)),
                *couplings(squeezed, "channel", transforms),
            ]
            c, h, w = 2 * c, h // 2, w // 2
        heads.append(density[::-1])
    return Flow([_nest(heads)])
