"""Inference with flows: maximum-likelihood fitting (and, later, autoguides and proposals)."""

from .fit import FitResult, fit

__all__ = ["FitResult", "fit"]
