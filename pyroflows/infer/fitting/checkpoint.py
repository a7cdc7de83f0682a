"""Checkpoints of :func:`~pyroflows.infer.fit`: everything a fit needs to continue exactly.

A checkpoint holds the model's, optimizer's and scheduler's states, the epoch and step
counts, the split, the (possibly redrawn) data, the RNG states (torch's global CPU generator,
the model device's CUDA generator, and the shuffling generator), the best parameters so far,
the history and the callbacks' counters. Resuming from it and running to the same ``epochs``
ends with the parameters an uninterrupted fit would have (bit for bit on a deterministic
device).

Files are written atomically (to ``path.tmp``, then renamed), so an interrupt while saving
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ...checks import check_count
from .callbacks import Callback, FitState

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint"]

#: Bumped when the layout changes, so an old file fails clearly instead of half-loading.
VERSION = 1


def _keyed(callbacks: Sequence[Any]) -> dict[str, Any]:
    """Callbacks by class name and occurrence (``EarlyStopping#0``), so a resumed fit may add
    or drop a stateless callback (a different ``max_time``, say) and still find the others."""
    keyed: dict[str, Any] = {}
    for callback in callbacks:
        name = type(callback).__name__
        keyed[f"{name}#{sum(key.startswith(name + '#') for key in keyed)}"] = callback
    return keyed


def save_checkpoint(
    path: str | os.PathLike, state: FitState, callbacks: Sequence[Any] = ()
) -> None:
    """Write ``state`` (and the callbacks' counters) to ``path`` atomically.

    Example:
        >>> # fit(..., checkpoint="run.pt") calls this every ``checkpoint_every`` epochs.
    """
    device = state.data.device
    payload = {
        "version": VERSION,
        "epoch": state.epoch,
        "step": state.step,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": None if state.scheduler is None else state.scheduler.state_dict(),
        "data": state.data,
        "train_index": state.train_index,
        "val_index": state.val_index,
        "history": state.history,
        "best_score": state.best_score,
        "best_epoch": state.best_epoch,
        "best_state": state.best_state,
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "shuffle": state.generator.get_state(),
        },
        "callbacks": {
            key: cb.state_dict()
            for key, cb in _keyed(callbacks).items()
            if hasattr(cb, "state_dict")
        },
    }
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(
    path: str | os.PathLike, state: FitState, callbacks: Sequence[Any] = ()
) -> None:
    """Load a checkpoint written by :func:`save_checkpoint` into ``state`` (in place: model,
    optimizer, scheduler, data, split, counters, RNG states, best state, history, callbacks).

    Raises:
        ValueError: the file is not a fit checkpoint, or its data or split do not match.
    """
    device = state.data.device
    payload = torch.load(Path(path), map_location=device, weights_only=True)
    if not isinstance(payload, dict) or payload.get("version") != VERSION:
        raise ValueError(
            f"resume={str(path)!r} is not a checkpoint written by fit (version {VERSION})"
        )
    if payload["data"].shape != state.data.shape:
        raise ValueError(
            f"resume={str(path)!r} holds data of shape {tuple(payload['data'].shape)}, "
            f"but fit got {tuple(state.data.shape)}"
        )
    state.model.load_state_dict(payload["model"])
    state.optimizer.load_state_dict(payload["optimizer"])
    if state.scheduler is not None and payload["scheduler"] is not None:
        state.scheduler.load_state_dict(payload["scheduler"])
    state.data.copy_(payload["data"])
    state.train_index = payload["train_index"].to(device)
    state.val_index = payload["val_index"].to(device)
    state.epoch, state.step = int(payload["epoch"]), int(payload["step"])
    state.history = list(payload["history"])
    state.best_score, state.best_epoch = float(payload["best_score"]), int(payload["best_epoch"])
    state.best_state = payload["best_state"]
    torch.set_rng_state(payload["rng"]["torch"].cpu())
    if payload["rng"]["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(payload["rng"]["cuda"].cpu(), device)
    state.generator.set_state(payload["rng"]["shuffle"].cpu())
    for key, callback in _keyed(callbacks).items():
        if key in payload["callbacks"] and hasattr(callback, "load_state_dict"):
            callback.load_state_dict(payload["callbacks"][key])


class Checkpoint(Callback):
    """Save a checkpoint to ``path`` at the end of every ``every``-th epoch.

    ``fit(..., checkpoint=path, checkpoint_every=n)`` adds it; ``fit(..., resume=path)``
    continues from the file.

    Example:
        >>> Checkpoint("run.pt", every=5).every
        5
    """

    def __init__(
        self, path: str | os.PathLike, every: int = 1, callbacks: Sequence[Any] = ()
    ) -> None:
        self.path = Path(path)
        self.every = check_count("checkpoint_every", every)
        #: The fit's other callbacks, whose counters go into the file.
        self.callbacks = list(callbacks)

    def on_epoch_end(self, state: FitState) -> bool:
        if state.epoch % self.every == 0:
            save_checkpoint(self.path, state, self.callbacks)
        return False
