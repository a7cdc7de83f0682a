"""Bijections: every flow family, each a Pyro ``TransformModule`` with a conditional form.

One core (:class:`Bijection`, :class:`Compose`, :class:`Inverse`,
:class:`ConditionedBijection`) serves every event shape: vectors ``(D,)`` and images
``(C, H, W)``.
"""

from ..numerics.quadrature import clenshaw_curtis, gauss_legendre
from .autoregressive import MaskedAutoregressive
from .base import Bijection, Compose, ConditionedBijection, Inverse
from .continuous import ContinuousFlow, ODENet
from .conv1x1 import InvertibleConv1x1
from .coupling import Coupling, alternating_mask, checkerboard_mask
from .elementwise import (
    AdditiveMap,
    AffineMap,
    Elementwise,
    ElementwiseAffine,
    ElementwiseMap,
    InverseMap,
)
from .gaussianization import GaussianizationMap, MarginalGaussianization
from .image_coupling import ImageCoupling
from .linear import LULinear
from .multiscale import MultiScale, Squeeze
from .neural_autoregressive import BlockNeuralAutoregressive, SigmoidalMap
from .normalization import ActNorm, ChannelActNorm
from .orthogonal import HouseholderRotation
from .permutation import Permutation, Reverse, random_permutation
from .planar import Planar
from .radial import Radial
from .recurrent import RecurrentAutoregressive
from .residual import ResidualBlock
from .reversible import ReversibleCompose, is_exactly_invertible
from .saved_tensors import SavedTensorMeter
from .splines import SplineMap
from .sylvester import Sylvester
from .triangular import LowerTriangularAffine
from .umnn import UMNNMap

__all__ = [
    "ActNorm",
    "ChannelActNorm",
    "ImageCoupling",
    "InvertibleConv1x1",
    "MultiScale",
    "Squeeze",
    "checkerboard_mask",
    "AdditiveMap",
    "AffineMap",
    "Bijection",
    "BlockNeuralAutoregressive",
    "Compose",
    "ConditionedBijection",
    "Coupling",
    "Elementwise",
    "ElementwiseAffine",
    "ElementwiseMap",
    "ContinuousFlow",
    "GaussianizationMap",
    "HouseholderRotation",
    "Inverse",
    "InverseMap",
    "LULinear",
    "LowerTriangularAffine",
    "MarginalGaussianization",
    "ODENet",
    "MaskedAutoregressive",
    "Permutation",
    "Planar",
    "Radial",
    "RecurrentAutoregressive",
    "ResidualBlock",
    "Reverse",
    "ReversibleCompose",
    "SavedTensorMeter",
    "SigmoidalMap",
    "SplineMap",
    "Sylvester",
    "UMNNMap",
    "alternating_mask",
    "clenshaw_curtis",
    "gauss_legendre",
    "is_exactly_invertible",
    "random_permutation",
]
