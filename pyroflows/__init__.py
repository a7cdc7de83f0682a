"""pyroflows: normalizing flows and density destructors for Pyro."""

from . import destructors, flows, infer, nn, transforms
from .core import Flow, FlowDistribution, StandardNormal

__version__ = "0.1.0"

__all__ = [
    "Flow",
    "FlowDistribution",
    "StandardNormal",
    "destructors",
    "flows",
    "infer",
    "nn",
    "transforms",
]
