"""Maximum a posteriori and Laplace approximation of an unnormalised log-density.

Used by the flow autoguides to start from a Gaussian that already matches the scale and the
correlations of the posterior (a whitening of the latent space), which badly scaled models
such as a regression on raw covariates need.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["find_map", "laplace_approximation"]


def find_map(
    log_density: Callable[[Tensor], Tensor],
    init: Tensor,
    max_iter: int = 500,
    tolerance: float = 1e-9,
) -> Tensor | None:
    """Maximise ``log_density`` (a function of one vector) from ``init`` with L-BFGS.

    Returns the maximiser, or ``None`` when the optimisation produced non-finite values
    (an unbounded density such as a funnel's, or a numerical failure).
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

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = -log_density(x)
        if torch.isfinite(loss):
            loss.backward()
        else:  # make the line search back off
            loss = torch.full_like(loss, math.inf)
            x.grad = torch.zeros_like(x)
        return loss

    try:
        optimizer.step(closure)
    except (RuntimeError, ValueError):
        return None
    x = x.detach()
    if not torch.isfinite(x).all() or not torch.isfinite(log_density(x)):
        return None
    return x


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
