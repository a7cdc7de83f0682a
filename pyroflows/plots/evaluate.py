"""Running a flow for a figure or the command line: under ``torch.no_grad()``, on the flow's own
device and dtype, in chunks, with a seed that leaves the global random state untouched.

Plots sit in the ground layer, so this module uses torch only (no pyroflows layer above it).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "CHUNK",
    "context_vector",
    "device_dtype",
    "log_prob_in_chunks",
    "sample_flow",
    "sample_in_chunks",
    "seeded",
]

CHUNK = 16384


def device_dtype(modules: Iterable[Any]) -> tuple[torch.device, torch.dtype]:
    """Device and dtype of the first floating-point tensor of the modules in ``modules`` (CPU and
    torch's default dtype when none holds one), where data given to them should go."""
    for module in modules:
        if isinstance(module, nn.Module):
            for tensor in [*module.parameters(), *module.buffers()]:
                if tensor.is_floating_point():
                    return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.get_default_dtype()


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed torch inside the block (nothing when ``seed`` is ``None``) and restore the global
    random state, CPU and ``device``'s, after it.

    Example:
        >>> with seeded(0, torch.device("cpu")):
        ...     a = torch.rand(2)
        >>> with seeded(0, torch.device("cpu")):
        ...     torch.equal(a, torch.rand(2))
        True
    """
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def context_vector(
    context: Any, flow: nn.Module, device: torch.device, dtype: torch.dtype
) -> Tensor | None:
    """One context for a conditional flow as a (1, c) tensor; ``None`` for an unconditional one.

    Raises ValueError when a conditional flow gets no context (or one of the wrong size) or an
    unconditional flow gets one.
    """
    wanted = getattr(flow, "context_features", 0)
    if not wanted:
        if context is not None:
            raise ValueError("this flow takes no context (it was built with context=0)")
        return None
    if context is None:
        raise ValueError(f"this flow is conditional: pass one context of {wanted} values")
    c = torch.as_tensor(context, device=device, dtype=dtype).reshape(-1)
    if c.shape[0] != wanted:
        raise ValueError(
            f"context must hold {wanted} values, got shape {tuple(torch.as_tensor(context).shape)}"
        )
    return c[None]


@torch.no_grad()
def sample_in_chunks(distribution: Any, n: int, chunk: int = CHUNK) -> Tensor:
    """``n`` samples of ``distribution``, drawn ``chunk`` at a time, flattened to (n, features)."""
    parts = []
    for start in range(0, n, chunk):
        x = distribution.sample((min(chunk, n - start),))
        parts.append(x.reshape(x.shape[0], -1))
    return torch.cat(parts)


@torch.no_grad()
def log_prob_in_chunks(
    distribution: Any, x: Tensor, chunk: int = CHUNK, device: torch.device | None = None
) -> Tensor:
    """``distribution.log_prob`` of the rows of ``x`` (n, features), ``chunk`` rows at a time
    (each moved to ``device`` when given, so ``x`` may stay on the CPU); returns (n,) in float64
    on the CPU."""
    return torch.cat(
        [
            distribution.log_prob(part if device is None else part.to(device)).double().cpu()
            for part in x.split(chunk)
        ]
    )


def sample_flow(flow: nn.Module, n: int, context: Any = None, seed: int | None = 0) -> np.ndarray:
    """``n`` samples (n, features) of ``flow(context)`` as a float64 array, seeded."""
    device, dtype = device_dtype([flow])
    c = context_vector(context, flow, device, dtype)
    with seeded(seed, device):
        return sample_in_chunks(flow(c), n).double().cpu().numpy()
