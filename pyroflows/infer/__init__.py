"""Inference with flows: maximum-likelihood fitting, flow autoguides and variational EM,
importance sampling (plain, adaptive, annealed / SMC), flow-preconditioned NUTS, rejection
sampling, density ratios, a one-call SVI fit of a guide, particle objectives (IWAE, Renyi,
chi-square) and VSBC."""

from .arviz import to_inference_data
from .fitting.callbacks import Callback, EarlyStopping, FitState, FreshData, StepBudget, TimeBudget
from .fitting.dequantized import Dequantized
from .fitting.finetune import fine_tune
from .fitting.fit import FitResult, fit
from .guides.amortized import AutoAmortizedFlow
from .guides.autoguide import AutoFlow
from .guides.em import VariationalEM
from .guides.meanfield import AutoMeanFieldFlow
from .objectives import IWAE, ChiSquare, ParticleObjective, Renyi
from .sampling.adaptive import AdaptiveResult, adaptive_importance
from .sampling.annealed import annealed_importance
from .sampling.guide_weights import guide_log_weights, posterior_predictive
from .sampling.importance import ImportanceResult, importance
from .sampling.neutra import NeuTraMCMC, neutra_mcmc
from .sampling.psis import khat_threshold, psis
from .sampling.ratio import DensityRatioResult, density_ratio
from .sampling.rejection import (
    FlowRejector,
    RejectionError,
    RejectionResult,
    estimate_log_M,
    rejection_sample,
)
from .sampling.targets_and_proposals import ModelTarget
from .svi import GuideFitResult, fit_guide
from .vsbc import VSBCResult, vsbc

__all__ = [
    "AdaptiveResult",
    "AutoAmortizedFlow",
    "AutoFlow",
    "AutoMeanFieldFlow",
    "Callback",
    "ChiSquare",
    "DensityRatioResult",
    "Dequantized",
    "EarlyStopping",
    "FitResult",
    "FitState",
    "FlowRejector",
    "FreshData",
    "GuideFitResult",
    "IWAE",
    "ImportanceResult",
    "ModelTarget",
    "NeuTraMCMC",
    "ParticleObjective",
    "RejectionError",
    "RejectionResult",
    "Renyi",
    "StepBudget",
    "TimeBudget",
    "VSBCResult",
    "VariationalEM",
    "adaptive_importance",
    "annealed_importance",
    "density_ratio",
    "estimate_log_M",
    "fine_tune",
    "fit",
    "fit_guide",
    "guide_log_weights",
    "importance",
    "khat_threshold",
    "neutra_mcmc",
    "posterior_predictive",
    "psis",
    "rejection_sample",
    "to_inference_data",
    "vsbc",
]
