"""Measuring what autograd keeps for the backward pass: the live and peak bytes of saved
tensors, the memory that reversible training (:mod:`pyroflows.transforms.reversible`) saves."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any

import torch
from torch import Tensor

__all__ = ["SavedTensorMeter"]


class _Saved:
    """A saved tensor held for autograd; tells its meter when autograd lets go of it."""

    __slots__ = ("key", "meter", "tensor")

    def __init__(self, meter: SavedTensorMeter, key: int, tensor: Tensor) -> None:
        self.meter, self.key, self.tensor = meter, key, tensor

    def __del__(self) -> None:
        self.meter._release(self.key)


class SavedTensorMeter:
    """Live and peak bytes of the tensors autograd saves for backward inside a ``with`` block.

    Uses :func:`torch.autograd.graph.saved_tensors_hooks`. Tensors are counted by storage (a
    storage saved twice, or through views, counts once) while autograd holds them, so running
    the backward pass inside the block as well gives the peak over the whole training step.
    Storages of ``exclude`` (e.g. the parameters, which exist anyway) are not counted.

    Attributes:
        current: bytes held now. peak: the most held at once. packed: storages saved in all.

    Example:
        >>> layer = torch.nn.Linear(100, 100)
        >>> with SavedTensorMeter(exclude=layer.parameters()) as meter:
        ...     layer(torch.randn(10, 100)).tanh().sum().backward()
        >>> meter.peak, meter.current  # the input (10x100 floats) and tanh's output
        (8000, 0)
    """

    def __init__(self, exclude: Iterable[Tensor] = ()) -> None:
        self._excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self._live: dict[int, list[int]] = {}
        self.current = 0
        self.peak = 0
        self.packed = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: Tensor) -> Any:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key in self._excluded or storage.nbytes() == 0:
            return tensor
        entry = self._live.get(key)
        if entry is None:
            self._live[key] = [1, storage.nbytes()]
            self.current += storage.nbytes()
            self.peak = max(self.peak, self.current)
            self.packed += 1
        else:
            entry[0] += 1
        # Detached: a saved *output* (tanh, exp) would otherwise hold its own grad_fn, a
        # reference cycle that keeps it alive (and counted) after the graph is dropped.
        return _Saved(self, key, tensor.detach())

    @staticmethod
    def _unpack(packed: Any) -> Tensor:
        return packed.tensor if isinstance(packed, _Saved) else packed

    def _release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] == 0:
            del self._live[key]
            self.current -= entry[1]

    def __enter__(self) -> SavedTensorMeter:
        self._hooks.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._hooks.__exit__(kind, error, traceback)
