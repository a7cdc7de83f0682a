r"""The training loop of :func:`~pyroflows.infer.fit`: epochs of weighted maximum likelihood,
validation, best-state bookkeeping and the callback hooks.

One step maximises the weighted mean log-likelihood of a mini-batch :math:`B`,

.. math:: \hat\ell_B(\theta) = \frac{\sum_{n \in B} w_n \log p_\theta(x_n \mid c_n)}
          {\sum_{n \in B} w_n},

by a gradient step on :math:`-\hat\ell_B`; an epoch is one pass over the shuffled training
rows; the validation score is the same weighted mean over the held-out rows, computed under
a fixed RNG seed so a stochastic objective (a dequantisation bound) is comparable across
epochs and does not disturb the training noise.

With a process group (:mod:`~pyroflows.infer.fitting.distributed`), every rank draws the same
global batches, computes its part of each, and the gradients, sums and stopping decisions are
combined over the ranks; without one, nothing here communicates.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim.lr_scheduler import ReduceLROnPlateau
from tqdm.auto import tqdm

from ...nn.transaction import transaction
from .callbacks import FitState
from .distributed import Group, pending_initialization

__all__ = ["evaluate", "restore_best", "run_epochs", "snapshot"]


def snapshot(state: FitState) -> dict[str, Tensor]:
    """A detached copy of the model's parameters and buffers."""
    return {k: v.detach().clone() for k, v in state.model.state_dict().items()}


def restore_best(state: FitState) -> None:
    """Put the best parameters back and the model in eval mode."""
    if state.best_state:
        with transaction(state.model):  # all or nothing, whatever the model's class
            state.model.load_state_dict(state.best_state)
    state.model.eval()


def _distribution(state: FitState, index: Tensor) -> Any:
    # Built per batch: a distribution may cache functions of the parameters when constructed.
    return state.model() if state.context is None else state.model(state.context[index])


def _weighted_sum(state: FitState, index: Tensor) -> tuple[Tensor, Tensor]:
    w = state.weights[index]
    return (w * _distribution(state, index).log_prob(state.data[index])).sum(), w.sum()


@torch.no_grad()
def evaluate(
    state: FitState, index: Tensor, chunk: int, seed: int, group: Group | None = None
) -> float:
    """Weighted mean log-likelihood of rows ``index`` (``nan`` for none), in chunks of ``chunk``
    rows, under torch's RNG seeded with ``seed`` and restored afterwards. With a ``group``,
    each rank scores its part of the rows (under ``seed + rank``) and the sums and weights
    are added over the ranks."""
    if not len(index):
        return math.nan
    if group is not None:
        index, seed = group.shard(index), seed + group.rank
    device = state.data.device
    total, weight = 0.0, 0.0
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for part in index.split(chunk):
            value, w = _weighted_sum(state, part)
            total, weight = total + float(value), weight + float(w)
    if group is not None:
        total, weight = group.sum_floats(total, weight)
    return total / weight if weight > 0 else math.nan


def _hooks(callbacks: Sequence[Any], name: str, state: FitState) -> Any:
    """Call hook ``name`` of every callback; the first one that asks to stop, or ``None``."""
    stopper = None
    for callback in callbacks:
        hook = getattr(callback, name, None)
        if hook is not None and hook(state) and stopper is None:
            stopper = callback
    return stopper


def _reason(callback: Any) -> str:
    return getattr(callback, "reason", "") or type(callback).__name__


def _not_finite(state: FitState, loglik: float, step: int) -> FloatingPointError:
    restore_best(state)
    return FloatingPointError(
        f"the log-likelihood became {loglik} at epoch {state.epoch}, step {step}; "
        "the model holds the best (or initial) parameters. Try a smaller lr, or "
        "standardize the data (build(..., standardize=data))."
    )


def _shard_backward(
    state: FitState, batch: Tensor, params: list[Tensor], group: Group, first: bool
) -> tuple[float, float]:
    """This rank's part of a global batch: back-propagate its log-likelihood sum divided by
    the global batch's weight total, then sum the gradients over the ranks; returns the
    global log-likelihood sum and weight total of the batch (the same on every rank)."""
    w = state.weights[batch].sum()  # every rank holds every weight: no communication
    if first and pending_initialization(state.model):
        # A data-dependent initialisation (ActNorm) sees the whole first batch, as in one
        # process, and then rank 0's result is everyone's.
        with torch.no_grad():
            _weighted_sum(state, batch)
        group.broadcast_state(state.model)
    shard = group.shard(batch)
    state.optimizer.zero_grad(set_to_none=True)
    if len(shard):  # empty when the batch has fewer rows than there are ranks
        value, _ = _weighted_sum(state, shard)
        (-value / w.clamp_min(torch.finfo(w.dtype).tiny)).backward()
    else:
        value = torch.zeros((), dtype=w.dtype, device=w.device)
    return group.reduce_gradients(params, value), float(w)


