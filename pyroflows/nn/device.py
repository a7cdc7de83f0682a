"""Where a module computes: the device and dtype that data given to it should follow."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["module_device_dtype"]


def module_device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of a module's first floating-point parameter or buffer (CPU and torch's
    default dtype for a module without any), where data given to it should go."""
    for tensor in [*module.parameters(), *module.buffers()]:
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.get_default_dtype()
