"""Adaptive importance sampling: weighted refits of the flow proposal until k-hat is good."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyroflows import Flow
from pyroflows.infer.sampling.adaptive import AdaptiveResult, adaptive_importance
from pyroflows.transforms import ElementwiseAffine

MU = torch.tensor([3.0, -2.0], dtype=torch.float64)
SD = torch.tensor([0.3, 3.0], dtype=torch.float64)
LOG_Z = 2.0


def log_target(x):
    return dist.Normal(MU, SD).log_prob(x).sum(-1) + LOG_Z


def affine_flow() -> Flow:
    return Flow([ElementwiseAffine(2)]).double()


def test_refits_until_khat_is_good():
    flow = affine_flow()
    out = adaptive_importance(
        log_target, flow, 4000, rounds=6, fit_options={"epochs": 15, "lr": 0.05, "batch_size": 1000}
    )
    assert isinstance(out, AdaptiveResult) and out.flow is flow
    assert out.history[0]["khat"] > 0.7  # N(0, I) is a poor proposal for this target
    assert out.converged and out.result.khat <= 0.3
    assert len(out.history) >= 2 and out.history[-1]["khat"] == out.result.khat
    assert abs(out.result.log_evidence - LOG_Z) < 3 * out.result.log_evidence_se
    mean, mcse = out.result.expectation(lambda x: x)
    assert ((mean - MU).abs() < 3 * mcse).all()


def test_no_rounds_reports_the_initial_proposal():
    with pytest.warns(UserWarning, match="k-hat"):
        out = adaptive_importance(log_target, affine_flow(), 2000, rounds=0)
    assert not out.converged and len(out.history) == 1


def test_bad_input():
    with pytest.raises(TypeError, match="Flow"):
        adaptive_importance(log_target, affine_flow()(), 100)
    with pytest.raises(ValueError, match="rounds"):
        adaptive_importance(log_target, affine_flow(), 100, rounds=-1)
    with pytest.raises(ValueError, match="num_samples"):
        adaptive_importance(log_target, affine_flow(), 0)


def test_autoflow_guide_is_refitted_on_a_model():
    from test_importance import Y, conjugate_model, exact_log_evidence

    from pyroflows.infer.guides.autoguide import AutoFlow

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoFlow(conjugate_model, model_args=(Y,), transforms=1, hidden=(8, 8))
    before = {k: v.detach().clone() for k, v in guide.flow.state_dict().items()}
    out = adaptive_importance(
        conjugate_model,
        guide,
        4000,
        rounds=2,
        model_args=(Y,),
        fit_options={"epochs": 5, "batch_size": 1000},
    )
    assert out.flow is guide.flow
    assert len(out.history) >= 1 and out.result.samples.shape == (4000, 2)
    assert out.result.khat < 0.7
    assert abs(out.result.log_evidence - exact_log_evidence()) < 3 * out.result.log_evidence_se
    refitted = any(not torch.equal(before[k], v) for k, v in guide.flow.state_dict().items())
    khats = [h["khat"] for h in out.history]
    kept = len(khats) - 1 if out.converged else khats.index(min(khats))
    assert refitted == (kept > 0)
    pyro.clear_param_store()


@pytest.mark.slow
def test_refit_on_annealed_particles_reaches_a_distant_target():
    """N(0, I) against a target 10 sd away: its own weights fall on a handful of draws and
    a refit learns little; SMC particles from it reach the target and one refit suffices."""
    far = torch.tensor([8.0, -6.0], dtype=torch.float64)

    def log_far(x):  # noqa: ANN001, ANN202
        return dist.Normal(far, SD).log_prob(x).sum(-1) + LOG_Z

    fit_options = {"epochs": 100, "lr": 0.1, "batch_size": 1000}
    own = adaptive_importance(log_far, affine_flow(), 1000, rounds=1, fit_options=fit_options)
    assert not own.converged and own.history[-1]["khat"] > 0.7
    out = adaptive_importance(
        log_far, affine_flow(), 1000, rounds=1, fit_options=fit_options, refit_draws="annealed"
    )
    assert out.converged and out.history[0]["khat"] > 0.7
    assert abs(out.history[0]["annealed_log_evidence"] - LOG_Z) < 0.1
    assert abs(out.result.log_evidence - LOG_Z) < 3 * out.result.log_evidence_se
    with pytest.raises(ValueError, match="refit_draws"):
        adaptive_importance(log_far, affine_flow(), 100, refit_draws="smc")
