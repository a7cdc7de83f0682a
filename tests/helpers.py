"""Shared test utilities."""

from __future__ import annotations

import torch

from pyroflows.infer import Callback, FitState


@torch.no_grad()
def perturb(module: torch.nn.Module, scale: float = 0.1, seed: int = 0) -> torch.nn.Module:
    """Move every parameter away from its (often identity) initialisation, reproducibly.

    Properties checked at the identity map prove little; a small random perturbation gives a
    generic, well-conditioned transform.
    """
    generator = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        noise = torch.randn(p.shape, generator=generator, dtype=torch.float64)
        p.add_(scale * noise.to(p.device, p.dtype))
    return module


def jacobian_logdet(f, z: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """log|det df/dz| for each row of z (n, d), from autograd's full Jacobian."""
    out = []
    for row in z:
        J = torch.autograd.functional.jacobian(f, row)
        out.append(torch.linalg.slogdet(J)[1])
    return torch.stack(out)


class InterruptAt(Callback):
    """A fit callback that raises KeyboardInterrupt (a user's Ctrl-C) at the end of ``epoch``."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, state: FitState) -> bool:
        if state.epoch == self.epoch:
            raise KeyboardInterrupt
        return False
