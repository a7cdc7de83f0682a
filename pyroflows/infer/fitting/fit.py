"""Maximum-likelihood density estimation: train any density model on samples."""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ...checks import as_data, check_choice, check_count, check_real
from ...nn.device import module_device_dtype
from ...nn.transaction import transaction
from .callbacks import Callback, EarlyStopping, FitState, TimeBudget
from .checkpoint import Checkpoint, load_checkpoint
from .distributed import process_group, together
from .loop import restore_best, run_epochs, snapshot

__all__ = ["FitResult", "fit"]

#: Named learning-rate schedules of :func:`fit` (``schedule="cosine"``).
SCHEDULES = ("cosine",)


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        history: one dict per epoch with ``epoch``, ``train_loglik`` (weighted mean
            log-likelihood per point over the epoch's batches, nats), ``val_loglik`` (on the
            validation split, ``nan`` without one) and ``seconds``.
        best_epoch: the epoch whose parameters the model holds at the end.
        best_val_loglik: its validation log-likelihood (``nan`` without validation).
        stopped_early: whether early stopping ended the fit before ``epochs``.
        val_index: indices of the points held out for validation (empty without).
        stop_reason: ``"epochs"`` (the epoch budget ran out), ``"early_stopping"``,
            ``"max_time"`` (the time budget), ``"interrupted"`` (KeyboardInterrupt), or the
            ``reason`` of a callback that stopped the fit.
        interrupted: whether a KeyboardInterrupt ended the fit (the best parameters are kept).
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loglik: float = math.nan
    stopped_early: bool = False
    val_index: Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    stop_reason: str = "epochs"
    interrupted: bool = False

    def __repr__(self) -> str:
        last = self.history[-1] if self.history else {}
        return (
            f"FitResult(epochs={len(self.history)}, best_epoch={self.best_epoch}, "
            f"best_val_loglik={self.best_val_loglik:.4f}, "
            f"last_train_loglik={last.get('train_loglik', math.nan):.4f}, "
            f"stop_reason={self.stop_reason!r})"
        )


def _not_a_density(model: object, why: str = "") -> TypeError:
    return TypeError(
        "fit() takes a density model: a pyroflows.Flow, a pyroflows.density model, a PixelCNN "
        "or any nn.Module whose call model(context) returns a distribution with log_prob; got "
        f"{type(model).__name__}{why}"
    )


def _event_shape(model: nn.Module, context_row: Tensor | None) -> tuple[int, ...]:
    """``model.event_shape`` if it has one, else that of the distribution it returns."""
    shape = getattr(model, "event_shape", None)
    if shape is not None:
        return tuple(shape)
    try:
        with torch.no_grad():
            distribution = model() if context_row is None else model(context_row)
    except TypeError as error:
        raise _not_a_density(model, f" ({error})") from None
    if not hasattr(distribution, "log_prob") or not hasattr(distribution, "event_shape"):
        raise _not_a_density(model, f" (its call returned a {type(distribution).__name__})")
    return tuple(distribution.event_shape)


