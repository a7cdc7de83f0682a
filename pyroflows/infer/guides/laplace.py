"""Maximum a posteriori and Laplace approximation of an unnormalised log-density.

Used by the flow autoguides to start from a Gaussian that already matches the scale and the
correlations of the posterior (a whitening of the latent space), which badly scaled models
such as a regression on raw covariates need.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

__all__ = [
    "MAX_REJECTED_IN_A_ROW",
    "REJECTED_PENALTY",
    "STATIONARY_TOLERANCE",
    "find_map",
    "laplace_approximation",
]

#: A rejected trial point's loss exceeds the best seen by this times ``1 + |best|``.
REJECTED_PENALTY = 1e3
#: A search whose line search meets this many points in a row that it must reject has
#: nowhere to go (on the Neal's funnel, every step towards the unbounded neck overflows): it
#: ends as failed.
MAX_REJECTED_IN_A_ROW = 10
#: A converged search's end is a mode when every coordinate of the log-density's gradient
#: there is at most this times ``1 + |log-density|``.
STATIONARY_TOLERANCE = 1e-3


class _OutOfTimeError(Exception):
    """Raised inside L-BFGS's closure when the time budget is spent."""


class _RejectedError(Exception):
    """Raised inside L-BFGS's closure after :data:`MAX_REJECTED_IN_A_ROW` rejected points."""


def find_map(
    log_density: Callable[[Tensor], Tensor],
    init: Tensor,
    max_iter: int = 500,
    tolerance: float = 1e-9,
    max_time: float | None = None,
    progress: bool | None = None,
) -> tuple[Tensor | None, dict[str, Any]]:
    """Maximise ``log_density`` (a function of one vector) from ``init`` with L-BFGS.

    Args:
        log_density: the function to maximise, (D,) -> ().
        init: the starting point (D,).
        max_iter: L-BFGS iterations at most.
        tolerance: gradient tolerance (and, times 1e-3, change tolerance).
        max_time: time budget in seconds: the search stops when it is spent and keeps the best
            point evaluated so far (``None``: no budget).
        progress: a tqdm bar of the evaluations, shown once the search has run a second
            (``None``: only on a terminal).

    Returns:
        ``(point, report)``: the maximiser, or ``None`` when the optimisation produced
        non-finite values (an unbounded density such as a funnel's, or a numerical failure);
        ``report`` holds ``evaluations``, ``seconds`` and ``stopped`` (``"converged"``,
        ``"max_time"``, ``"failed"``, or ``"stalled"``: L-BFGS ended where the gradient is not
        near zero, see :data:`STATIONARY_TOLERANCE`). Trial points where ``log_density``
        raises ``ValueError``/``RuntimeError`` or is not finite are rejected (the line search
        backs off), as Stan rejects them; at ``init``, or :data:`MAX_REJECTED_IN_A_ROW` in a
        row, that ends the search as ``"failed"``. ``report["rejected"]`` counts them.
    """
    x = init.detach().clone().requires_grad_(True)
    optimizer = torch.optim.LBFGS(
        [x],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=tolerance,
        tolerance_change=tolerance * 1e-3,
        history_size=20,
        line_search_fn="strong_wolfe",
    )
    start = time.perf_counter()
    best: list[Any] = [math.inf, None]  # the lowest loss seen and its point
    # Counted here: a disabled tqdm bar does not count.
    counts = {"evaluations": 0, "rejected": 0, "rejected_in_a_row": 0}
    bar = tqdm(
        desc="Laplace start: L-BFGS for the mode",
        unit=" evaluations",
        delay=1.0,
        disable=None if progress is None else not progress,
        leave=False,
    )

    def closure() -> Tensor:
        if max_time is not None and time.perf_counter() - start > max_time:
            raise _OutOfTimeError
        optimizer.zero_grad()
        try:
            loss = -log_density(x)
        except (RuntimeError, ValueError):
            # A trial point where the model cannot be evaluated (an ODE solve that gives up, a
            # parameter out of its support) is rejected, as Stan rejects it. At the start there
            # is nothing to back off to.
            if not counts["evaluations"]:
                raise
            loss = None
        counts["evaluations"] += 1
        bar.update()
        if loss is not None and torch.isfinite(loss) and float(loss.detach()) <= penalty():
            loss.backward()
            if float(loss.detach()) < best[0]:
                best[:] = [float(loss.detach()), x.detach().clone()]
            counts["rejected_in_a_row"] = 0
            return loss
        counts["rejected"] += 1
        counts["rejected_in_a_row"] += 1
        if counts["rejected_in_a_row"] >= MAX_REJECTED_IN_A_ROW or math.isinf(best[0]):
            raise _RejectedError  # stuck, or nothing to back off to
        # Rejected: a loss worse than any seen, finite and flat, so that the line search's
        # interpolation backs off towards the last good point (an infinite one, or a finite
        # one near overflow, turns it NaN).
        x.grad = torch.zeros_like(x)
        return torch.tensor(penalty(), dtype=x.dtype, device=x.device)

    def penalty() -> float:
        """The loss of a rejected point; a worse one is rejected too."""
        return best[0] + REJECTED_PENALTY * (1 + abs(best[0]))

    stopped = "converged"
    try:
        optimizer.step(closure)
        point = x.detach()
    except _OutOfTimeError:
        stopped, point = "max_time", best[1]
    except (RuntimeError, ValueError, _RejectedError):
        stopped, point = "failed", None
    finally:
        bar.close()
    report = {
        "evaluations": counts["evaluations"],
        "rejected": counts["rejected"],
        "seconds": time.perf_counter() - start,
        "stopped": stopped,
    }
    gradient = None if point is None else _finite_gradient(log_density, point)
    if gradient is None:
        if stopped == "converged":
            report["stopped"] = "failed"
        return None, report
    value, gradient = gradient
    if stopped == "converged" and float(gradient.abs().max()) > STATIONARY_TOLERANCE * (
        1 + abs(value)
    ):
        # L-BFGS also ends after max_iter iterations, or where its line search makes no
        # progress (at a kink, say): that end is no mode.
        report["stopped"] = "stalled"
        return None, report
    return point, report


