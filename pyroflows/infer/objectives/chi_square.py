r"""CHIVI's :math:`\chi` upper bound (Dieng et al. 2017), the mass-covering objective; see
:mod:`pyroflows.infer.objectives`."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .particles import ParticleObjective

__all__ = ["ChiSquare"]


class ChiSquare(ParticleObjective):
    r"""CHIVI's :math:`\chi` upper bound :math:`\mathrm{CUBO}_2 = \tfrac12 \log \mathbb E_q[w^2]`
    (Dieng et al. 2017), minimised: the mass-covering objective. The loss reported is the
    estimate :math:`\tfrac12 \log \frac1K \sum_k w_k^2`; the gradient is an unbiased estimate
    of :math:`\tfrac12 e^{-2C}\, \nabla \mathbb E_q[w^2]` (:math:`C`: a running average of the
    past estimates, taken before the draws; the exponent is clamped only where it would
    overflow), doubly reparameterised by default: :math:`-e^{-2C} \sum_k w_k^2\, \partial_z
    \ell_k\, \partial_\theta z_k / K`.

    The objective is heavy-tailed where :math:`q` is narrower than the posterior (the variance
    of :math:`w^2` is infinite when :math:`q` has lighter tails): start from a wide guide.
    It fits the guide only: a model with parameters of its own is refused (minimising an upper
    bound of :math:`\log p_\psi(x)` over :math:`\psi` would be meaningless).

    Args:
        num_particles: :math:`K` (default 16). Any :math:`K \ge 1` is unbiased, but the
            gradient's tails are heavy: with :math:`K = 1` Adam barely moves after the first
            rare large weight.
        **options: those of :class:`ParticleObjective`.

    Example:
        >>> loss, _, _ = ChiSquare(num_particles=2).objective(torch.tensor([0.0, 0.0]))
        >>> float(loss)   # (1/2) log mean w^2 with w = 1
        0.0
    """

    trains_model = False
    #: Rate of the running average :math:`C` of the CUBO estimates.
    reference_rate = 0.1

    def __init__(self, num_particles: int = 16, **options: Any) -> None:
        super().__init__(num_particles, **options)
        self.reference: float | None = None

    @staticmethod
    def cubo(log_weights: Tensor) -> Tensor:
        r"""The estimate :math:`\tfrac12 \log \frac1K \sum_k w_k^2` of log-weights (K,)."""
        return 0.5 * (torch.logsumexp(2 * log_weights, 0) - math.log(log_weights.shape[0]))

    def objective(self, log_weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cubo = self.cubo(log_weights)
        reference = cubo if self.reference is None else cubo.new_tensor(self.reference)
        limit = 0.5 * math.log(torch.finfo(log_weights.dtype).max)
        scaled = torch.exp((2 * (log_weights - reference)).clamp(max=limit))
        d1 = scaled / log_weights.shape[0]
        return cubo, d1, 2 * d1

    def update(self, log_weights: Tensor) -> None:
        cubo = float(self.cubo(log_weights))
        if not math.isfinite(cubo):
            return
        if self.reference is None:
            self.reference = cubo
        else:
            self.reference += self.reference_rate * (cubo - self.reference)
