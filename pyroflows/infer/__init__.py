"""Inference with flows: maximum-likelihood fitting, flow autoguides and variational EM,
importance and rejection sampling, density ratios."""

from .adaptive import AdaptiveResult, adaptive_importance
from .amortized import AutoAmortizedFlow
from .arviz import to_inference_data
from .autoguide import AutoFlow
from .em import VariationalEM
from .fit import FitResult, fit
from .importance import ImportanceResult, importance
from .meanfield import AutoMeanFieldFlow
from .psis import khat_threshold, psis
from .ratio import DensityRatioResult, density_ratio
from .rejection import (
    FlowRejector,
    RejectionError,
    RejectionResult,
    estimate_log_M,
    rejection_sample,
)
from .targets import ModelTarget
from .weights import guide_log_weights

__all__ = [
    "AdaptiveResult",
    "AutoAmortizedFlow",
    "AutoFlow",
    "AutoMeanFieldFlow",
    "DensityRatioResult",
    "FitResult",
    "FlowRejector",
    "ImportanceResult",
    "ModelTarget",
    "RejectionError",
    "RejectionResult",
    "VariationalEM",
    "adaptive_importance",
    "density_ratio",
    "estimate_log_M",
    "fit",
    "guide_log_weights",
    "importance",
    "khat_threshold",
    "psis",
    "rejection_sample",
    "to_inference_data",
]
