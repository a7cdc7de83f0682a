"""Fixed permutations of the features (log-det 0)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import Bijection

__all__ = ["Permutation", "Reverse", "random_permutation"]


class Permutation(Bijection):
    """Reorder the features, ``x = z[..., perm]``; volume preserving.

    Args:
        perm: a permutation of ``range(features)``.

    Example:
        >>> Permutation([2, 0, 1])(torch.tensor([[10.0, 11.0, 12.0]]))
        tensor([[12., 10., 11.]])
    """

    exact_inverse = True  # closed-form inverse: reversible stacks accept it

    def __init__(self, perm: Sequence[int] | Tensor) -> None:
        perm = torch.as_tensor(perm)
        features = perm.numel()
        super().__init__(features)
        if perm.dtype.is_floating_point or not torch.equal(
            perm.sort().values, torch.arange(features)
        ):
            raise ValueError(
                f"perm must be a permutation of range({features}), got {perm.tolist()}"
            )
        self.register_buffer("perm", perm.long())
        self.register_buffer("inverse_perm", torch.argsort(perm.long()))

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z.index_select(-1, self.perm), z.new_zeros(z.shape[:-1])

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x.index_select(-1, self.inverse_perm), x.new_zeros(x.shape[:-1])


class Reverse(Permutation):
    """Reverse the order of the features."""

    def __init__(self, features: int) -> None:
        super().__init__(torch.arange(features - 1, -1, -1))


def random_permutation(features: int, seed: int = 0) -> Permutation:
    """A :class:`Permutation` drawn uniformly with a fixed seed (reproducible across devices)."""
    generator = torch.Generator().manual_seed(seed)
    return Permutation(torch.randperm(features, generator=generator, device="cpu"))
