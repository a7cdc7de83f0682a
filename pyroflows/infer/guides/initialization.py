r"""The Gaussian a flow guide starts from: the init strategy's point with a fixed scale, or the
Laplace approximation at a mode (searched from that point and from random starts), whichever
has the best ELBO estimate.

For a candidate :math:`q_0 = \mathcal{N}(\mu, LL^\top)` the ELBO is estimated with :math:`S`
draws, :math:`\widehat{\mathcal{L}} = \frac1S\sum_s \log\tilde p(u_s) - \log q_0(u_s)`.
"""

from __future__ import annotations

import math
import time
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
#: Random starts of the search for the mode are uniform in [-R, R] per unconstrained
#: coordinate (Stan's default initialisation radius).
RANDOM_START_RADIUS = 2.0
#: Two searches found the same mode when every coordinate and the log-density agree to this
#: relative tolerance.
MODE_TOLERANCE = 1e-2
#: A random start's search runs at most this many times as many L-BFGS iterations as the init
#: point's search took evaluations (at least 50).
RANDOM_START_EVALUATIONS = 4


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


def _search_starts(loc: Tensor, starts: int) -> list[tuple[str, Tensor]]:
    """The init strategy's point, then ``starts`` points drawn uniformly in
    :math:`[-R, R]^D` (unconstrained), ``R`` = :data:`RANDOM_START_RADIUS` (Stan's default
    initialisation), on ``loc``'s device and in its dtype."""
    draws = [(torch.rand_like(loc) * 2 - 1) * RANDOM_START_RADIUS for _ in range(starts)]
    return [("init", loc)] + [("random", u) for u in draws]


def _same_mode(a: tuple[Tensor, float], b: tuple[Tensor, float]) -> bool:
    """Whether two searches' ``(point, log-density)`` ended at the same mode, to L-BFGS's
    accuracy (its stopping tolerances leave coordinates agreeing to a few digits)."""
    (pa, va), (pb, vb) = a, b
    close = ((pa - pb).abs() <= MODE_TOLERANCE * (1 + pb.abs())).all()
    return bool(close) and abs(va - vb) <= MODE_TOLERANCE * (1 + abs(vb))


def _find_modes(
    log_p: Callable[[Tensor], Tensor],
    loc: Tensor,
    starts: int,
    deadline: float,
    progress: bool | None,
) -> tuple[list[tuple[Tensor, float]], dict[str, Any]]:
    """L-BFGS from the init point and, when that search finds a mode, from ``starts`` random
    points (each capped at :data:`RANDOM_START_EVALUATIONS` times the first search's
    evaluations, in L-BFGS iterations), until ``deadline`` (a ``time.perf_counter()`` time):
    the distinct modes found, best first, with their log-densities, and the report. Without a
    mode from the init point the density is unbounded (a funnel) or fails to evaluate there,
    where random starts spend time on the same."""
    began = time.perf_counter()
    modes: list[tuple[Tensor, float]] = []
    ends: list[str] = []  # how each mode's search ended
    searches: list[dict[str, Any]] = []
    max_iter = None
    for origin, start in _search_starts(loc, starts):
        left = None if math.isinf(deadline) else deadline - time.perf_counter()
        if searches and (not modes or (left is not None and left <= 0)):
            searches.append({"start": origin, "stopped": "not run", "evaluations": 0})
            continue
        options = {} if max_iter is None else {"max_iter": max_iter}
        point, search = find_map(log_p, start, max_time=left, progress=progress, **options)
        if max_iter is None:  # the random starts' cap comes from the init point's search
            max_iter = max(RANDOM_START_EVALUATIONS * search["evaluations"], 50)
        search = {"start": origin, **search}
        searches.append(search)
        if point is None:
            continue
        with torch.no_grad():
            search["log_density"] = value = float(log_p(point))
        if not any(_same_mode((point, value), mode) for mode in modes):
            modes.append((point, value))
            ends.append(search["stopped"])
    best = max(range(len(modes)), key=lambda k: modes[k][1], default=None)
    modes.sort(key=lambda mode: -mode[1])
    ran = [s for s in searches if s["stopped"] != "not run"]
    report = {
        "evaluations": sum(s["evaluations"] for s in searches),
        "seconds": time.perf_counter() - began,
        # How the best mode's search ended, else how the first search failed or ran out.
        "stopped": ran[0]["stopped"] if best is None else ends[best],
        "searches": searches,
        "started": len(ran),
        "modes": [value for _, value in modes],
    }
    return modes, report


