"""Recurrent autoregressive preset: ``maf-rnn``."""

from __future__ import annotations

from collections.abc import Sequence

from ..core import Flow
from ..transforms import AffineMap, ElementwiseMap, SplineMap
from ..transforms.recurrent import RecurrentAutoregressive
from .registry import check_transforms, register

__all__ = ["maf_rnn"]


@register("maf-rnn")
def maf_rnn(
    features: int,
    context: int = 0,
    transforms: int = 3,
    hidden: Sequence[int] = (64,),
    cell: str = "lstm",
    map: str = "affine",
    step: int = 1,
    bins: int = 8,
    bound: float = 5.0,
    log_scale_bound: float = 3.0,
    alternate: bool = True,
) -> Flow:
    """Masked autoregressive flow with recurrent conditioners, for sequences (MAF of
    Papamakarios et al. 2017 with the weight-tied LSTM conditioner of Oliva et al.,
    "Transformation Autoregressive Networks", ICML 2018).

    ``features`` is the sequence length times ``step``; the parameters do not depend on it, so
    ``flow_b.transforms.load_state_dict(flow_a.transforms.state_dict())`` moves a flow trained
    on one length to another, and each layer's ``inverse_and_ladj`` takes any length.
    Layers alternate the direction (left to right, right to left) unless ``alternate=False``,
    which keeps every layer left to right so that right-padding a sequence leaves the
    densities of its prefix unchanged (variable-length batches). **Fast direction:
    density** (one recurrent pass per layer); sampling steps through the sequence.

    Options: ``transforms``, ``hidden`` (stacked recurrent widths), ``cell`` (``"lstm"``,
    ``"gru"``, ``"rnn"``), ``map`` (``"affine"``, or ``"spline"`` for rational-quadratic
    splines with ``bins`` on ``[-bound, bound]``), ``step`` (values per position),
    ``log_scale_bound`` (affine), ``alternate``.
    """
    check_transforms(transforms)
    if map not in ("affine", "spline"):
        raise ValueError(f"map must be 'affine' or 'spline', got {map!r}")

    def make_map() -> ElementwiseMap:
        return AffineMap(log_scale_bound) if map == "affine" else SplineMap(bins, bound)

    return Flow([
        RecurrentAutoregressive(features, make_map(), context, tuple(hidden), cell, step,
                                reverse=bool(alternate) and i % 2 == 1)
        for i in range(transforms)
    ])
