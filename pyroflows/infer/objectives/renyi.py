r"""Rényi's variational bound (Li & Turner 2016) and its :math:`\alpha = 0` case, the
importance-weighted bound (Burda et al. 2016); see :mod:`pyroflows.infer.objectives`."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .particles import ParticleObjective

__all__ = ["IWAE", "Renyi"]


class Renyi(ParticleObjective):
    r"""The variational Rényi bound :math:`\mathcal L_\alpha^K` (Li & Turner 2016), maximised;
    the loss is :math:`-\mathcal L_\alpha^K`. See the module's description for the bound and the
    gradient estimator (DReG by default, valid with every guide, STL or not).

    Args:
        alpha: :math:`\alpha \ge 0`, :math:`\alpha \ne 1` (``0``: IWAE; towards ``1``: the
            ELBO; above ``1``: more mode-seeking than the ELBO). Upper bounds
            (:math:`\alpha < 0`) are :class:`ChiSquare`'s job: the log of a :math:`K`-sample
            mean is not an upper bound for small :math:`K`.
        num_particles: :math:`K`.
        **options: those of :class:`ParticleObjective` (``gradient``, ``max_plate_nesting``,
            ``vectorize_particles``).

    Raises:
        ValueError: ``alpha`` negative, equal to 1 or not finite; ``num_particles < 1``.

    Example:
        >>> objective = Renyi(alpha=0.5, num_particles=4)
        >>> loss, d1, d2 = objective.objective(torch.full((4,), -2.0))   # equal weights
        >>> float(loss), d1.tolist()   # the loss is -log w; each particle weighs 1/4
        (2.0, [-0.25, -0.25, -0.25, -0.25])
    """

    def __init__(self, alpha: float = 0.0, num_particles: int = 8, **options: Any) -> None:
        if (
            not isinstance(alpha, int | float)
            or isinstance(alpha, bool)
            or not math.isfinite(alpha)
            or alpha < 0
        ):
            raise ValueError(
                f"alpha must be a finite number >= 0 (alpha < 0 would be an upper bound: use "
                f"ChiSquare for alpha = -1), got {alpha!r}"
            )
        if alpha == 1:
            raise ValueError("alpha = 1 is the ELBO: use pyro.infer.Trace_ELBO")
        self.alpha = float(alpha)
        super().__init__(num_particles, **options)

    def objective(self, log_weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a = 1.0 - self.alpha
        scaled = a * log_weights
        log_mean = torch.logsumexp(scaled, 0) - math.log(log_weights.shape[0])
        w = torch.softmax(scaled, 0)
        return -log_mean / a, -w, -a * (w - w * w)


class IWAE(Renyi):
    r"""The importance-weighted bound (Burda et al. 2016),
    :math:`\mathcal L^K = \log \frac1K \sum_k w_k`, maximised (the loss is
    :math:`-\mathcal L^K`): :class:`Renyi` at :math:`\alpha = 0`.

    Its gradient is DReG (Tucker et al. 2019), :math:`\sum_k \tilde w_k^2 \,\partial_z \ell_k\,
    \partial_\theta z_k` with :math:`\tilde w = \mathrm{softmax}(\ell)`, whose signal-to-noise
    ratio for the guide grows with :math:`K` where the standard estimator's falls; the model's
    parameters get the standard :math:`\sum_k \tilde w_k \nabla_\psi \log p(x, z_k)`.

    Args:
        num_particles: :math:`K` (``1``: the ELBO).
        **options: those of :class:`ParticleObjective`.

    Example:
        >>> loss, _, _ = IWAE(num_particles=2).objective(torch.tensor([0.0, -100.0]))
        >>> round(float(loss), 4)   # -log((1 + e^-100) / 2)
        0.6931
    """

    def __init__(self, num_particles: int = 8, **options: Any) -> None:
        super().__init__(0.0, num_particles, **options)
