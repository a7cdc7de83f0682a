"""pyroflows: normalizing flows and density destructors for Pyro."""

from . import flows, infer, nn, transforms
from .core import Flow, FlowDistribution, StandardNormal

__version__ = "0.1.0"

__all__ = ["Flow", "FlowDistribution", "StandardNormal", "flows", "infer", "nn", "transforms"]
