"""Density-ratio reweighting between two populations (the review's two-populations example)."""

from __future__ import annotations

import math

import pytest
import torch

from pyroflows import Flow
from pyroflows.infer.sampling.ratio import DensityRatioResult, density_ratio
from pyroflows.transforms import ElementwiseAffine

SHIFT = torch.tensor([0.5, -0.3], dtype=torch.float64)
# Outcome f(x) = x0 + x1^2 / 2; over the target population N(SHIFT, I) its mean is
# SHIFT0 + (1 + SHIFT1^2) / 2.
TRUTH = 0.5 + 0.5 * (1 + 0.3**2)


def populations(n=4000, seed=0, shift=SHIFT):
    generator = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    x2 = torch.randn(n, 2, generator=generator, dtype=torch.float64) + shift
    y1 = (
        x1[:, 0]
        + 0.5 * x1[:, 1] ** 2
        + 0.1 * torch.randn(n, generator=generator, dtype=torch.float64)
    )
    return x1, x2, y1


def unit_gaussian(loc) -> Flow:
    loc = torch.as_tensor(loc, dtype=torch.float64)
    return Flow([ElementwiseAffine(2, loc, torch.ones(2, dtype=torch.float64))]).double()


def test_known_ratio_estimate_within_three_mcse():
    x1, x2, y1 = populations()
    result = density_ratio(x1, x2, (unit_gaussian([0.0, 0.0]), unit_gaussian(SHIFT)))
    assert isinstance(result, DensityRatioResult)
    assert result.log_weights.shape == (4000,)
    exact = SHIFT @ x1.T - 0.5 * (SHIFT @ SHIFT)  # log N(x; s, I) - log N(x; 0, I)
    assert torch.allclose(result.log_weights, exact, atol=1e-6)  # the flow was built in float32
    assert result.khat < result.khat_threshold and result.ess > 1000
    estimate, mcse = result.expectation(y1)
    assert abs(float(estimate) - TRUTH) < 3 * float(mcse)
    raw, raw_mcse = result.expectation(y1, self_normalized=False)
    assert abs(float(raw) - TRUTH) < 3 * float(raw_mcse)
    # E_source[p2/p1] = 1.
    assert abs(result.log_evidence) < 3 * result.log_evidence_se
    # A function of the source points works as well as the outcomes themselves.
    mean, _ = result.expectation(lambda x: x[:, 0])
    assert abs(float(mean) - 0.5) < 0.1
    assert torch.allclose(result.log_ratio(x1[:5]), exact[:5], atol=1e-6)


def test_fitted_flows_estimate_within_three_mcse():
    x1, x2, y1 = populations(n=3000, seed=1)
    result = density_ratio(
        x1,
        x2,
        "maf",
        flow_options={"transforms": 2, "hidden": (16, 16)},
        fit_options={"epochs": 25, "seed": 0, "lr": 3e-3},
    )
    assert result.source_fit is not None and result.target_fit is not None
    assert result.khat < 0.7
    estimate, mcse = result.expectation(y1)
    assert abs(float(estimate) - TRUTH) < 3 * float(mcse)


def test_non_overlapping_populations_are_flagged():
    x1, x2, _ = populations(shift=torch.tensor([4.0, 0.0], dtype=torch.float64))
    with pytest.warns(UserWarning, match="k-hat"):
        result = density_ratio(x1, x2, (unit_gaussian([0.0, 0.0]), unit_gaussian([4.0, 0.0])))
    assert result.khat > 0.7


def test_bad_input():
    x1, x2, y1 = populations(n=50)
    with pytest.raises(ValueError, match="x_target"):
        density_ratio(x1, x2[:, :1], "maf")
    bad = x1.clone()
    bad[3, 1] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        density_ratio(bad, x2, "maf")
    with pytest.raises(TypeError, match="registry name"):
        density_ratio(x1, x2, 3)
    with pytest.raises(ValueError, match="features"):
        density_ratio(x1[:, :1], x2, (unit_gaussian([0.0, 0.0]), unit_gaussian(SHIFT)))
    result = density_ratio(x1, x2, (unit_gaussian([0.0, 0.0]), unit_gaussian(SHIFT)))
    with pytest.raises(ValueError, match="one value"):
        result.expectation(y1[:10])
