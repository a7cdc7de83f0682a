"""Rejection sampling: exactness (two-sample tests), acceptance rate, envelope violations, bounded work."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from scipy import stats

from pyroflows import Flow
from pyroflows.infer.sampling.rejection import (
    FlowRejector,
    RejectionError,
    RejectionResult,
    rejection_sample,
)
from pyroflows.transforms.triangular import LowerTriangularAffine

LOG_Z = 1.3
WEIGHTS = torch.tensor([0.3, 0.7], dtype=torch.float64)
LOCS = torch.tensor([[-1.5, 0.5], [1.0, -0.5]], dtype=torch.float64)
SCALE_TRILS = torch.stack(
    [
        torch.tensor([[0.6, 0.0], [0.3, 0.5]], dtype=torch.float64),
        torch.tensor([[0.8, 0.0], [-0.4, 0.7]], dtype=torch.float64),
    ]
)


def mixture() -> dist.MixtureSameFamily:
    """A known 2-D target: a two-component Gaussian mixture (exact samples are easy)."""
    return dist.MixtureSameFamily(
        dist.Categorical(WEIGHTS), dist.MultivariateNormal(LOCS, scale_tril=SCALE_TRILS)
    )


def log_target(x):
    return mixture().log_prob(x) + LOG_Z  # unnormalised: Z = exp(LOG_Z)


def gaussian_flow(loc, scale_tril) -> Flow:
    loc = torch.as_tensor(loc, dtype=torch.float64)
    return Flow(
        [LowerTriangularAffine(loc.shape[0], loc, torch.as_tensor(scale_tril, dtype=torch.float64))]
    ).double()


def energy_test(x, y, permutations=300, seed=0) -> float:
    """Permutation p-value of the energy distance between samples x and y (Szekely & Rizzo 2004);
    under the null the permutation distribution is exact."""
    z = torch.cat([x, y])
    d = torch.cdist(z, z)
    n, total = len(x), len(z)
    generator = torch.Generator().manual_seed(seed)
    # Column 0 is the observed split, the others random permutations; as indicator vectors m,
    # sum_{a,a'} d = m'Dm, sum_{b,b'} d = (1-m)'D(1-m), sum_{a,b} d = m'D(1-m).
    splits = [torch.arange(total)] + [
        torch.randperm(total, generator=generator) for _ in range(permutations)
    ]
    m = torch.zeros(total, len(splits), dtype=d.dtype)
    for j, index in enumerate(splits):
        m[index[:n], j] = 1.0
    dm = d @ m
    d1 = d.sum(1, keepdim=True)
    aa = (m * dm).sum(0)
    ab = ((1 - m) * dm).sum(0)
    bb = ((1 - m) * (d1 - dm)).sum(0)
    values = 2 * ab / (n * (total - n)) - aa / n**2 - bb / (total - n) ** 2
    observed, null = values[0], values[1:]
    return float(((null >= observed).sum() + 1) / (permutations + 1))


def test_samples_are_exact_and_acceptance_rate_matches():
    proposal = gaussian_flow([0.0, 0.0], 2.0 * torch.eye(2))
    result = rejection_sample(log_target, proposal, 2000, seed=0)
    assert isinstance(result, RejectionResult)
    assert result.samples.shape == (2000, 2) and result.log_M_estimated
    assert result.envelope_violations == 0
    generator_state = torch.get_rng_state()
    torch.manual_seed(123)
    exact = mixture().sample((2000,))
    torch.set_rng_state(generator_state)
    assert energy_test(result.samples[:1000], exact[:1000]) > 0.01
    for j in range(2):
        assert stats.ks_2samp(result.samples[:, j].numpy(), exact[:, j].numpy()).pvalue > 0.01
    # With a valid envelope the acceptance rate is Z / M.
    expected = math.exp(LOG_Z - result.log_M)
    assert abs(result.acceptance_rate - expected) < 3 * math.sqrt(
        expected * (1 - expected) / result.num_proposed
    )
    assert abs(result.log_evidence - LOG_Z) < 3 * result.log_evidence_se


def test_given_log_M_and_model_target():
    def model():
        pyro.sample("z", dist.Normal(torch.tensor(1.0, dtype=torch.float64), 0.5))

    proposal = gaussian_flow([1.0], [[1.0]])
    # max of log N(z; 1, .5) - log N(z; 1, 1) is log 2 at z = 1.
    result = rejection_sample(model, proposal, 3000, log_M=math.log(2.0), seed=0)
    assert result.envelope_violations == 0 and not result.log_M_estimated
    assert result.site_samples["z"].shape == (3000,)
    assert stats.kstest(result.site_samples["z"].numpy(), stats.norm(1.0, 0.5).cdf).pvalue > 0.01
    assert abs(result.acceptance_rate - 0.5) < 3 * math.sqrt(0.25 / result.num_proposed)


def test_heavy_tailed_target_warns_about_envelope_violations():
    cauchy = dist.StudentT(torch.tensor(1.0, dtype=torch.float64))
    proposal = gaussian_flow([0.0, 0.0], torch.eye(2))
    with (
        pytest.warns(UserWarning, match="exceeded the envelope"),
        pytest.warns(UserWarning, match="unbounded"),
    ):
        result = rejection_sample(
            lambda x: cauchy.log_prob(x).sum(-1), proposal, 2000, num_pilot=1000, seed=0
        )
    assert result.envelope_violations > 0
    assert result.max_excess > 0


def test_bounded_work_reports_the_acceptance_rate():
    far = gaussian_flow([8.0, 8.0], 0.5 * torch.eye(2))
    with pytest.raises(RejectionError, match="acceptance rate"):
        rejection_sample(
            log_target, far, 100, log_M=0.0, max_proposals=20_000, batch_size=5000, seed=0
        )
    with pytest.raises(RejectionError, match="acceptance rate 0"):
        rejection_sample(
            log_target,
            gaussian_flow([0.0, 0.0], torch.eye(2)),
            10,
            log_M=40.0,
            max_proposals=5000,
            seed=0,
        )


def test_nan_targets_are_rejected_and_counted():
    proposal = gaussian_flow([0.0, 0.0], 2.0 * torch.eye(2))

    def target(x):
        return torch.where(x[:, 1] > 2.0, torch.full_like(x[:, 1], math.nan), log_target(x))

    with pytest.warns(RuntimeWarning, match="NaN"):
        result = rejection_sample(target, proposal, 500, log_M=LOG_Z + math.log(16.0), seed=0)
    assert result.num_nan > 0
    assert (result.samples[:, 1] <= 2.0).all()


def test_bad_input():
    proposal = gaussian_flow([0.0, 0.0], torch.eye(2))
    with pytest.raises(ValueError, match="num_samples"):
        rejection_sample(log_target, proposal, 0)
    with pytest.raises(ValueError, match="dimension"):
        rejection_sample(lambda x: -(x[:, 2] ** 2), proposal, 10, log_M=0.0)


def test_flow_rejector_distribution():
    proposal = gaussian_flow([0.0, 0.0], 2.0 * torch.eye(2))
    torch.manual_seed(0)
    d = FlowRejector(log_target, proposal, num_pilot=20_000)
    x = d.sample((3000,))
    assert x.shape == (3000, 2)
    # The acceptance rate computed for the user matches what sampling observes.
    observed = d.observed_acceptance_rate
    se = math.sqrt(d.acceptance_rate_se**2 + observed * (1 - observed) / d.num_proposed)
    assert abs(d.acceptance_rate - observed) < 3 * se
    assert d.envelope_violations == 0
    # Its density is the target's, normalised by M times the acceptance rate.
    log_p = mixture().log_prob(x[:10])
    assert torch.allclose(
        d.log_prob(x[:10]), log_p, atol=4 * d.acceptance_rate_se / d.acceptance_rate
    )
    assert stats.ks_2samp(x[:, 0].numpy(), mixture().sample((3000,))[:, 0].numpy()).pvalue > 0.01

    def model():
        return pyro.sample("x", d)

    trace = poutine.trace(model).get_trace()
    assert trace.nodes["x"]["value"].shape == (2,)
    assert torch.isfinite(trace.log_prob_sum())
