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

__all__ = ["find_map", "laplace_approximation"]


class _OutOfTimeError(Exception):
    """Raised inside L-BFGS's closure when the time budget is spent."""


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
        ``"max_time"`` or ``"failed"``).
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
    evaluations = [0]  # counted here: a disabled tqdm bar does not count
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
        loss = -log_density(x)
        evaluations[0] += 1
        bar.update()
        if torch.isfinite(loss):
            loss.backward()
            if float(loss.detach()) < best[0]:
                best[:] = [float(loss.detach()), x.detach().clone()]
        else:  # make the line search back off
            loss = torch.full_like(loss, math.inf)
            x.grad = torch.zeros_like(x)
        return loss

    stopped = "converged"
    try:
        optimizer.step(closure)
        point = x.detach()
    except _OutOfTimeError:
        stopped, point = "max_time", best[1]
    except (RuntimeError, ValueError):
        stopped, point = "failed", None
    finally:
        bar.close()
    report = {
        "evaluations": evaluations[0],
        "seconds": time.perf_counter() - start,
        "stopped": stopped,
    }
    if point is None or not torch.isfinite(point).all() or not torch.isfinite(log_density(point)):
        if stopped == "converged":
            report["stopped"] = "failed"
        return None, report
    return point, report


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
