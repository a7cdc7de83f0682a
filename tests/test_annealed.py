"""Annealed importance sampling / SMC (`annealed_importance`): known normalising constants,
two-sample tests against exact draws, the evidence variance estimate, and clear errors."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import AutoNormal
from scipy import stats

import pyroflows
from pyroflows.infer import AutoFlow
from pyroflows.infer.sampling.annealed import annealed_importance
from pyroflows.infer.sampling.psis import log_evidence
from pyroflows.infer.sampling.tempering import relative_variance

LOG_Z0 = 1.7  # the targets' unknown-to-the-sampler normalising constant


@pytest.fixture(autouse=True)
def _clean() -> None:
    pyro.clear_param_store()


def gaussian(device: torch.device):  # noqa: ANN201
    mu = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64, device=device)
    sd = torch.tensor([0.5, 0.3, 1.0], dtype=torch.float64, device=device)
    return mu, sd, lambda x: dist.Normal(mu, sd).log_prob(x).sum(-1) + LOG_Z0


def mixture(device: torch.device):  # noqa: ANN201
    """0.3 N((-3,-3), 0.5^2 I) + 0.7 N((3, 3), 0.5^2 I), times e^LOG_Z0."""
    locs = torch.tensor([[-3.0, -3.0], [3.0, 3.0]], dtype=torch.float64, device=device)
    weights = torch.tensor([0.3, 0.7], dtype=torch.float64, device=device)
    exact = dist.MixtureSameFamily(dist.Categorical(weights), dist.Normal(locs, 0.5).to_event(1))
    return exact, lambda x: exact.log_prob(x) + LOG_Z0


def wide(dim: int, scale: float, device: torch.device) -> dist.MultivariateNormal:
    eye = torch.eye(dim, dtype=torch.float64, device=device)
    return dist.MultivariateNormal(
        torch.zeros(dim, dtype=torch.float64, device=device), scale**2 * eye
    )


@pytest.mark.parametrize("space", ["base", "data"])
@pytest.mark.parametrize("kernel", ["hmc", "mala"])
def test_log_evidence_of_a_gaussian(space, kernel, device):  # noqa: ANN001
    mu, sd, log_p = gaussian(device)
    q = wide(3, 1.0, device)
    if space == "data":  # a distribution without a base space: particles move in x
        q = dist.Normal(torch.zeros_like(mu), 1.0).to_event(1)
    r = annealed_importance(log_p, q, 1000, kernel=kernel, seed=0)
    assert r.info["space"] == space
    assert abs(r.log_evidence - LOG_Z0) < 3 * r.log_evidence_se
    assert r.log_evidence_se < 0.1
    mean, _ = r.expectation(lambda x: x)
    assert torch.allclose(mean, mu, atol=0.1)
    assert r.samples.device.type == device.type and r.samples.dtype == torch.float64
    assert r.info["gradient_evaluations"] > 1 and r.info["temperatures"][-1] == 1.0


def test_smc_finds_both_modes_of_a_mixture(device):  # noqa: ANN001
    exact, log_p = mixture(device)
    r = annealed_importance(log_p, wide(2, 3.0, device), 2000, seed=1)
    assert abs(r.log_evidence - LOG_Z0) < 3 * r.log_evidence_se
    assert len(r.info["resampled_at"]) > 0  # it ran as SMC, not plain AIS
    # Kernels cannot cross between the modes: their weights come from the reweighting alone,
    # and the standard error counts the particles' shared ancestors.
    share, mcse = r.expectation(lambda x: (x[:, 0] < 0).double())
    assert abs(float(share) - 0.3) < 3 * float(mcse) and float(mcse) < 0.03


def banana(device: torch.device):  # noqa: ANN201
    """x1 ~ N(0, 2^2), x2 | x1 ~ N((x1^2 - 4) / 4, 0.5^2): exact draws and the log-density."""

    def log_p(x):  # noqa: ANN001, ANN202
        return (
            dist.Normal(0.0, 2.0).log_prob(x[:, 0])
            + dist.Normal((x[:, 0] ** 2 - 4) / 4, 0.5).log_prob(x[:, 1])
            + LOG_Z0
        )

    def draws(n: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(1)
        x1 = 2.0 * torch.randn(n, generator=g, dtype=torch.float64)
        x2 = (x1**2 - 4) / 4 + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
        return torch.stack([x1, x2], 1).to(device)

    return log_p, draws


def test_resample_move_draws_pass_a_two_sample_test(device):  # noqa: ANN001
    log_p, exact = banana(device)
    r = annealed_importance(log_p, wide(2, 3.0, device), 1000, final_moves=5, seed=0)
    assert abs(r.log_evidence - LOG_Z0) < 3 * r.log_evidence_se
    # resampling copies about a third of the particles; the moves spread all but a few copies
    assert torch.unique(r.samples[:, 0]).numel() > 900
    assert r.ess == pytest.approx(1000) and "khat_before_moves" in r.info
    second_moment, mcse = r.expectation(lambda x: x[:, 0] ** 2)
    assert abs(float(second_moment) - 4.0) < 3 * float(mcse)
    draws, reference = r.samples.cpu(), exact(2000).cpu()
    for a, b in [(draws[:, 0], reference[:, 0]), (draws[:, 1], reference[:, 1])]:
        assert stats.ks_2samp(a.numpy(), b.numpy()).pvalue > 0.01
    # and a sample that is not the banana fails the same test (the test has power here)
    shifted = reference[:1000, 1] + 0.2
    assert stats.ks_2samp(shifted.numpy(), reference[1000:, 1].numpy()).pvalue < 0.01


def test_plain_importance_cannot_do_what_smc_does():
    """The same wide proposal with plain importance weights: fewer effective draws."""
    exact, log_p = mixture(torch.device("cpu"))
    smc = annealed_importance(log_p, wide(2, 3.0, torch.device("cpu")), 1000, seed=0)
    plain = pyroflows.infer.importance(log_p, wide(2, 3.0, torch.device("cpu")), 1000, seed=0)
    assert smc.ess > 2 * plain.ess


def test_target_with_a_hole_in_its_support():
    """-inf where x_0 < 0 (half a Gaussian): Z is half the Gaussian's."""
    mu, sd, log_p = gaussian(torch.device("cpu"))

    def half(x):  # noqa: ANN001, ANN202
        return torch.where(x[:, 0] > mu[0], log_p(x), -math.inf)

    r = annealed_importance(half, wide(3, 1.0, torch.device("cpu")), 1000, seed=0)
    assert abs(r.log_evidence - (LOG_Z0 - math.log(2))) < 3 * r.log_evidence_se
    assert bool((r.samples[r.log_weights > -math.inf, 0] > mu[0]).all())


