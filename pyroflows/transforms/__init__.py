"""Bijections: every flow family, each a Pyro ``TransformModule`` with a conditional form."""

from .autoregressive import MaskedAutoregressive
from .base import Bijection, Compose, ConditionedBijection, Inverse
from .coupling import Coupling, alternating_mask
from .elementwise import AdditiveMap, AffineMap, Elementwise, ElementwiseAffine, ElementwiseMap
from .linear import LULinear
from .normalization import ActNorm
from .permutation import Permutation, Reverse, random_permutation
from .splines import SplineMap

__all__ = [
    "ActNorm",
    "AdditiveMap",
    "AffineMap",
    "Bijection",
    "Compose",
    "ConditionedBijection",
    "Coupling",
    "Elementwise",
    "ElementwiseAffine",
    "ElementwiseMap",
    "Inverse",
    "LULinear",
    "MaskedAutoregressive",
    "Permutation",
    "Reverse",
    "SplineMap",
    "alternating_mask",
    "random_permutation",
]
