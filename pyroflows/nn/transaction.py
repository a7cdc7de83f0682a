"""All-or-nothing state changes of modules: :func:`transaction` snapshots a module (its
tensors and the attributes a load or a fit may rebuild) and restores it on any exception,
KeyboardInterrupt included; :class:`Transactional` makes ``load_state_dict`` use it."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

__all__ = ["Transactional", "restore", "snapshot", "transaction"]


@contextmanager
def transaction(module: nn.Module) -> Iterator[None]:
    """Run a block that changes ``module``; on any exception (KeyboardInterrupt included)
    put the module and every submodule back exactly as they were, then re-raise.

    The snapshot holds a copy of every parameter and buffer value and each submodule's
    attributes (its parameter, buffer and submodule tables, its flags, lists and dicts one
    level deep), so what a failed ``load_state_dict`` or ``fit`` rebuilt (a deep destructor's
    layer list and codes, a ``fitted`` flag, a dtype changed by ``.to``) is undone too. The
    parameter objects themselves are kept (an optimizer holding them stays valid).

    Example:
        >>> layer = nn.Linear(2, 2)
        >>> before = layer.weight.detach().clone()
        >>> try:
        ...     with transaction(layer):
        ...         _ = layer.weight.data.zero_()
        ...         raise RuntimeError("midway")
        ... except RuntimeError:
        ...     pass
        >>> torch.equal(layer.weight, before)
        True
    """
    saved = snapshot(module)
    try:
        yield
    except BaseException:
        restore(saved)
        raise


def snapshot(module: nn.Module) -> list[tuple[nn.Module, dict[str, Any], list]]:
    """What :func:`transaction` keeps of ``module`` (every submodule's attributes and tensor
    values), for :func:`restore` to put back, e.g. at the best point of a long fit."""
    saved = []
    for sub in module.modules():
        attributes = {
            k: copy.copy(v) if isinstance(v, list | dict | set) else v
            for k, v in sub.__dict__.items()
        }
        tensors = [
            (t, t.detach().clone())
            for table in ("_parameters", "_buffers")
            for t in sub.__dict__[table].values()
            if t is not None
        ]
        saved.append((sub, attributes, tensors))
    return saved


def restore(saved: list[tuple[nn.Module, dict[str, Any], list]]) -> None:
    """Put a module back as :func:`snapshot` saw it (the same parameter objects, their old
    values)."""
    with torch.no_grad():
        for sub, attributes, tensors in saved:
            sub.__dict__.clear()
            sub.__dict__.update(attributes)
            for tensor, value in tensors:
                kept = tensor.shape == value.shape and tensor.dtype == value.dtype
                if kept and tensor.device == value.device:
                    tensor.copy_(value)
                else:  # a .to() or a resize swapped the storage: put the old one back
                    tensor.data = value


class Transactional(nn.Module):
    """Mixin: ``load_state_dict`` either loads everything or raises and changes nothing
    (through :func:`transaction`), whatever the error: missing or unexpected keys, a wrong
    shape, a rebuild that fails."""

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102
        with transaction(self):
            return super().load_state_dict(*args, **kwargs)
