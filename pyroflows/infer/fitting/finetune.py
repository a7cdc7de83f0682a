r"""Fine-tuning a greedy deep destructor by gradient: all layers jointly, from the greedy start.

The destructors fit greedily, layer by layer, without gradients; their density
:math:`p(x) = \prod_t p_t(x^{t-1})` is differentiable in every layer's parameters, so
:func:`fit` on the destructor's :meth:`~pyroflows.destructors.Destructor.as_flow` (which shares
its parameters) maximises the joint likelihood. The greedy start competes: if no epoch beats
its held-out log-likelihood, it is kept.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...checks import as_data
from ...destructors.base import Destructor
from ...nn.device import module_device_dtype
from .fit import FitResult, fit

__all__ = ["fine_tune"]


def fine_tune(
    destructor: Destructor,
    data: Tensor | np.ndarray,
    weights: Tensor | np.ndarray | None = None,
    **options: Any,
) -> FitResult:
    """Train all layers of a fitted ``destructor`` jointly by maximum likelihood (in place).

    Runs :func:`fit` on ``destructor.as_flow()``, so the options are ``fit``'s: ``epochs``,
    ``batch_size``, ``lr``, ``validation`` (default 0.1; the best epoch's parameters are
    kept), ``patience``, ``seed``, ``progress``, ``max_time``, ``callbacks``, ....
    Rotations stay fixed (buffers); histogram, Gaussian, mixture and tree-split parameters
    move.

    The greedy start competes too: with a validation split, if no epoch beats the greedy
    destructor's held-out log-likelihood (on the same split ``fit`` holds out, with the same
    weighting), the greedy parameters are restored and the result's ``kept_greedy`` is ``True``.

    A KeyboardInterrupt during training ends it as it ends :func:`fit`: nothing is
    re-raised; the destructor holds the best state reached (the best epoch's, or the greedy
    start's when that scores better), in eval mode, and the returned result says
    ``interrupted=True``.

    Args:
        destructor: a fitted destructor (a :class:`~pyroflows.destructors.DeepDestructor`,
            or any single one).
        data: training data ``(n, features)`` in the destructor's domain.
        weights: optional non-negative per-point weights ``(n,)``.
        **options: :func:`fit`'s keywords.

    Returns:
        ``fit``'s :class:`FitResult`, plus ``greedy_val_loglik`` (``nan`` without validation)
        and ``kept_greedy`` attributes.

    Example:
        >>> from pyroflows.data.toy import toy
        >>> from pyroflows.destructors import DeepDestructor
        >>> x = toy("moons", 500, seed=0).double()
        >>> deep = DeepDestructor(2, layer="copula", max_layers=2, progress=False).fit(x)
        >>> result = fine_tune(deep, x, epochs=2, progress=False)
        >>> len(result.history) <= 2
        True
    """
    if not isinstance(destructor, Destructor):
        raise TypeError(
            f"destructor must be a pyroflows Destructor, got {type(destructor).__name__}"
        )
    flow = destructor.as_flow()  # RuntimeError when the destructor is not fitted
    device, dtype = module_device_dtype(destructor)
    x = as_data(data, "fine-tuning data", destructor.features, None, device, dtype)
    if destructor.domain_kind == "unit" and ((x < 0) | (x > 1)).any():
        raise ValueError(f"fine-tuning data must lie in the unit cube [0, 1]^{destructor.features}")
    options.setdefault("validation", 0.1)
    greedy = copy.deepcopy(destructor)
    result = fit(flow, x, weights=weights, **options)
    greedy_val = math.nan
    if len(result.val_index):
        # Score the greedy start on the very points fit held out, with fit's weighting.
        index = result.val_index.to(x.device)
        w = (
            torch.ones(len(index), dtype=dtype, device=device)
            if weights is None
            else torch.as_tensor(weights).to(dtype=dtype, device=device).reshape(-1)[index]
        )
        with torch.no_grad():
            loglik = torch.cat([greedy.call_and_ladj(part)[1] for part in x[index].split(4096)])
        greedy_val = float((w * loglik).sum() / w.sum())
    result.greedy_val_loglik = greedy_val
    result.kept_greedy = bool(math.isfinite(greedy_val) and not result.best_val_loglik > greedy_val)
    if result.kept_greedy:
        destructor.load_state_dict(greedy.state_dict())
    return result
