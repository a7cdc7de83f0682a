"""The Laplace start's mode search on a Gaussian, whose mode and covariance are known."""

from __future__ import annotations

import torch

from pyroflows.infer.guides.laplace import find_map, laplace_approximation


def test_the_mode_and_covariance_of_a_gaussian():
    cov = torch.tensor([[2.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
    mean = torch.tensor([1.0, -3.0], dtype=torch.float64)
    target = torch.distributions.MultivariateNormal(mean, cov)
    point, report = find_map(target.log_prob, torch.zeros(2, dtype=torch.float64), progress=False)
    assert report["stopped"] == "converged" and torch.allclose(point, mean, atol=1e-6)
    # Counted with the progress bar off too (it used to report the disabled bar's 0).
    assert 2 <= report["evaluations"] < 100
    L = laplace_approximation(target.log_prob, point)
    assert torch.allclose(L @ L.T, cov, atol=1e-6)
