"""Density destructors (Inouye & Ravikumar, "Deep density destructors", ICML 2018).

A destructor maps data onto the unit cube, its log-determinant is its density's log-pdf, and
it is fitted without gradients (closed form, EM, greedy splits). Shallow destructors stack
greedily into a :class:`DeepDestructor`; every destructor is a pyroflows bijection (a Pyro
``TransformModule``) and turns into a :class:`~pyroflows.Flow` with ``as_flow()``.

Registry: ``build(name, features, **options)`` and ``available()``.
"""

from .base import (
    REAL,
    UNIT,
    Chain,
    Destructor,
    DomainConstraint,
    IdentityDestructor,
    InverseNormalCdf,
    StandardNormalCdf,
    UnitCube,
)
from .copula import CopulaDestructor
from .deep import DeepDestructor
from .gaussian import GaussianDestructor
from .independent import BetaDestructor, HistogramDestructor, NormalCdfDestructor
from .mixture import MixtureDestructor
from .registry import available, build, register
from .rotation import FixedRotation, PCARotation, RandomRotation, random_orthogonal
from .tree import TreeDestructor

for _name, _cls in [
    ("histogram", HistogramDestructor),
    ("beta", BetaDestructor),
    ("normal-cdf", NormalCdfDestructor),
    ("gaussian", GaussianDestructor),
    ("mixture", MixtureDestructor),
    ("tree", TreeDestructor),
    ("copula", CopulaDestructor),
    ("deep", DeepDestructor),
]:
    register(_name)(_cls)

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
