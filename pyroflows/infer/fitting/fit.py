"""Maximum-likelihood density estimation: train a flow on samples."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ...checks import as_data
from ...core import Flow
from ...density.base import AutoregressiveModel
from ...nn.device import module_device_dtype

__all__ = ["FitResult", "fit"]


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        history: one dict per epoch with ``epoch``, ``train_loglik`` (mean log-likelihood per
            point over the epoch's batches, nats), ``val_loglik`` (on the validation split,
            ``nan`` without one) and ``seconds``.
        best_epoch: the epoch whose parameters the flow holds at the end.
        best_val_loglik: its validation log-likelihood (``nan`` without validation).
        stopped_early: whether patience ran out before ``epochs``.
        val_index: indices of the points held out for validation (empty without).
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loglik: float = math.nan
    stopped_early: bool = False
    val_index: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def __repr__(self) -> str:
        last = self.history[-1] if self.history else {}
        return (
            f"FitResult(epochs={len(self.history)}, best_epoch={self.best_epoch}, "
            f"best_val_loglik={self.best_val_loglik:.4f}, "
            f"last_train_loglik={last.get('train_loglik', math.nan):.4f}, "
            f"stopped_early={self.stopped_early})"
        )


def fit(
    flow: Flow | AutoregressiveModel,
    data: Tensor | np.ndarray,
    context: Tensor | np.ndarray | None = None,
    weights: Tensor | np.ndarray | None = None,
    *,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    validation: float = 0.1,
    patience: int = 10,
    clip_grad: float | None = 5.0,
    optimizer: torch.optim.Optimizer | None = None,
    seed: int | None = 0,
    progress: bool | None = None,
) -> FitResult:
    r"""Fit ``flow`` to ``data`` by maximum (weighted) likelihood with Adam and early stopping.

    Maximises :math:`\sum_n w_n \log p(x_n \mid c_n) / \sum_n w_n` over mini-batches. A random
    ``validation`` fraction is held out; after every epoch its log-likelihood is measured and
    the best parameters so far are kept; training stops after ``patience`` epochs without
    improvement and the flow is left holding the best parameters.

    All inputs are checked before any parameter changes: a wrong shape, NaN or infinite values
    raise ``ValueError``. Data are moved to the flow's device and dtype.

    Args:
        flow: the :class:`~pyroflows.Flow` to train (in place), or an autoregressive density
            model of :mod:`pyroflows.density` (``made``, ``nade``, ...), which has the same
            ``model(context).log_prob`` interface.
        data: samples, shape (n, features).
        context: conditioning values, shape (n, context), for a conditional flow.
        weights: non-negative per-sample weights, shape (n,) (importance weights, say).
        epochs: maximum number of passes over the training split.
        batch_size: mini-batch size.
        lr: Adam learning rate (ignored when ``optimizer`` is given).
        weight_decay: Adam weight decay.
        validation: held-out fraction in ``[0, 1)``; ``0`` trains on everything and keeps the
            last parameters.
        patience: epochs without validation improvement before stopping.
        clip_grad: gradient-norm clip (``None``: no clipping).
        optimizer: a ready optimizer over ``flow.parameters()``.
        seed: seed of the split and the shuffling (``None``: torch's global RNG).
        progress: show a tqdm progress bar (default: only on a terminal).

    Returns:
        A :class:`FitResult` with the per-epoch history.

    Example:
        >>> import pyroflows
        >>> x = torch.randn(500, 2) @ torch.tensor([[1.0, 0.8], [0.0, 0.6]])
        >>> flow = pyroflows.flows.build("maf", 2, transforms=2, hidden=(16, 16))
        >>> result = pyroflows.infer.fit(flow, x, epochs=5, progress=False)
        >>> len(result.history)
        5
    """
    if not isinstance(flow, Flow | AutoregressiveModel):
        raise TypeError(f"fit() takes a pyroflows.Flow or a pyroflows.density model, got {type(flow).__name__}")
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not 0 <= validation < 1:
        raise ValueError(f"validation must be a fraction in [0, 1), got {validation!r}")
    device, dtype = module_device_dtype(flow)
    x = as_data(data, "data", flow.features, None, device, dtype)
    n = x.shape[0]
    if flow.context_features:
        if context is None:
            raise ValueError(f"this flow is conditional: pass a context of shape (n, {flow.context_features})")
        c = as_data(context, "context", flow.context_features, n, device, dtype)
    elif context is not None:
        raise ValueError("this flow takes no context (it was built with context=0)")
    else:
        c = None
    if weights is None:
        w = torch.ones(n, device=device, dtype=dtype)
    else:
        w = as_data(torch.as_tensor(weights).reshape(-1, 1), "weights", 1, n, device, dtype)[:, 0]
        if (w < 0).any() or not w.sum() > 0:
            raise ValueError("weights must be non-negative with a positive sum")
    n_val = int(round(validation * n))
    if n - n_val < 1 or (validation > 0 and n_val < 1):
        raise ValueError(f"{n} points are too few for a validation fraction of {validation}")

    generator = torch.Generator()
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    order = torch.randperm(n, generator=generator).to(device)
    val_index, train_index = order[:n_val], order[n_val:]
    optimizer = optimizer or torch.optim.Adam(flow.parameters(), lr=lr, weight_decay=weight_decay)

    # The distribution reads the flow's parameters when evaluated, so an unconditional one is
    # built once rather than per step.
    unconditional = flow() if c is None else None

    def weighted_mean_loglik(index: Tensor) -> Tensor:
        distribution = unconditional if c is None else flow(c[index])
        log_prob = distribution.log_prob(x[index])
        wi = w[index]
        return (wi * log_prob).sum() / wi.sum().clamp_min(torch.finfo(dtype).tiny)

    @torch.no_grad()
    def evaluate(index: Tensor) -> float:
        total, weight = 0.0, 0.0
        for chunk in index.split(max(batch_size, 4096)):
            ctx = None if c is None else c[chunk]
            total += float((w[chunk] * flow(ctx).log_prob(x[chunk])).sum())
            weight += float(w[chunk].sum())
        return total / weight if weight > 0 else math.nan

    result = FitResult(val_index=val_index)
    # Restored if training blows up before any epoch finishes.
    best_state = copy.deepcopy(flow.state_dict())
    best = -math.inf
    stale = 0
    bar = tqdm(range(1, epochs + 1), desc="fit", disable=None if progress is None else not progress)
    for epoch in bar:
        start = time.perf_counter()
        flow.train()
        shuffled = train_index[torch.randperm(len(train_index), generator=generator).to(device)]
        total, weight = 0.0, 0.0
        for step, batch in enumerate(shuffled.split(batch_size)):
            loglik = weighted_mean_loglik(batch)
            if not torch.isfinite(loglik):
                flow.load_state_dict(best_state)
                raise FloatingPointError(
                    f"the log-likelihood became {float(loglik.detach())} at epoch {epoch}, step {step}; "
                    "the flow holds the best (or initial) parameters. Try a smaller lr, or "
                    "standardize the data (build(..., standardize=data))."
                )
            optimizer.zero_grad(set_to_none=True)
            (-loglik).backward()
            if clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(flow.parameters(), clip_grad)
            optimizer.step()
            batch_weight = float(w[batch].sum())
            total += float(loglik.detach()) * batch_weight
            weight += batch_weight
        flow.eval()
        train_loglik = total / weight if weight > 0 else math.nan
        val_loglik = evaluate(val_index) if n_val else math.nan
        result.history.append(
            {"epoch": epoch, "train_loglik": train_loglik, "val_loglik": val_loglik,
             "seconds": time.perf_counter() - start}
        )
        bar.set_postfix(train=f"{train_loglik:.3f}", val=f"{val_loglik:.3f}")
        score = val_loglik if n_val else train_loglik
        if score > best:
            best, stale = score, 0
            result.best_epoch = epoch
            if n_val:
                best_state = copy.deepcopy(flow.state_dict())
        else:
            stale += 1
            if n_val and stale >= patience:
                result.stopped_early = True
                break
    bar.close()
    if n_val:
        flow.load_state_dict(best_state)
        result.best_val_loglik = best
    else:
        result.best_epoch = len(result.history)
    return result
