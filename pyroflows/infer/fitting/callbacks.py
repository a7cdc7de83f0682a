r"""Callbacks of :func:`~pyroflows.infer.fit`: the training state they see and the stock ones.

A callback is any object with some of the hooks of :class:`Callback` (missing hooks are
skipped). ``fit`` calls, in the order the callbacks are given:

* ``on_fit_start(state)`` once, after the data are checked and a checkpoint (if any) loaded;
* ``on_epoch_start(state)`` before each epoch's shuffling (``state.data`` may be rewritten here:
  a fresh dequantisation or binarisation of the training rows, see :class:`FreshData`);
* ``on_step_end(state) -> bool`` after every optimizer step: ``True`` ends the epoch there and
  then the fit (its validation pass and history entry still happen);
* ``on_epoch_end(state) -> bool`` after the epoch's history entry: ``True`` stops;
* ``on_fit_end(state)`` once, after the best parameters are restored (also after an interrupt).

A callback that stops the fit names the reason in its ``reason`` attribute (default: its
class name); it becomes :attr:`FitResult.stop_reason`. ``state_dict()``/``load_state_dict()``
(optional) make its counters part of a checkpoint, so a resumed fit behaves as one that never
stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ...checks import check_count

__all__ = ["Callback", "EarlyStopping", "FitState", "FreshData", "StepBudget", "TimeBudget"]


@dataclass
class FitState:
    """What callbacks see (and may change) during :func:`~pyroflows.infer.fit`.

    Attributes:
        model: the model being trained.
        optimizer: its optimizer; ``scheduler``: the learning-rate scheduler or ``None``.
        data: all rows ``(n, *event_shape)`` on the model's device and dtype; ``context`` and
            ``weights`` likewise (``context`` ``None`` without one).
        train_index, val_index: the rows of the two splits (``val_index`` empty without
            validation).
        epoch: the current (or last finished) epoch, from 1; ``step``: optimizer steps so far.
        history: one dict per finished epoch (see :class:`FitResult`).
        best_score, best_epoch, best_state: the best validation log-likelihood so far (the
            training one without validation), its epoch and a copy of the parameters then.
        generator: the RNG of the shuffling (saved in checkpoints).
        started: ``time.perf_counter()`` when this call of ``fit`` began.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    data: Tensor
    context: Tensor | None
    weights: Tensor
    train_index: Tensor
    val_index: Tensor
    generator: torch.Generator
    epoch: int = 0
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_score: float = -math.inf
    best_epoch: int = 0
    best_state: dict[str, Tensor] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @property
    def elapsed(self) -> float:
        """Seconds since this call of ``fit`` began."""
        return time.perf_counter() - self.started


class Callback:
    """Base class with no-op hooks (subclassing it is optional: hooks are looked up by name)."""

    #: Put in :attr:`FitResult.stop_reason` when this callback stops the fit.
    reason: str = ""

    def on_fit_start(self, state: FitState) -> None:
        """Called once before the first epoch."""

    def on_epoch_start(self, state: FitState) -> None:
        """Called before each epoch."""

    def on_step_end(self, state: FitState) -> bool:
        """Called after each optimizer step; ``True`` stops after this step."""
        return False

    def on_epoch_end(self, state: FitState) -> bool:
        """Called after each epoch's history entry; ``True`` stops."""
        return False

    def on_fit_end(self, state: FitState) -> None:
        """Called once at the end (also after an interrupt)."""

    def state_dict(self) -> dict[str, Any]:
        """Counters to checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


class EarlyStopping(Callback):
    r"""Stop after ``patience`` epochs without a validation gain above ``min_delta``.

    An epoch improves when its validation log-likelihood :math:`\ell_t` exceeds
    :math:`\max_{s<t} \ell_s + \delta` (nats per point). Inactive without a validation split.
    ``fit`` keeps (and restores at the end) the parameters of the best epoch in any case.

    Example:
        >>> stop = EarlyStopping(patience=3, min_delta=1e-3)
        >>> stop.reason
        'early_stopping'
    """

    reason = "early_stopping"

    def __init__(self, patience: int = 10, min_delta: float = 0.0) -> None:
        self.patience = check_count("patience", patience)
        if not isinstance(min_delta, int | float) or not min_delta >= 0:
            raise ValueError(f"min_delta must be a non-negative number, got {min_delta!r}")
        self.min_delta = float(min_delta)
        self.best, self.stale = -math.inf, 0

    def on_epoch_end(self, state: FitState) -> bool:
        if not len(state.val_index):
            return False
        score = state.history[-1]["val_loglik"]
        if score > self.best + self.min_delta:
            self.best, self.stale = score, 0
        else:
            self.stale += 1
        return self.stale >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "stale": self.stale}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.stale = float(state["best"]), int(state["stale"])


class TimeBudget(Callback):
    """Stop after the optimizer step at which ``max_time`` seconds of this ``fit`` call have
    passed (the epoch's validation pass still runs, and the best parameters are kept).

    Example:
        >>> TimeBudget(60.0).reason
        'max_time'
    """

    reason = "max_time"

    def __init__(self, max_time: float) -> None:
        if not isinstance(max_time, int | float) or isinstance(max_time, bool) or not max_time > 0:
            raise ValueError(f"max_time must be a positive number of seconds, got {max_time!r}")
        self.max_time = float(max_time)

    def on_step_end(self, state: FitState) -> bool:
        return state.elapsed >= self.max_time


class StepBudget(Callback):
    """Stop after ``max_steps`` optimizer steps in all (a smoke-test budget).

    Example:
        >>> StepBudget(5).max_steps
        5
    """

    reason = "max_steps"

    def __init__(self, max_steps: int) -> None:
        self.max_steps = check_count("max_steps", max_steps)

    def on_step_end(self, state: FitState) -> bool:
        return state.step >= self.max_steps


class FreshData(Callback):
    """Redraw the training rows before every epoch: ``draw(epoch, index)`` returns the new
    values of rows ``index`` (``(len(index), *event_shape)``, any device and dtype), or
    ``None`` to keep them. The validation rows never change, so scores stay comparable.

    This is how the noise of dequantised or stochastically binarised data is drawn afresh each
    epoch, which keeps a network from memorising one draw.

    Example:
        >>> images = torch.rand(100, 4)
        >>> fresh = FreshData(lambda epoch, index: torch.bernoulli(images[index.cpu()]))
    """

    def __init__(self, draw: Callable[[int, Tensor], Tensor | None]) -> None:
        if not callable(draw):
            raise TypeError(f"draw must be callable, got {type(draw).__name__}")
        self.draw = draw

    def on_epoch_start(self, state: FitState) -> None:
        new = self.draw(state.epoch, state.train_index)
        if new is None:
            return
        if not isinstance(new, torch.Tensor):
            new = torch.as_tensor(new, device=state.data.device)
        expected = (len(state.train_index), *state.data.shape[1:])
        if tuple(new.shape) != expected:
            raise ValueError(
                f"FreshData's draw returned shape {tuple(new.shape)}, expected {expected}"
            )
        state.data[state.train_index] = new.to(device=state.data.device, dtype=state.data.dtype)