def test_without_resampling_the_variance_is_the_importance_one():
    mu, sd, log_p = gaussian(torch.device("cpu"))
    r = annealed_importance(log_p, wide(3, 1.0, torch.device("cpu")), 500, resample=0.0, seed=0)
    assert r.info["resampled_at"] == [] and r.info["num_eves"] == 500
    assert math.isclose(r.log_evidence_se, float(log_evidence(r.log_weights)[1]), rel_tol=1e-9)


def test_relative_variance_known_cases():
    log_w = torch.zeros(4, dtype=torch.float64)
    # Equal weights of independent draws: no variance; one common ancestor: relative variance 1.
    assert relative_variance(log_w, torch.arange(4), 0) == pytest.approx(0.0, abs=1e-12)
    assert relative_variance(log_w, torch.zeros(4, dtype=torch.long), 3) == pytest.approx(1.0)
    # Two ancestors with two particles each, resampled once: 1 - (4/3)^2 (1 - 1/2).
    eves = torch.tensor([0, 0, 1, 1])
    assert relative_variance(log_w, eves, 1) == pytest.approx(1 - (4 / 3) ** 2 * 0.5)


def conjugate_model(x):  # noqa: ANN001, ANN201
    z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
    pyro.sample("s", dist.LogNormal(torch.zeros((), dtype=x.dtype), 0.5))  # no data: its prior
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def test_model_target_with_a_flow_guide_proposal():
    """x_i ~ N(z, 1), z ~ N(0, 1): the evidence is the density of N(0, I + 11^T) at x."""
    x = torch.tensor([0.3, 1.2, 0.8, 1.9, 0.4], dtype=torch.float64)
    guide = AutoFlow(conjugate_model, init="loc", model_args=(x,), transforms=1, hidden=(8,))
    r = annealed_importance(conjugate_model, guide, 1000, model_args=(x,), seed=0)
    cov = torch.eye(5, dtype=x.dtype) + 1.0
    log_z = float(dist.MultivariateNormal(torch.zeros_like(x), cov).log_prob(x))
    assert abs(r.log_evidence - log_z) < 3 * r.log_evidence_se
    assert set(r.site_samples) == {"z", "s"} and r.site_samples["z"].shape == (1000,)
    assert bool((r.site_samples["s"] > 0).all()) and r.info["space"] == "base"
    post_mean, _ = r.expectation(lambda v: v["z"])
    assert float(post_mean) == pytest.approx(float(x.sum() / 6), abs=0.05)


