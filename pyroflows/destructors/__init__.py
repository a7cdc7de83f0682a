"""Density destructors (Inouye & Ravikumar, "Deep density destructors", ICML 2018, https://proceedings.mlr.press/v80/inouye18a.html).

A destructor maps data onto the unit cube, its log-determinant is its density's log-pdf, and
it is fitted without gradients (closed form, EM, greedy splits). Shallow destructors stack
greedily into a :class:`DeepDestructor`; every destructor is a pyroflows bijection (a Pyro
``TransformModule``) and turns into a :class:`~pyroflows.Flow` with ``as_flow()``.

Registry: ``build(name, features, **options)`` and ``available()``, a view of the one
registry (:data:`pyroflows.registry.REGISTRY`); each class registers itself with
``@register(name)``.
"""

from .base import Destructor, IdentityDestructor
from .chain import Chain
from .copula import CopulaDestructor
from .cube import InverseNormalCdf, StandardNormalCdf, UnitCube
from .deep import DeepDestructor
from .domain import REAL, UNIT, DomainConstraint
from .gaussian import GaussianDestructor
from .independent import BetaDestructor, HistogramDestructor, NormalCdfDestructor
from .mixture import MixtureDestructor
from .registry import available, build, register
from .rotation import FixedRotation, PCARotation, RandomRotation, random_orthogonal
from .tree import TreeDestructor

__all__ = [
    "REAL",
    "UNIT",
    "BetaDestructor",
    "Chain",
    "CopulaDestructor",
    "DeepDestructor",
    "Destructor",
    "DomainConstraint",
    "FixedRotation",
    "GaussianDestructor",
    "HistogramDestructor",
    "IdentityDestructor",
    "InverseNormalCdf",
    "MixtureDestructor",
    "NormalCdfDestructor",
    "PCARotation",
    "RandomRotation",
    "StandardNormalCdf",
    "TreeDestructor",
    "UnitCube",
    "available",
    "build",
    "random_orthogonal",
    "register",
]
