r"""The Gaussian a flow guide starts from: the init strategy's point with a fixed scale, or the
Laplace approximation at the MAP, whichever has the better ELBO estimate.

For a candidate :math:`q_0 = \mathcal{N}(\mu, LL^\top)` the ELBO is estimated with :math:`S`
draws, :math:`\widehat{\mathcal{L}} = \frac1S\sum_s \log\tilde p(u_s) - \log q_0(u_s)`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import pyro.distributions as dist
import torch
from torch import Tensor

from ...core import Flow
from ...transforms.triangular import LowerTriangularAffine
from .laplace import find_map, laplace_approximation

__all__ = ["INIT_CHOICES", "check_init_scale", "gaussian_elbo", "initial_gaussian", "set_affine"]

INIT_CHOICES = ("auto", "laplace", "loc")
#: The smallest ``init_scale`` is this many units in the last place of the latents' dtype at
#: the init point's magnitude (at least 1).
INIT_SCALE_ULPS = 10_000


def check_init_scale(init_scale: float, loc: Tensor) -> None:
    r"""Refuse an ``init_scale`` the latents' dtype cannot resolve around ``loc``.

    The guide starts as :math:`u = \mu + s\,T(z)`: the flow's body works on values of size
    :math:`s` and the sample is stored at :math:`\mu`'s magnitude, both with the dtype's
    absolute resolution :math:`\epsilon \max(1, |\mu|)`. The STL gradient evaluates
    :math:`\log q` through the inverse flow, i.e. recovers :math:`z` from :math:`u`, with a
    relative error of about :math:`\epsilon \max(1, |\mu|)/s`: at :math:`s = 10^{-6}` in
    float32 that is percent-level, thousands of nats of error in :math:`\log q` over a few
    hundred dimensions and a diverging loss; below it, NaN samples. So :math:`s` must be at
    least ``INIT_SCALE_ULPS`` :math:`\epsilon \max(1, \|\mu\|_\infty)` (1.2e-4 in
    float32 for a start within the unit box, 2.2e-12 in float64), where the inverse agrees
    with the forward :math:`\log q` to about 1e-5 at the start and training stays stable
    (at 1e-4 in float32 the loss spikes to thousands of nats below its value within a few
    steps).

    Raises:
        ValueError: naming ``init_scale``, the dtype and the limit.
    """
    eps = torch.finfo(loc.dtype).eps
    magnitude = max(1.0, float(loc.abs().max())) if loc.numel() else 1.0
    limit = INIT_SCALE_ULPS * eps * magnitude
    if init_scale < limit:
        raise ValueError(
            f"init_scale={init_scale:g} is below what {loc.dtype} resolves around the init "
            f"point (|loc| up to {magnitude:.3g}): the smallest usable init_scale is "
            f"{limit:.2g} ({INIT_SCALE_ULPS} x eps {eps:.2g} x max(1, |loc|)); below it the "
            "log-density through the inverse flow (the STL gradient) is wrong and samples can "
            "be NaN. Use init_scale >= that, or a float64 model"
        )


def gaussian_elbo(
    log_density: Callable[[Tensor], Tensor], loc: Tensor, scale_tril: Tensor, particles: int
) -> float:
    r"""Monte Carlo ELBO of :math:`\mathcal{N}(\text{loc}, LL^\top)` against ``log_density``
    (``-inf`` when it cannot be evaluated, e.g. a degenerate start whose samples underflow)."""
    q = dist.MultivariateNormal(loc, scale_tril=scale_tril)
    u = q.sample((particles,))
    try:
        values = log_density(u) - q.log_prob(u)
    except (ValueError, RuntimeError):
        return -math.inf
    value = float(values.mean())
    return value if math.isfinite(value) else -math.inf


def initial_gaussian(
    log_density: Callable[[Tensor], Tensor],
    loc: Tensor,
    init_scale: float,
    mode: str,
    try_laplace: bool,
    particles: int,
    max_time: float | None = None,
    progress: bool | None = None,
) -> tuple[str, Tensor, Tensor, dict[str, Any]]:
    r"""Choose the start: ``(choice, loc, scale_tril, report)``.

    Args:
        log_density: unnormalised log-density of latents (S, D) -> (S,).
        loc: the init strategy's point (D,).
        init_scale: the scale of the ``"loc"`` candidate, :math:`\mathcal{N}(\text{loc}, s^2 I)`.
        mode: ``"loc"``, ``"laplace"`` (Laplace unless it fails, with a warning) or ``"auto"``
            (the candidate with the better ELBO estimate).
        try_laplace: whether to compute the Laplace candidate at all.
        particles: draws of each ELBO estimate.
        max_time: time budget of the search for the mode, in seconds (see
            :func:`~pyroflows.infer.guides.laplace.find_map`).
        progress: show the search's progress once it has run a second (``None``: on a
            terminal).

    ``report`` says what was done: ``"elbo"`` (each candidate's ELBO estimate), and with
    Laplace tried, ``"map_search"`` (L-BFGS evaluations, seconds, why it stopped) and
    ``"summary"``, one line such as ``"Laplace start: L-BFGS converged in 34 evaluations
    (0.8 s); ELBO laplace -210.3, loc -4521.0: laplace"``.
    """
    D = loc.shape[-1]
    candidates = {"loc": (loc, init_scale * torch.eye(D, dtype=loc.dtype, device=loc.device))}
    report: dict[str, Any] = {"elbo": {}}
    if try_laplace:

        def log_p(u: Tensor) -> Tensor:
            return log_density(u[None])[0]

        mode_point, search = find_map(log_p, loc, max_time=max_time, progress=progress)
        report["map_search"] = search
        scale_tril = None if mode_point is None else laplace_approximation(log_p, mode_point)
        if scale_tril is not None:
            candidates["laplace"] = (mode_point, scale_tril)
        elif mode == "laplace":
            warnings.warn(
                "the Laplace approximation failed (no finite MAP or a Hessian that is not "
                f"positive definite; the search for the mode {search['stopped']}); starting "
                "from init_loc_fn/init_scale",
                stacklevel=4,
            )
    choice = "loc"
    if len(candidates) > 1:
        with torch.no_grad():
            report["elbo"] = {
                k: gaussian_elbo(log_density, m, L, particles) for k, (m, L) in candidates.items()
            }
        elbos = report["elbo"]
        choice = "laplace" if mode == "laplace" else max(elbos, key=lambda k: elbos[k])
    if try_laplace:
        search = report["map_search"]
        how = {"converged": "converged", "max_time": "stopped at max_time", "failed": "failed"}
        elbo = ", ".join(f"{k} {v:.1f}" for k, v in report["elbo"].items())
        report["summary"] = (
            f"Laplace start: L-BFGS {how[search['stopped']]} after {search['evaluations']} "
            f"evaluations ({search['seconds']:.1f} s)"
            + (f"; ELBO {elbo}" if elbo else "; the Laplace approximation failed")
            + f": {choice}"
        )
    return (choice, *candidates[choice], report)


@torch.no_grad()
def set_affine(
    flows_and_slices: Sequence[tuple[Flow, slice]], loc: Tensor, scale_tril: Tensor, scale: float
) -> None:
    """Set each flow's fixed whitening ``u = loc + scale_tril @ w`` (its last layer; the block
    of ``scale_tril``'s covariance for a flow over a slice) and its trainable base-side affine
    ``y = scale * z`` (its first layer)."""
    cov = scale_tril @ scale_tril.T
    for flow, part in flows_and_slices:
        trainable, whitening = flow.transforms[0], flow.transforms[-1]
        L = torch.linalg.cholesky(cov[part, part])
        whitening.loc.copy_(loc[part])
        if isinstance(whitening, LowerTriangularAffine):
            whitening.off_diag.copy_(L.tril(-1))
            whitening.log_diag.copy_(L.diagonal().log())
            trainable.off_diag.zero_()
            trainable.log_diag.fill_(math.log(scale))
        else:
            whitening.log_scale.copy_(L.diagonal().log())
            trainable.log_scale.fill_(math.log(scale))
        trainable.loc.zero_()