def initial_gaussian(
    log_density: Callable[[Tensor], Tensor],
    loc: Tensor,
    init_scale: float,
    mode: str,
    try_laplace: bool,
    particles: int,
    max_time: float | None = None,
    progress: bool | None = None,
    starts: int = 0,
) -> tuple[str, Tensor, Tensor, dict[str, Any]]:
    r"""Choose the start: ``(choice, loc, scale_tril, report)``.

    The Laplace candidates come from L-BFGS searches for the mode started at ``loc`` and, when
    that search finds one, at ``starts`` points drawn uniformly in :math:`[-2, 2]^D` (Stan's
    initialisation): a posterior with a local mode (the Lotka-Volterra ODE's, where the search
    from the prior's median ends 40 log-density units below the main mode) is started at the
    best of those found. Every distinct mode with a positive-definite Hessian is a candidate;
    the ELBO estimates decide.

    Args:
        log_density: unnormalised log-density of latents (S, D) -> (S,).
        loc: the init strategy's point (D,).
        init_scale: the scale of the ``"loc"`` candidate, :math:`\mathcal{N}(\text{loc}, s^2 I)`.
        mode: ``"loc"``, ``"laplace"`` (the best Laplace candidate unless none exists, with a
            warning) or ``"auto"`` (the candidate with the best ELBO estimate).
        try_laplace: whether to compute the Laplace candidates at all.
        particles: draws of each ELBO estimate.
        max_time: time budget in seconds of the whole choice (see
            :func:`~pyroflows.infer.guides.laplace.find_map`): starts left when it is spent are
            not searched, and modes other than the best get no Laplace approximation or ELBO
            estimate (the best mode's and the ``"loc"`` start's are always computed).
        progress: show each search's progress once it has run a second (``None``: on a
            terminal).
        starts: random starts besides ``loc``.

    ``report`` says what was done: ``"elbo"`` (each candidate's ELBO estimate: ``"loc"``,
    ``"laplace"`` for the best mode, ``"laplace 2"``, ... for the others), and with Laplace
    tried, ``"map_search"`` (L-BFGS evaluations and seconds in all, how the best mode's search
    stopped, ``"searches"`` one report per start, ``"started"`` how many ran, ``"modes"``
    the distinct modes' log-densities) and ``"summary"``, one line such as ``"Laplace start: L-BFGS converged
    after 170 evaluations from 5 starts (0.8 s), 2 modes; ELBO loc -4521.0, laplace -210.3,
    laplace 2 -251.6: laplace"``.
    """
    D = loc.shape[-1]
    deadline = math.inf if max_time is None else time.perf_counter() + max_time

    def in_time() -> bool:
        return time.perf_counter() < deadline

    candidates = {"loc": (loc, init_scale * torch.eye(D, dtype=loc.dtype, device=loc.device))}
    report: dict[str, Any] = {"elbo": {}}
    if try_laplace:

        def log_p(u: Tensor) -> Tensor:
            return log_density(u[None])[0]

        modes, search = _find_modes(log_p, loc, starts, deadline, progress)
        report["map_search"] = search
        for k, (point, _) in enumerate(modes):
            if k > 0 and not in_time():  # the best mode is always assessed, the others in time
                break
            scale_tril = laplace_approximation(log_p, point)
            if scale_tril is not None:
                candidates["laplace" if k == 0 else f"laplace {k + 1}"] = (point, scale_tril)
        if len(candidates) == 1 and mode == "laplace":
            warnings.warn(
                "the Laplace approximation failed (no finite MAP or a Hessian that is not "
                f"positive definite; the search for the mode {search['stopped']}); starting "
                "from init_loc_fn/init_scale",
                stacklevel=4,
            )
    choice = "loc"
    if len(candidates) > 1:
        with torch.no_grad():
            for k, (m, L) in list(candidates.items()):
                # An ODE model's ELBO estimate at a wild mode can take minutes: the "loc" start
                # and the best mode are always estimated, the other modes while time is left.
                if k in ("loc", "laplace") or in_time():
                    report["elbo"][k] = gaussian_elbo(log_density, m, L, particles)
                else:
                    del candidates[k]
        elbos = report["elbo"]
        allowed = [k for k in elbos if k != "loc"] if mode == "laplace" else list(elbos)
        choice = max(allowed, key=lambda k: elbos[k])
    if try_laplace:
        search = report["map_search"]
        how = {
            "converged": "converged",
            "max_time": "stopped at max_time",
            "failed": "failed",
            "stalled": "stalled short of a mode",
        }
        tried = search["started"]
        found = len(search["modes"])
        elbo = ", ".join(f"{k} {v:.1f}" for k, v in report["elbo"].items())
        report["summary"] = (
            f"Laplace start: L-BFGS {how[search['stopped']]} after {search['evaluations']} "
            f"evaluations from {tried} start{'s' * (tried > 1)} ({search['seconds']:.1f} s), "
            f"{found} mode{'s' * (found != 1)}"
            + (f"; ELBO {elbo}" if elbo else "; the Laplace approximation failed")
            + f": {choice}"
        )
    loc, scale_tril = candidates[choice]
    return ("loc" if choice == "loc" else "laplace"), loc, scale_tril, report


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
