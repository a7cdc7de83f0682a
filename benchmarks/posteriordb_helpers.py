"""What every file of posteriordb models uses: data as tensors, samples as reference columns."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["ModelFactory", "as_tensor", "stack_columns"]

#: ``factory(data, dtype) -> (model, columns)``: how every posterior's Pyro model is made.
ModelFactory = Callable[[dict, torch.dtype], tuple[Callable, Callable]]


def as_tensor(x: Any, dtype: torch.dtype) -> torch.Tensor:
    """A number or an array of the data as a tensor of ``dtype`` (CPU)."""
    return torch.as_tensor(np.asarray(x, dtype=np.float64)).to(dtype)


def stack_columns(*parts: torch.Tensor) -> np.ndarray:
    """Posterior samples (n, ...) of several sites side by side as an (n, P) float64 array, in
    the order of the reference draws' ``param_names``."""
    cols = [p.reshape(p.shape[0], -1) for p in parts]
    return torch.cat(cols, dim=1).double().cpu().numpy()