def _train_epoch(
    state: FitState,
    callbacks: Sequence[Any],
    batch_size: int,
    clip_grad: float | None,
    step_schedule: bool,
    group: Group | None = None,
    step_decisions: bool = False,
) -> tuple[float, Any]:
    """One pass over the training rows; returns the epoch's mean log-likelihood and the
    callback that asked to stop after a step (or ``None``)."""
    model, params = state.model, [p for p in state.model.parameters() if p.requires_grad]
    model.train()
    order = torch.randperm(len(state.train_index), generator=state.generator, device="cpu")
    total, weight, stopper = 0.0, 0.0, None
    for i, batch in enumerate(
        state.train_index[order.to(state.train_index.device)].split(batch_size)
    ):
        if group is None:
            value, w = _weighted_sum(state, batch)
            loglik = value / w.clamp_min(torch.finfo(value.dtype).tiny)
            if not torch.isfinite(loglik):
                raise _not_finite(state, float(loglik.detach()), i)
            state.optimizer.zero_grad(set_to_none=True)
            (-loglik).backward()
            value, w = float(value.detach()), float(w)
        else:  # the same numbers from the ranks' parts, and the same on every rank
            value, w = _shard_backward(state, batch, params, group, i == 0)
            loglik = value / max(w, torch.finfo(state.weights.dtype).tiny)
            if not math.isfinite(loglik):
                raise _not_finite(state, loglik, i)
        if clip_grad is not None:
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        state.optimizer.step()
        if step_schedule:
            state.scheduler.step()
        state.step += 1
        total, weight = total + value, weight + w
        stopper = _hooks(callbacks, "on_step_end", state)
        if step_decisions:
            stopper = group.decide(callbacks, stopper)
        if stopper is not None:
            break
    model.eval()
    return (total / weight if weight > 0 else math.nan), stopper


def run_epochs(
    state: FitState,
    callbacks: Sequence[Any],
    *,
    epochs: int,
    batch_size: int,
    eval_batch_size: int,
    clip_grad: float | None,
    schedule_interval: str,
    eval_seed: int,
    progress: bool | None,
    group: Group | None = None,
    step_decisions: bool = False,
) -> str:
    """Train from ``state.epoch + 1`` to ``epochs`` (or until a callback stops); returns the
    stop reason (``"epochs"`` when the epoch budget ran out). With a ``group``: the progress
    bar on rank 0 only, and rank 0's stopping decisions everywhere (after every step too when
    ``step_decisions``)."""
    reason = "epochs"
    has_val = len(state.val_index) > 0
    step_schedule = state.scheduler is not None and schedule_interval == "step"
    bar = tqdm(
        range(state.epoch + 1, epochs + 1),
        desc="fit",
        disable=(group is not None and not group.main)
        or (None if progress is None else not progress),
    )
    try:
        for epoch in bar:
            state.epoch = epoch
            start = time.perf_counter()
            _hooks(callbacks, "on_epoch_start", state)
            train, stopper = _train_epoch(
                state, callbacks, batch_size, clip_grad, step_schedule, group, step_decisions
            )
            val = (
                evaluate(state, state.val_index, eval_batch_size, eval_seed, group)
                if has_val
                else math.nan
            )
            state.history.append(
                {
                    "epoch": epoch,
                    "train_loglik": train,
                    "val_loglik": val,
                    "seconds": time.perf_counter() - start,
                }
            )
            bar.set_postfix(train=f"{train:.3f}", val=f"{val:.3f}")
            score = val if has_val else train
            # Without validation the last epoch counts as the best (the parameters kept).
            if not has_val or score > state.best_score:
                state.best_score, state.best_epoch = score, epoch
                state.best_state = snapshot(state)
            if state.scheduler is not None and schedule_interval == "epoch":
                if isinstance(state.scheduler, ReduceLROnPlateau):
                    state.scheduler.step(score)
                else:
                    state.scheduler.step()
            # Every epoch-end hook runs (a checkpoint is due); a step-level stop came first.
            at_end = _hooks(callbacks, "on_epoch_end", state)
            if group is not None:
                at_end = group.decide(callbacks, at_end)
            stopper = stopper or at_end
            if stopper is not None:
                reason = _reason(stopper)
                break
    finally:
        bar.close()
    return reason
