"""Recurrent autoregressive preset: ``maf-rnn``."""

from __future__ import annotations

from typing import Any

from ..checks import check_choice, check_flag
from ..core import Flow
from ..transforms import AffineMap, ElementwiseMap, SplineMap
from ..transforms.recurrent import RecurrentAutoregressive
from .building import passes_options_to, split_options, stack
from .registry import register

__all__ = ["maf_rnn"]

MAPS = ("affine", "spline")


@register("maf-rnn")
@passes_options_to(RecurrentAutoregressive, AffineMap, SplineMap, fixed=("reverse",))
def maf_rnn(
    features: int,
    context: int = 0,
    transforms: int = 3,
    map: str = "affine",
    alternate: bool = True,
    **options: Any,
) -> Flow:
    """Masked autoregressive flow with recurrent conditioners, for sequences (MAF of
    Papamakarios et al. 2017, https://arxiv.org/abs/1705.07057 with the weight-tied LSTM conditioner of Oliva et al.,
    "Transformation Autoregressive Networks", ICML 2018).

    ``features`` is the sequence length times ``step``; the parameters do not depend on it, so
    ``flow_b.transforms.load_state_dict(flow_a.transforms.state_dict())`` moves a flow trained
    on one length to another, and each layer's ``inverse_and_ladj`` takes any length.
    Layers alternate the direction (left to right, right to left) unless ``alternate=False``,
    which keeps every layer left to right so that right-padding a sequence leaves the
    densities of its prefix unchanged (variable-length batches). **Fast direction:
    density** (one recurrent pass per layer); sampling steps through the sequence.

    The preset's own options: ``transforms``, ``map`` (``"affine"``, or ``"spline"`` for
    rational-quadratic splines) and ``alternate``. The others go to each
    :class:`~pyroflows.transforms.recurrent.RecurrentAutoregressive` layer (``hidden``:
    stacked recurrent widths, ``cell``, ``step``: values per position) or to its map, an
    :class:`~pyroflows.transforms.AffineMap` (``log_scale_bound``) or a
    :class:`~pyroflows.transforms.SplineMap` (``bins``, ``bound``); the other map's options
    are ignored.
    """
    layer, affine, spline = split_options(maf_rnn, options)
    check_choice("map", map, MAPS)
    check_flag("alternate", alternate)

    def make_map() -> ElementwiseMap:
        return AffineMap(**affine) if map == "affine" else SplineMap(**spline)

    return Flow(
        stack(
            transforms,
            lambda i: RecurrentAutoregressive(
                features, make_map(), context, reverse=alternate and i % 2 == 1, **layer
            ),
        )
    )
