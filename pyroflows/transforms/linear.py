"""Invertible linear layers."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Bijection

__all__ = ["LULinear"]


class LULinear(Bijection):
    r"""Invertible linear map in LU form, :math:`x = P L U z` (Kingma & Dhariwal, "Glow", 2018, https://arxiv.org/abs/1807.03039:
    the invertible 1x1 convolution, here for vectors).

    :math:`P` is a fixed permutation, :math:`L` unit lower triangular and :math:`U` upper
    triangular with diagonal :math:`e^{s}`, so :math:`\log|\det| = \sum_i s_i` costs
    :math:`O(d)` and the inverse is two triangular solves, :math:`O(d^2)` per point. Starts at
    the identity (with ``permute=False``) or at a random permutation.

    Args:
        features: event size.
        permute: use a fixed random permutation :math:`P` (seeded by ``seed``).
        seed: seed of the permutation.

    Example:
        >>> t = LULinear(3)
        >>> z = torch.randn(4, 3)
        >>> x, ladj = t.call_and_ladj(z)
        >>> torch.allclose(t.inverse_and_ladj(x)[0], z, atol=1e-5)
        True
    """

    exact_inverse = True  # closed-form inverse: reversible stacks accept it

    def __init__(self, features: int, permute: bool = False, seed: int = 0) -> None:
        super().__init__(features)
        if permute:
            perm = torch.randperm(
                features, generator=torch.Generator().manual_seed(seed), device="cpu"
            )
        else:
            perm = torch.arange(features)
        self.register_buffer("perm", perm)
        self.register_buffer("inverse_perm", torch.argsort(perm))
        self.lower = nn.Parameter(torch.zeros(features, features))
        self.upper = nn.Parameter(torch.zeros(features, features))
        self.log_diag = nn.Parameter(torch.zeros(features))
        self.register_buffer("strict_lower_mask", torch.ones(features, features).tril(-1))

    def _factors(self) -> tuple[Tensor, Tensor]:
        eye = torch.eye(self.features, dtype=self.lower.dtype, device=self.lower.device)
        mask = self.strict_lower_mask
        L = self.lower * mask + eye
        U = self.upper * mask.T + torch.diag(self.log_diag.exp())
        return L, U

    def weight(self) -> Tensor:
        """The dense matrix :math:`W = P L U` (for inspection; the layer never forms it)."""
        L, U = self._factors()
        return (L @ U)[self.inverse_perm]

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        L, U = self._factors()
        x = (z @ U.T @ L.T).index_select(-1, self.inverse_perm)
        return x, self.log_diag.sum().expand(x.shape[:-1])

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        L, U = self._factors()
        y = x.index_select(-1, self.perm).reshape(-1, self.features)
        # Row vectors: solve w L^T = y, then z U^T = w.
        w = torch.linalg.solve_triangular(L.T, y, upper=True, left=False, unitriangular=True)
        z = torch.linalg.solve_triangular(U.T, w, upper=False, left=False)
        return z.reshape(x.shape), (-self.log_diag.sum()).expand(x.shape[:-1])
