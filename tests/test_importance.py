"""Importance sampling: known answers (log Z, its SE), PSIS k-hat, NaN targets, bad input."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyroflows import Flow
from pyroflows.infer import AutoFlow
from pyroflows.infer.sampling.importance import ImportanceResult, importance
from pyroflows.infer.sampling.psis import khat_threshold, log_evidence, weighted_mean_and_mcse
from pyroflows.infer.sampling.targets_and_proposals import ModelTarget
from pyroflows.transforms import ElementwiseAffine
from pyroflows.transforms.triangular import LowerTriangularAffine


def gaussian_flow(loc, scale_tril, device="cpu", dtype=torch.float64) -> Flow:
    loc = torch.as_tensor(loc, dtype=torch.float64)
    L = torch.as_tensor(scale_tril, dtype=torch.float64)
    return Flow([LowerTriangularAffine(loc.shape[0], loc, L)]).to(device=device, dtype=dtype)


MEAN = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
COV = torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.8, -0.2], [0.0, -0.2, 1.5]], dtype=torch.float64)
LOG_Z = 2.5  # the target is LOG_Z + log N(x; MEAN, COV): its normaliser is exp(LOG_Z)


def gaussian_target(device="cpu"):
    normal = dist.MultivariateNormal(MEAN.to(device), COV.to(device))
    return lambda x: normal.log_prob(x.double()).to(x.dtype) + LOG_Z


def test_gaussian_log_evidence_within_three_se(device):
    flow = gaussian_flow(MEAN + 0.2, 1.3 * torch.linalg.cholesky(COV), device)
    result = importance(gaussian_target(device), flow, 20_000, seed=1)
    assert isinstance(result, ImportanceResult)
    assert result.log_weights.shape == (20_000,) and result.samples.shape == (20_000, 3)
    assert result.log_weights.device.type == torch.device(device).type
    assert abs(result.log_evidence - LOG_Z) < 3 * result.log_evidence_se
    assert result.khat < result.khat_threshold == 0.7
    assert 5_000 < result.ess <= 20_000
    assert torch.allclose(result.normalized_weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.allclose(result.pareto_weights.sum().cpu(), torch.tensor(1.0, dtype=torch.float64))
    mean, mcse = result.expectation(lambda x: x)
    assert ((mean.cpu() - MEAN).abs() < 3 * mcse.cpu()).all()


def test_reported_se_matches_spread_over_200_repetitions():
    """One vectorised run of 200 x 1000 draws, split into 200 independent repetitions."""
    reps, S = 200, 1000
    flow = gaussian_flow(MEAN - 0.3, 1.25 * torch.linalg.cholesky(COV))
    big = importance(gaussian_target(), flow, reps * S, seed=2, warn=False)
    log_z, se = log_evidence(big.log_weights.reshape(reps, S))
    ratio = float(log_z.std() / se.pow(2).mean().sqrt())
    assert 0.8 < ratio < 1.2, ratio
    # The result's own SE is this same formula.
    one = importance(gaussian_target(), flow, S, seed=3)
    assert one.log_evidence_se == pytest.approx(float(log_evidence(one.log_weights)[1]))
    # The MCSE of a self-normalised mean also matches the spread of the estimates.
    x = big.samples.reshape(reps, S, 3)[..., 0]
    lw = big.log_weights.reshape(reps, S)
    pairs = [weighted_mean_and_mcse(x[r], lw[r]) for r in range(reps)]
    estimates = torch.stack([p[0] for p in pairs])
    mcse = torch.stack([p[1] for p in pairs])
    ratio = float(estimates.std() / mcse.pow(2).mean().sqrt())
    assert 0.8 < ratio < 1.2, ratio


def two_mode_target(x):
    """Equal mixture of N((-3, 0), I) and N((3, 0), I) in 2-D (normalised: log Z = 0)."""
    shift = torch.tensor([3.0, 0.0], dtype=x.dtype)
    a = dist.Normal(-shift, 1.0).log_prob(x).sum(-1)
    b = dist.Normal(shift, 1.0).log_prob(x).sum(-1)
    return torch.logaddexp(a, b) - math.log(2)


def test_khat_flags_a_proposal_missing_a_mode():
    one_mode = gaussian_flow([3.0, 0.0], torch.eye(2))
    with pytest.warns(UserWarning, match="k-hat"):
        bad = importance(two_mode_target, one_mode, 4000, seed=0)
    assert bad.khat > 0.7
    assert not bad.reliable
    good_flow = gaussian_flow([0.0, 0.0], torch.diag(torch.tensor([4.0, 1.5])))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        good = importance(two_mode_target, good_flow, 4000, seed=0)
    assert good.khat < good.khat_threshold
    assert abs(good.log_evidence) < 3 * good.log_evidence_se


def test_khat_threshold():
    assert khat_threshold(100) == pytest.approx(0.5)
    assert khat_threshold(1000) == pytest.approx(1 - 1 / 3)
    assert khat_threshold(10**7) == 0.7


def test_defensive_mixture_rescues_a_light_tailed_proposal():
    narrow = gaussian_flow(MEAN, 0.3 * torch.linalg.cholesky(COV))  # true k = 1 - 0.3^2
    with pytest.warns(UserWarning, match="k-hat"):
        plain = importance(gaussian_target(), narrow, 8000, seed=0)
    mixed = importance(gaussian_target(), narrow, 8000, seed=0, defensive=0.2)
    assert plain.khat > 0.7 > mixed.khat
    assert abs(mixed.log_evidence - LOG_Z) < 3 * mixed.log_evidence_se


def test_nan_targets_get_zero_weight_and_are_counted():
    flow = gaussian_flow([0.0, 0.0], torch.eye(2))

    def target(x):
        return torch.where(x[:, 0] > 1.0, torch.full_like(x[:, 0], math.nan), -0.5 * (x**2).sum(-1))

    with pytest.warns(RuntimeWarning, match="NaN"):
        result = importance(target, flow, 5000, seed=0)
    expected = int((result.samples[:, 0] > 1.0).sum())
    assert result.num_nan == expected > 0
    assert torch.isneginf(result.log_weights[result.samples[:, 0] > 1.0]).all()
    assert torch.isfinite(result.log_weights[result.samples[:, 0] <= 1.0]).all()
    assert result.normalized_weights[result.samples[:, 0] > 1.0].sum() == 0
    mean, mcse = result.expectation(lambda x: x[:, 0])
    assert torch.isfinite(mean) and torch.isfinite(mcse)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, None])
def test_num_samples_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="num_samples"):
        importance(lambda x: -(x**2).sum(-1), gaussian_flow([0.0], [[1.0]]), bad)


def test_dimension_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="dimension"):
        importance(lambda x: -(x[:, 2] ** 2), gaussian_flow([0.0, 0.0], torch.eye(2)), 10)
    with pytest.raises(ValueError, match="one log-density per row"):
        importance(lambda x: -(x**2), gaussian_flow([0.0, 0.0], torch.eye(2)), 10)
    with pytest.raises(ValueError, match="dimension mismatch"):
        importance(
            conjugate_model, gaussian_flow([0.0, 0.0, 0.0], torch.eye(3)), 10, model_args=(Y,)
        )
    with pytest.raises(ValueError, match="defensive"):
        importance(two_mode_target, gaussian_flow([0.0, 0.0], torch.eye(2)), 10, defensive=1.0)


# A model with a real and a positive latent and a closed-form evidence:
# mu ~ N(0, 2), y_i ~ N(mu, 1) (i = 1..n); lam ~ Gamma(3, 2), k_j ~ Poisson(lam).
Y = torch.tensor([0.3, 1.2, 0.8, 1.9, 0.4], dtype=torch.float64)
K = torch.tensor([2.0, 0.0, 3.0, 1.0], dtype=torch.float64)


def conjugate_model(y, k=K):
    mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 2.0))
    lam = pyro.sample("lam", dist.Gamma(torch.tensor(3.0, dtype=torch.float64), 2.0))
    with pyro.plate("y_plate", len(y)):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    with pyro.plate("k_plate", len(k)):
        pyro.sample("k", dist.Poisson(lam), obs=k)


def exact_log_evidence():
    n = len(Y)
    cov = torch.eye(n, dtype=torch.float64) + 4.0
    normal = dist.MultivariateNormal(torch.zeros(n, dtype=torch.float64), cov).log_prob(Y)
    a, b, m, s = 3.0, 2.0, len(K), float(K.sum())
    gamma_poisson = (
        math.lgamma(a + s)
        - math.lgamma(a)
        + a * math.log(b)
        - (a + s) * math.log(b + m)
        - float(torch.lgamma(K + 1).sum())
    )
    return float(normal) + gamma_poisson


def posterior_flow():
    """A Gaussian over (mu, log lam) close to the exact posterior, a bit wider."""
    n = len(Y)
    post_var = 1 / (1 / 4 + n)
    a, b = 3.0 + float(K.sum()), 2.0 + len(K)
    loc = torch.tensor([post_var * float(Y.sum()), math.log(a / b)], dtype=torch.float64)
    scale = torch.tensor([math.sqrt(post_var), 1 / math.sqrt(a)], dtype=torch.float64)
    return Flow([ElementwiseAffine(2, loc, 1.3 * scale)]).double()


def test_model_target_in_unconstrained_space_has_the_exact_evidence():
    result = importance(conjugate_model, posterior_flow(), 20_000, model_args=(Y,), seed=0)
    assert abs(result.log_evidence - exact_log_evidence()) < 3 * result.log_evidence_se
    assert set(result.site_samples) == {"mu", "lam"}
    assert (result.site_samples["lam"] > 0).all()
    lam_mean, lam_mcse = result.expectation(lambda s: s["lam"])
    exact = (3.0 + float(K.sum())) / (2.0 + len(K))
    assert abs(float(lam_mean) - exact) < 3 * float(lam_mcse)
    idata = result.to_inference_data()
    assert idata.posterior["lam"].shape == (1, 20_000)
    assert idata.sample_stats["log_weight"].shape == (1, 20_000)
    assert idata.attrs["khat"] == pytest.approx(result.khat)
    draws = result.resample(500, generator=torch.Generator().manual_seed(0))
    assert draws["mu"].shape == (500,)


def test_guide_proposals_generic_and_autocontinuous():
    def guide(y, k=K):
        pyro.sample("mu", dist.Normal(torch.tensor(0.95, dtype=torch.float64), 0.55))
        pyro.sample("lam", dist.LogNormal(torch.tensor(0.4, dtype=torch.float64), 0.45))

    result = importance(conjugate_model, guide, 20_000, model_args=(Y,), seed=0)
    assert result.samples is None and result.site_samples["lam"].shape == (20_000,)
    assert abs(result.log_evidence - exact_log_evidence()) < 3 * result.log_evidence_se

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    auto = pyro.infer.autoguide.AutoMultivariateNormal(conjugate_model)
    svi = pyro.infer.SVI(
        conjugate_model, auto, pyro.optim.Adam({"lr": 0.05}), pyro.infer.Trace_ELBO()
    )
    for _ in range(300):
        svi.step(Y)
    result = importance(conjugate_model, auto, 20_000, model_args=(Y,), seed=0)
    assert result.samples.shape == (20_000, 2)
    assert result.khat < 0.7
    assert abs(result.log_evidence - exact_log_evidence()) < 3 * result.log_evidence_se
    pyro.clear_param_store()


def test_float32_follows_the_proposal_and_chunks():
    flow = gaussian_flow([0.0, 0.0], torch.eye(2), dtype=torch.float32)
    result = importance(lambda x: -0.5 * (x**2).sum(-1), flow, 1000, chunk_size=37, seed=0)
    assert result.log_weights.dtype == torch.float32 and result.log_weights.shape == (1000,)
    assert torch.allclose(result.log_weights, torch.full((1000,), math.log(2 * math.pi)), atol=1e-5)
    assert result.log_evidence == pytest.approx(math.log(2 * math.pi), abs=1e-5)
    assert result.log_evidence_se == pytest.approx(0.0, abs=1e-5)


def test_psis_of_equal_weights_is_exact():
    """A proposal equal to the target gives equal weights, where ArviZ's tail fit returns NaN:
    the smoothed weights must then be the exact uniform ones (zero weights stay zero)."""
    from pyroflows.infer.sampling.psis import psis

    lw = torch.full((1000,), 1.8378770664093453, dtype=torch.float64)
    lw[:10] = -math.inf
    smoothed, _ = psis(lw)
    assert torch.isneginf(smoothed[:10]).all()
    assert torch.allclose(smoothed[10:].exp(), torch.full((990,), 1 / 990, dtype=torch.float64))


def test_mean_and_sd_correct_a_too_wide_proposal_to_the_exact_posterior():
    # posterior_flow() is 1.3 times too wide; the weighted moments are the exact ones.
    result = importance(conjugate_model, posterior_flow(), 20_000, model_args=(Y,), seed=0)
    assert result.reliable
    post_var = 1 / (1 / 4 + len(Y))
    a, b = 3.0 + float(K.sum()), 2.0 + len(K)  # lam | k ~ Gamma(a, b)
    moments = result.mean_and_sd()
    assert set(moments) == {"mu", "lam"}
    (mu_mean, mu_sd), (lam_mean, lam_sd) = moments["mu"], moments["lam"]
    assert mu_mean.shape == () and mu_sd.shape == ()
    assert float(mu_mean) == pytest.approx(post_var * float(Y.sum()), abs=0.01)
    assert float(mu_sd) == pytest.approx(math.sqrt(post_var), rel=0.03)
    assert float(lam_mean) == pytest.approx(a / b, rel=0.02)
    assert float(lam_sd) == pytest.approx(math.sqrt(a) / b, rel=0.03)
    # The proposal's own draws are 1.3 times too wide: the weights are what corrects them.
    raw_sd = float(result.site_samples["mu"].std())
    assert raw_sd == pytest.approx(1.3 * math.sqrt(post_var), rel=0.03)
    # Uniform weights would give the draws' own moments.
    flat = dataclasses.replace(
        result, smoothed_log_weights=torch.full_like(result.log_weights, -math.log(20_000))
    )
    assert float(flat.mean_and_sd()["mu"][1]) == pytest.approx(raw_sd, rel=1e-3)


def test_mean_and_sd_of_vector_samples():
    flow = gaussian_flow(MEAN + 0.2, 1.3 * torch.linalg.cholesky(COV))
    mean, sd = importance(gaussian_target(), flow, 20_000, seed=1).mean_and_sd()
    assert mean.shape == (3,) and sd.shape == (3,)
    assert torch.allclose(mean, MEAN, atol=0.03)
    assert torch.allclose(sd, COV.diagonal().sqrt(), rtol=0.03)


def test_a_model_with_an_improper_prior_is_weighed():
    # mu has a flat prior (ImproperUniform cannot be sampled, so the model is traced at an
    # init strategy's value): the posterior is N(mean(Y), 1 / n) exactly.
    def flat_model(y: torch.Tensor) -> None:
        mu = pyro.sample("mu", dist.ImproperUniform(dist.constraints.real, (), ()))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, 1.0), obs=y)

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    # A flow guide, whose proposal names its sites in order (the route that traces the model).
    guide = AutoFlow(flat_model, init="laplace", model_args=(Y,), progress=False)
    result = importance(flat_model, guide, 20_000, model_args=(Y,), seed=0)
    mean, sd = result.mean_and_sd()["mu"]
    assert ModelTarget(flat_model, (Y,)).dtype == Y.dtype == torch.float64  # not the default
    assert result.reliable
    assert float(mean) == pytest.approx(float(Y.mean()), abs=0.02 / math.sqrt(len(Y)))
    assert float(sd) == pytest.approx(1 / math.sqrt(len(Y)), rel=0.03)