def _inputs(
    model: nn.Module,
    data: Any,
    context: Any,
    weights: Any,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Data ``(n, *event_shape)``, context ``(n, k)`` or ``None`` and weights ``(n,)``, checked
    and moved to the model's device and dtype."""
    device, dtype = module_device_dtype(model)
    features = getattr(model, "context_features", None)  # None: the model does not say
    if features and context is None:
        raise ValueError(f"this model is conditional: pass a context of shape (n, {features})")
    if features == 0 and context is not None:
        raise ValueError("this model takes no context (it was built with context=0)")
    c = (
        None
        if context is None
        else as_data(context, "context", features or None, None, device, dtype)
    )
    x = as_data(
        data, "data", _event_shape(model, None if c is None else c[:1]), None, device, dtype
    )
    n = x.shape[0]
    if c is not None and c.shape[0] != n:
        raise ValueError(f"context has {c.shape[0]} rows but the data has {n}")
    if weights is None:
        return x, c, torch.ones(n, device=device, dtype=dtype)
    shape = tuple(weights.shape) if isinstance(weights, Tensor) else np.shape(weights)
    if tuple(shape) not in ((n,), (n, 1)):
        raise ValueError(
            f"weights must have shape ({n},), one per data row ({n} rows); got {tuple(shape)}"
        )
    w = as_data(weights, "weights", None, n, device, dtype).reshape(-1)
    if (w < 0).any() or not w.sum() > 0:
        raise ValueError("weights must be non-negative with a positive sum")
    return x, c, w


def _scheduler(
    schedule: str | Callable | None,
    optimizer: torch.optim.Optimizer,
    interval: str,
    epochs: int,
    steps_per_epoch: int,
) -> Any:
    if schedule is None:
        return None
    if callable(schedule):
        return schedule(optimizer)
    check_choice("schedule", schedule, SCHEDULES)
    # Cosine annealing from lr to 0 over the whole budget, in the units it is stepped in.
    total = epochs if interval == "epoch" else epochs * steps_per_epoch
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def fit(
    model: nn.Module,
    data: Tensor | np.ndarray,
    context: Tensor | np.ndarray | None = None,
    weights: Tensor | np.ndarray | None = None,
    *,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    validation: float = 0.1,
    patience: int | None = 10,
    min_delta: float = 0.0,
    clip_grad: float | None = 5.0,
    optimizer: torch.optim.Optimizer | None = None,
    seed: int | None = 0,
    progress: bool | None = None,
    callbacks: Sequence[Any] = (),
    max_time: float | None = None,
    schedule: str | Callable[[torch.optim.Optimizer], Any] | None = None,
    schedule_interval: str = "epoch",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    resume: str | os.PathLike | None = None,
    eval_batch_size: int | None = None,
    distributed: bool | str = "auto",
) -> FitResult:
    r"""Fit a density model to ``data`` by maximum (weighted) likelihood.

    Maximises :math:`\sum_n w_n \log p(x_n \mid c_n) / \sum_n w_n` over mini-batches with Adam
    (or ``optimizer``). ``model`` is anything that meets the density protocol: an
    ``nn.Module`` whose call ``model(context)`` (``model()`` without context) returns a
    distribution with ``log_prob``: a :class:`~pyroflows.Flow` over vectors ``(n, D)`` or
    images ``(n, C, H, W)``, a :mod:`pyroflows.density` model, a PixelCNN (integer levels as
    data), a destructor's :meth:`as_flow`, or a model of discrete images wrapped in
    :class:`~pyroflows.infer.fitting.dequantized.Dequantized`. The event shape comes from
    ``model.event_shape`` (else from the distribution it returns) and the data are checked
    against it.

    A random ``validation`` fraction is held out and scored after every epoch; the model ends
    holding the best epoch's parameters (the last epoch's without validation), also when a
    time budget, a callback or a KeyboardInterrupt ends the fit. Early stopping is the
    :class:`~pyroflows.infer.fitting.callbacks.EarlyStopping` callback (``patience``,
    ``min_delta``), added unless ``callbacks`` holds one or ``patience`` is ``None``.

    All inputs are checked before any parameter changes: a wrong shape, NaN or infinite values,
    weights that are zero on every training or every validation row, a ``clip_grad`` that is
    not positive or a ``patience`` below 1 raise ``ValueError``. Data are moved to the model's device and
    dtype. An exception during training (a callback's, a non-finite loss) leaves the model
    holding the best (or initial) parameters in eval mode and is re-raised; a failed
    ``resume`` leaves the model as it was.

    Inside a ``torch.distributed`` process group (``torchrun``), every rank calls ``fit`` with
    the full data and the same options; each global batch of ``batch_size`` rows is split
    between the ranks, gradients and validation sums are added over them, rank 0 takes the
    stopping decisions, writes the checkpoints and shows the progress bar, and the parameters
    end equal to a single-process fit's up to floating-point summation order (see
    :doc:`/distributed`).

    Args:
        model: the model to train (in place).
        data: samples, shape ``(n, *event_shape)``.
        context: conditioning values ``(n, context_features)`` for a conditional model.
        weights: non-negative per-sample weights ``(n,)``; a zero weight ignores its row.
        epochs: maximum number of passes over the training split (counted from the start of
            the fit, also when resuming).
        batch_size: mini-batch size.
        lr: Adam's learning rate (ignored when ``optimizer`` is given).
        weight_decay: Adam's weight decay (ignored when ``optimizer`` is given).
        validation: held-out fraction in ``[0, 1)``; ``0`` trains on everything.
        patience: early stopping after ``patience`` (an integer >= 1) epochs without a
            validation gain above ``min_delta`` (``None``: no early stopping).
        min_delta: the smallest validation gain (nats per point) that counts.
        clip_grad: gradient-norm clip, a positive number (``None``: no clipping).
        optimizer: a ready optimizer over ``model.parameters()``.
        seed: seed of the split, the shuffling and the validation noise (``None``: random).
        progress: show a tqdm progress bar (default: only on a terminal).
        callbacks: objects with hooks of :class:`~pyroflows.infer.fitting.callbacks.Callback`.
        max_time: time budget in seconds: stop after the step at which it runs out.
        schedule: a learning-rate schedule: ``"cosine"`` (from ``lr`` to 0 over the budget),
            or a factory ``optimizer -> torch.optim.lr_scheduler.LRScheduler``; stepped as
            ``schedule_interval`` says.
        schedule_interval: ``"epoch"``: step the schedule after every epoch
            (``ReduceLROnPlateau`` gets the validation score); ``"step"``: after every
            optimizer step (warm-ups).
        checkpoint: file to save model, optimizer, scheduler, epoch, RNG states, best state,
            history and callback counters to, atomically (write, then rename).
        checkpoint_every: epochs between checkpoints.
        resume: a checkpoint to continue from (same data and options): the fit then ends with
            the parameters an uninterrupted one would have.
        eval_batch_size: rows per validation chunk (default: 4096 vectors, fewer images, at
            least ``batch_size``).
        distributed: ``"auto"``: data-parallel over the default ``torch.distributed`` process
            group when one is initialised with several processes; ``True``: the same, and an
            error without one; ``False``: an independent single-process fit on every rank.

    Returns:
        A :class:`FitResult` with the per-epoch history and why the fit stopped.

    Example:
        >>> import pyroflows
        >>> x = torch.randn(500, 2) @ torch.tensor([[1.0, 0.8], [0.0, 0.6]])
        >>> flow = pyroflows.flows.build("maf", 2, transforms=2, hidden=(16, 16))
        >>> result = pyroflows.infer.fit(flow, x, epochs=5, progress=False)
        >>> len(result.history), result.stop_reason
        (5, 'epochs')
    """
    if not isinstance(model, nn.Module):
        raise _not_a_density(model)
    check_count("epochs", epochs)
    check_count("batch_size", batch_size)
    check_count("checkpoint_every", checkpoint_every)
    if eval_batch_size is not None:
        check_count("eval_batch_size", eval_batch_size)
    if not _is_real(validation) or not 0 <= validation < 1:
        raise ValueError(f"validation must be a fraction in [0, 1), got {validation!r}")
    if optimizer is None:  # else the optimizer's own settings apply
        # lr = 0 is allowed: it evaluates a start without moving it (fine_tune's baseline).
        for what, value in (("lr", lr), ("weight_decay", weight_decay)):
            if not _is_real(value) or not 0 <= value < math.inf:
                raise ValueError(f"{what} must be a non-negative finite number, got {value!r}")
    check_choice("schedule_interval", schedule_interval, ("epoch", "step"))
    if clip_grad is not None:
        check_real("clip_grad", clip_grad)
    if patience is not None:
        check_count("patience", patience)
    group = process_group(distributed, module_device_dtype(model)[0])  # None: one process
    with together(group):  # the data's checks fail on every rank or on none
        x, c, w = _inputs(model, data, context, weights)
        n = x.shape[0]
        n_val = int(round(validation * n))
        if n - n_val < 1 or (validation > 0 and n_val < 1):
            raise ValueError(f"{n} points are too few for a validation fraction of {validation}")
    callbacks = list(callbacks)
    if patience is not None and not any(isinstance(cb, EarlyStopping) for cb in callbacks):
        callbacks.insert(0, EarlyStopping(patience, min_delta))
    if max_time is not None:
        callbacks.append(TimeBudget(max_time))
    if checkpoint is not None:
        # Last, so the counters it saves are those after every other epoch-end hook.
        saver = Checkpoint(checkpoint, checkpoint_every, callbacks)
        # Rank 0 writes it; a no-op in its place keeps the ranks' callback lists alike.
        callbacks.append(saver if group is None or group.main else Callback())
    step_decisions = False
    if group is not None:  # same data everywhere, and rank 0's seed
        step_decisions = group.check_same(x, c, w, callbacks)
        seed = group.broadcast_seed(seed)

    generator = torch.Generator()
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    order = torch.randperm(n, generator=generator, device="cpu").to(x.device)
    for part, rows in (("training", order[n_val:]), ("validation", order[:n_val])):
        if len(rows) and not w[rows].sum() > 0:
            raise ValueError(
                f"every {part} row has weight zero ({len(rows)} rows): nothing to "
                f"{'train on' if part == 'training' else 'score'}; give them weight, change "
                "the seed or the validation fraction"
            )
    eval_seed = int(torch.randint(2**31 - 1, (), generator=generator, device="cpu"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optimizer or torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil((n - n_val) / batch_size)
    state = FitState(
        model,
        optimizer,
        _scheduler(schedule, optimizer, schedule_interval, epochs, steps_per_epoch),
        x,
        c,
        w,
        order[n_val:],
        order[:n_val],
        generator,
    )
    if group is not None:
        group.broadcast_state(model)  # every rank starts from rank 0's parameters
    state.best_state = snapshot(state)  # restored if the fit ends before any epoch does
    if resume is not None:
        # A checkpoint that does not fit leaves the model as it was (on every rank).
        with together(group), transaction(model):
            load_checkpoint(resume, state, callbacks)
    # 4096 vectors at a time, fewer images (a PixelCNN's feature maps are large).
    chunk = eval_batch_size or max(batch_size, min(4096, 2**18 // max(1, math.prod(x.shape[1:]))))
    interrupted = False
    for callback in callbacks:
        getattr(callback, "on_fit_start", lambda s: None)(state)
    try:
        reason = run_epochs(
            state,
            callbacks,
            epochs=epochs,
            batch_size=batch_size,
            eval_batch_size=chunk,
            clip_grad=clip_grad,
            schedule_interval=schedule_interval,
            eval_seed=eval_seed,
            progress=progress,
            group=group,
            step_decisions=step_decisions,
        )
    except KeyboardInterrupt:
        reason, interrupted = "interrupted", True
    except BaseException:
        restore_best(state)  # any other failure: the best (or initial) state, then re-raise
        raise
    restore_best(state)
    for callback in callbacks:
        getattr(callback, "on_fit_end", lambda s: None)(state)
    return FitResult(
        history=state.history,
        best_epoch=state.best_epoch,
        best_val_loglik=state.best_score if n_val else math.nan,
        stopped_early=reason == "early_stopping",
        val_index=state.val_index,
        stop_reason=reason,
        interrupted=interrupted,
    )
