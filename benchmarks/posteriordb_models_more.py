"""Pyro models of posteriordb posteriors (see ``posteriordb_models.py`` for the convention):
three linear regressions and two hidden Markov models, each written from its ``model.stan``.

Latents may carry leading particle dims (a particle plate left of the model's plates): the
regressions index ``beta[..., k]`` so a ``(S, 1, K)`` value broadcasts against the data plate,
and the hidden Markov models sum the states out with batched log-space matrix products.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from posteriordb_helpers import ModelFactory, as_tensor, stack_columns
from pyro.distributions import constraints
from torch import Tensor

__all__ = ["MORE_MODELS"]


def _regression_columns(s: dict) -> np.ndarray:
    """Reference columns ``beta[1..K], sigma``."""
    return stack_columns(s["beta"], s["sigma"])


def earn_height(data: dict, dtype: torch.dtype) -> tuple[Callable, Callable]:
    """earn_i ~ Normal(beta1 + beta2 height_i, sigma); flat priors on beta (real) and sigma > 0."""
    earn, height = as_tensor(data["earn"], dtype), as_tensor(data["height"], dtype)

    def model() -> None:
        beta = pyro.sample("beta", dist.ImproperUniform(constraints.real, (), (2,)))
        sigma = pyro.sample("sigma", dist.ImproperUniform(constraints.positive, (), ()))
        with pyro.plate("data", len(earn)):
            mean = beta[..., 0] + beta[..., 1] * height
            pyro.sample("earn", dist.Normal(mean, sigma), obs=earn)

    return model, _regression_columns


def kidscore_interaction(data: dict, dtype: torch.dtype) -> tuple[Callable, Callable]:
    """kid_score_i ~ Normal(beta1 + beta2 hs_i + beta3 iq_i + beta4 hs_i iq_i, sigma);
    sigma ~ HalfCauchy(2.5), flat prior on beta (raw scales)."""
    score = as_tensor(data["kid_score"], dtype)
    hs, iq = as_tensor(data["mom_hs"], dtype), as_tensor(data["mom_iq"], dtype)
    X = torch.stack([torch.ones_like(hs), hs, iq, hs * iq], dim=-1)  # (N, 4)

    def model() -> None:
        beta = pyro.sample("beta", dist.ImproperUniform(constraints.real, (), (4,)))
        sigma = pyro.sample("sigma", dist.HalfCauchy(as_tensor(2.5, dtype)))
        with pyro.plate("data", len(score)):
            # beta (..., 1, 4) with a particle dim: the product broadcasts to (..., N, 4).
            mean = (X * beta).sum(-1)
            pyro.sample("kid_score", dist.Normal(mean, sigma), obs=score)

    return model, _regression_columns


def kidscore_interaction_z(data: dict, dtype: torch.dtype) -> tuple[Callable, Callable]:
    """kid_score_i ~ Normal(beta1 + beta2 z_hs_i + beta3 z_iq_i + beta4 z_hs_i z_iq_i, sigma),
    z = (x - mean x) / (2 sd x) (sd with N - 1, as Stan); flat priors on beta and sigma > 0."""
    score = as_tensor(data["kid_score"], dtype)
    hs, iq = as_tensor(data["mom_hs"], dtype), as_tensor(data["mom_iq"], dtype)
    z_hs = (hs - hs.mean()) / (2 * hs.std(unbiased=True))
    z_iq = (iq - iq.mean()) / (2 * iq.std(unbiased=True))
    X = torch.stack([torch.ones_like(z_hs), z_hs, z_iq, z_hs * z_iq], dim=-1)  # (N, 4)

    def model() -> None:
        beta = pyro.sample("beta", dist.ImproperUniform(constraints.real, (), (4,)))
        sigma = pyro.sample("sigma", dist.ImproperUniform(constraints.positive, (), ()))
        with pyro.plate("data", len(score)):
            mean = (X * beta).sum(-1)
            pyro.sample("kid_score", dist.Normal(mean, sigma), obs=score)

    return model, _regression_columns


def _log_matmul(a: Tensor, b: Tensor) -> Tensor:
    """Matrix product in log space: ``log(exp(a) @ exp(b))`` over the last two dims."""
    return torch.logsumexp(a.unsqueeze(-1) + b.unsqueeze(-3), dim=-2)


def hmm_loglik(log_emit: Tensor, log_trans: Tensor) -> Tensor:
    r"""Log-likelihood of a hidden Markov model with the states summed out (forward algorithm,
    as in the Stan programs: no initial-state term), vectorised over leading batch dims.

    Args:
        log_emit: (..., N, K) log-density of observation t under state k.
        log_trans: (..., K, K) log transition probabilities, row j = from state j.

    Returns:
        (...,): :math:`\log \sum_z \prod_t p(y_t \mid z_t) \prod_{t>1} \theta_{z_{t-1} z_t}`.
    """
    # Step matrices M_t[j, k] = log theta[j, k] + log p(y_t | k), t = 2..N, multiplied in a
    # balanced tree (log2 N sequential steps instead of N).
    mats = log_trans.unsqueeze(-3) + log_emit[..., 1:, None, :]  # (..., N-1, K, K)
    while mats.shape[-3] > 1:
        n = mats.shape[-3]
        paired = _log_matmul(mats[..., 0 : n - 1 : 2, :, :], mats[..., 1:n:2, :, :])
        mats = torch.cat([paired, mats[..., n - 1 :, :, :]], -3) if n % 2 else paired
    if mats.shape[-3] == 0:  # one observation
        return torch.logsumexp(log_emit[..., 0, :], dim=-1)
    alpha = torch.logsumexp(log_emit[..., 0, :, None] + mats[..., 0, :, :], dim=-2)  # (..., K)
    return torch.logsumexp(alpha, dim=-1)


def hmm_example(data: dict, dtype: torch.dtype) -> tuple[Callable, Callable]:
    """y_t | z_t ~ Normal(mu[z_t], 1), z_t | z_{t-1} ~ Categorical(theta[z_{t-1}]); flat priors on
    the simplexes theta1, theta2; mu positive ordered with target += Normal(mu1 | 3, 1) +
    Normal(mu2 | 10, 1). States summed out (forward algorithm, pyro.factor)."""
    y, K = as_tensor(data["y"], dtype), int(data["K"])
    zero = as_tensor(0.0, dtype)

    def model() -> None:
        theta1 = pyro.sample("theta1", dist.ImproperUniform(constraints.simplex, (), (K,)))
        theta2 = pyro.sample("theta2", dist.ImproperUniform(constraints.simplex, (), (K,)))
        mu = pyro.sample("mu", dist.ImproperUniform(constraints.positive_ordered_vector, (), (K,)))
        prior = dist.Normal(zero + 3.0, 1.0).log_prob(mu[..., 0])
        prior = prior + dist.Normal(zero + 10.0, 1.0).log_prob(mu[..., 1])
        pyro.factor("mu_prior", prior)
        log_trans = torch.stack([theta1, theta2], dim=-2).log()  # (..., K, K)
        log_emit = dist.Normal(mu.unsqueeze(-2), 1.0).log_prob(y[:, None])  # (..., N, K)
        pyro.factor("loglik", hmm_loglik(log_emit, log_trans))

    def columns(s: dict) -> np.ndarray:
        return stack_columns(s["theta1"], s["theta2"], s["mu"])

    return model, columns


def hmm_drive(data: dict, dtype: torch.dtype) -> tuple[Callable, Callable]:
    """u_t | z_t ~ Exponential(phi[z_t]), v_t | z_t ~ Exponential(lambda[z_t]) (rates),
    z_t | z_{t-1} ~ Categorical(theta[z_{t-1}]); theta_k ~ Dirichlet(alpha[k, :]); phi, lambda
    positive ordered, each with target += Normal(x1 | 0, 1) + Normal(x2 | 3, 1). States summed
    out (forward algorithm, pyro.factor)."""
    u, v = as_tensor(data["u"], dtype), as_tensor(data["v"], dtype)
    alpha = as_tensor(data["alpha"], dtype)
    K = int(data["K"])
    zero = as_tensor(0.0, dtype)

    def ordered_prior(x: Tensor) -> Tensor:
        """Normal(x1 | 0, 1) + Normal(x2 | 3, 1)."""
        first = dist.Normal(zero, 1.0).log_prob(x[..., 0])
        return first + dist.Normal(zero + 3.0, 1.0).log_prob(x[..., 1])

    def model() -> None:
        theta1 = pyro.sample("theta1", dist.Dirichlet(alpha[0]))
        theta2 = pyro.sample("theta2", dist.Dirichlet(alpha[1]))
        ordered = dist.ImproperUniform(constraints.positive_ordered_vector, (), (K,))
        phi = pyro.sample("phi", ordered)
        lam = pyro.sample("lambda", ordered)
        pyro.factor("ordered_prior", ordered_prior(phi) + ordered_prior(lam))
        log_trans = torch.stack([theta1, theta2], dim=-2).log()  # (..., K, K)
        # Exponential(rate) log-density: log rate - rate * x; (..., N, K).
        phi_, lam_ = phi.unsqueeze(-2), lam.unsqueeze(-2)
        log_emit = phi_.log() - phi_ * u[:, None] + lam_.log() - lam_ * v[:, None]
        pyro.factor("loglik", hmm_loglik(log_emit, log_trans))

    def columns(s: dict) -> np.ndarray:
        return stack_columns(s["theta1"], s["theta2"], s["phi"], s["lambda"])

    return model, columns


MORE_MODELS: dict[str, ModelFactory] = {
    "earnings-earn_height": earn_height,
    "kidiq-kidscore_interaction": kidscore_interaction,
    "kidiq_with_mom_work-kidscore_interaction_z": kidscore_interaction_z,
    "hmm_example-hmm_example": hmm_example,
    "bball_drive_event_0-hmm_drive_0": hmm_drive,
}
