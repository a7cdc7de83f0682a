"""pyroflows: normalizing flows and density destructors for Pyro."""

from . import destructors, flows, infer, nn, transforms
from .core import Flow, FlowDistribution, StandardNormal
from .protocol import DensityModel
from .registry import REGISTRY

__version__ = "0.1.0"  # the only copy: pyproject.toml (statically) and docs/conf.py read it

__all__ = [
    "REGISTRY",
    "DensityModel",
    "Flow",
    "FlowDistribution",
    "StandardNormal",
    "destructors",
    "flows",
    "infer",
    "nn",
    "transforms",
]