def test_fixed_schedule_and_reproducibility():
    mu, sd, log_p = gaussian(torch.device("cpu"))
    q = wide(3, 1.0, torch.device("cpu"))
    schedule = torch.linspace(0, 1, 21)[1:] ** 4
    state = torch.random.get_rng_state()
    a = annealed_importance(log_p, q, 300, temperatures=schedule, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = annealed_importance(log_p, q, 300, temperatures=schedule, seed=3)
    assert a.info["temperatures"] == pytest.approx([0.0, *schedule.tolist()])
    assert torch.equal(a.log_weights, b.log_weights) and torch.equal(a.samples, b.samples)


def test_truncated_schedule_warns():
    mu, sd, log_p = gaussian(torch.device("cpu"))
    with pytest.warns(UserWarning, match="max_temperatures"):
        r = annealed_importance(log_p, wide(3, 1.0, torch.device("cpu")), 200, max_temperatures=3)
    assert len(r.info["temperatures"]) == 4 and r.info["temperatures"][-1] == 1.0


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"num_particles": 1}, "num_particles"),
        ({"cess": 1.0}, "cess"),
        ({"resample": 1.5}, "resample"),
        ({"kernel": "nuts"}, "kernel"),
        ({"temperatures": [0.5, 0.9]}, "end at 1"),
        ({"temperatures": [0.5, 0.2, 1.0]}, "increase"),
        ({"step_size": -1.0}, "step_size"),
    ],
)
def test_bad_options_are_named(options, match):  # noqa: ANN001
    mu, sd, log_p = gaussian(torch.device("cpu"))
    kwargs = {"num_particles": 100, **options}
    with pytest.raises(ValueError, match=match):
        annealed_importance(log_p, wide(3, 1.0, torch.device("cpu")), **kwargs)


def test_a_generic_guide_and_an_empty_target_are_refused():
    x = torch.ones(3, dtype=torch.float64)
    with pytest.raises(TypeError, match="vector proposal"):
        annealed_importance(conjugate_model, AutoNormal(conjugate_model), 10, model_args=(x,))
    q = wide(2, 1.0, torch.device("cpu"))
    with pytest.raises(ValueError, match="every draw"):
        annealed_importance(lambda v: torch.full(v.shape[:1], math.nan), q, 10)


def test_a_widened_start_keeps_the_evidence_exact():
    mu, sd, log_p = gaussian(torch.device("cpu"))
    r = annealed_importance(log_p, wide(3, 1.0, torch.device("cpu")), 1000, widen=3.0, seed=0)
    assert abs(r.log_evidence - LOG_Z0) < 3 * r.log_evidence_se and r.log_evidence_se < 0.1
    data_space = dist.Normal(torch.zeros_like(mu), 1.0).to_event(1)
    with pytest.raises(ValueError, match="base space"):
        annealed_importance(log_p, data_space, 100, widen=2.0)


def test_arviz_and_resampling_of_a_model_result():
    x = torch.tensor([0.3, 1.2, 0.8], dtype=torch.float64)
    guide = AutoFlow(conjugate_model, init="loc", model_args=(x,), transforms=1, hidden=(8,))
    r = annealed_importance(conjugate_model, guide, 300, model_args=(x,), seed=0)
    data = r.to_inference_data()
    assert set(data.posterior.data_vars) == {"z", "s"}
    assert data.posterior["z"].shape == (1, 300) and "log_weight" in data.sample_stats
    assert data.attrs["log_evidence"] == pytest.approx(r.log_evidence)
    draws = r.resample(50, generator=torch.Generator().manual_seed(0))
    assert draws["s"].shape == (50,) and bool((draws["s"] > 0).all())
