"""Bijections: every flow family, each a Pyro ``TransformModule`` with a conditional form."""

from .autoregressive import MaskedAutoregressive
from .base import Bijection, Compose, ConditionedBijection, Inverse
from .coupling import Coupling, alternating_mask
from .elementwise import (
    AdditiveMap,
    AffineMap,
    Elementwise,
    ElementwiseAffine,
    ElementwiseMap,
    InverseMap,
)
from .linear import LULinear
from .neural_autoregressive import BlockNeuralAutoregressive, SigmoidalMap
from .normalization import ActNorm
from .permutation import Permutation, Reverse, random_permutation
from .planar import AmortizedParameters, Planar
from .quadrature import clenshaw_curtis, gauss_legendre
from .radial import Radial
from .splines import SplineMap
from .sylvester import Sylvester
from .triangular import LowerTriangularAffine
from .umnn import UMNNMap

__all__ = [
    "ActNorm",
    "AdditiveMap",
    "AffineMap",
    "AmortizedParameters",
    "Bijection",
    "BlockNeuralAutoregressive",
    "Compose",
    "ConditionedBijection",
    "Coupling",
    "Elementwise",
    "ElementwiseAffine",
    "ElementwiseMap",
    "Inverse",
    "InverseMap",
    "LULinear",
    "LowerTriangularAffine",
    "MaskedAutoregressive",
    "Permutation",
    "Planar",
    "Radial",
    "Reverse",
    "SigmoidalMap",
    "SplineMap",
    "Sylvester",
    "UMNNMap",
    "alternating_mask",
    "clenshaw_curtis",
    "gauss_legendre",
    "random_permutation",
]