def _finite_gradient(
    log_density: Callable[[Tensor], Tensor], point: Tensor
) -> tuple[float, Tensor] | None:
    """``(log_density(point), its gradient)``, or ``None`` where either is not finite or the
    density cannot be evaluated."""
    if not torch.isfinite(point).all():
        return None
    x = point.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            value = log_density(x)
            (gradient,) = torch.autograd.grad(value, x)
    except (RuntimeError, ValueError):
        return None
    if not (torch.isfinite(value) and torch.isfinite(gradient).all()):
        return None
    return float(value.detach()), gradient


def laplace_approximation(
    log_density: Callable[[Tensor], Tensor], loc: Tensor, jitter: float = 0.0
) -> Tensor | None:
    """Cholesky factor :math:`L` of :math:`H^{-1}`, :math:`H = -\\nabla^2 \\log p(\\mathrm{loc})`.

    Returns ``None`` when the Hessian is not finite or not positive definite.
    """
    try:
        H = -torch.autograd.functional.hessian(log_density, loc.detach())
    except (ValueError, RuntimeError):
        return None
    if not torch.isfinite(H).all():
        return None
    H = 0.5 * (H + H.T).double()
    if jitter:
        H = H + jitter * torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    chol_h, info = torch.linalg.cholesky_ex(H)
    if int(info) != 0:
        return None
    # H = C C^T  =>  H^{-1} = C^{-T} C^{-1}; its lower Cholesky factor comes from the
    # reversed-order trick, but a direct factorisation of the inverse is simpler and stable here.
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    cov = torch.cholesky_solve(eye, chol_h)
    cov = 0.5 * (cov + cov.T)
    L, info = torch.linalg.cholesky_ex(cov)
    if int(info) != 0 or not torch.isfinite(L).all():
        return None
    return L.to(loc.dtype)
