"""The scoring of benchmarks/posteriordb.py: importance-weighted moments and the check of
which reference sds can judge a fit, on draws with known answers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "posteriordb_metrics.py"


@pytest.fixture(scope="module")
def metrics():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("posteriordb_metrics", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_weighted_moments_reweight_one_gaussian_to_another(metrics) -> None:  # noqa: ANN001
    # Draws from N(0, 1) weighted by N(x; 1, 1) / N(x; 0, 1) = exp(x - 1/2): mean 1, sd 1.
    x = np.random.default_rng(0).standard_normal((200_000, 1))
    mean, sd = metrics.weighted_mean_sd(x, x[:, 0] - 0.5)
    assert mean[0] == pytest.approx(1.0, abs=0.02)
    assert sd[0] == pytest.approx(1.0, abs=0.02)
    plain_mean, plain_sd = metrics.weighted_mean_sd(x, None)
    assert plain_mean[0] == pytest.approx(0.0, abs=0.01)
    assert plain_sd[0] == pytest.approx(1.0, abs=0.01)


def test_an_infinite_variance_is_found_and_a_finite_one_is_not(metrics) -> None:  # noqa: ANN001
    rng = np.random.default_rng(1)
    normal = rng.standard_normal((10, 1000, 1))
    # |t_2| has tails like x^-3, as the one-compartment model's K_m: no variance (the
    # squared deviations' tail shape is 1; a normal's is about 0).
    heavy = np.abs(rng.standard_t(2, size=(10, 1000, 1)))
    draws = np.concatenate([normal, heavy], axis=-1)
    khat = metrics.sd_khat(draws)
    assert khat[0] < 0.3 and khat[1] > 0.7
    assert metrics.unstable_sd(draws).tolist() == [False, True]
    # Only the positive unstable parameter goes to the log scale.
    assert metrics.scoring_scale(draws).tolist() == [False, True]
    assert metrics.scoring_scale(-draws).tolist() == [False, False]


def test_log_scale_scores_draws_from_the_reference_itself_as_exact(metrics) -> None:  # noqa: ANN001
    rng = np.random.default_rng(2)
    reference = np.exp(rng.standard_normal((10, 1000, 2)))
    guide = np.exp(rng.standard_normal((40_000, 2)))
    error, ratio = metrics.mean_error_and_sd_ratio(guide, reference, np.array([True, True]))
    assert np.abs(error).max() < 0.05 and np.abs(ratio - 1).max() < 0.05
    # Half as wide on the log scale: a ratio of 1/2 there.
    _, narrow = metrics.mean_error_and_sd_ratio(guide**0.5, reference, np.array([True, True]))
    assert narrow == pytest.approx([0.5, 0.5], abs=0.03)


def test_the_verdict_reads_the_weighted_draws_only_when_trusted(metrics) -> None:  # noqa: ANN001
    run = {
        "max_abs_mean_error": 0.03, "sd_ratio_range": [0.95, 1.32],
        "psis_max_abs_mean_error": 0.02, "psis_sd_ratio_range": [0.97, 1.04],
        "psis_trusted": True,
    }  # fmt: skip
    assert not metrics.within_target(run)
    assert metrics.within_target(run, weighted=True)
    assert not metrics.within_target({**run, "psis_trusted": False}, weighted=True)
