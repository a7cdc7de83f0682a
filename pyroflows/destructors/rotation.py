r"""Rotations used between marginal layers: PCA, random orthogonal, and fixed orthogonal.

They map :math:`\mathbb{R}^d \to \mathbb{R}^d` with :math:`z = x Q` for an orthogonal :math:`Q`
(so :math:`\log|\det| = 0`) and are not destructors themselves; a
:class:`~pyroflows.destructors.Chain` puts them between :math:`\Phi^{-1}` and a marginal
destructor (as the copula layer does). The matrix is a buffer: it moves with ``.to`` and saves
with ``state_dict``, and gradient fine-tuning leaves it orthogonal (it is not trained).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..transforms.base import Bijection
from .domain import REAL
from .gaussian import weighted_covariance

__all__ = ["FixedRotation", "PCARotation", "RandomRotation", "random_orthogonal"]


def random_orthogonal(features: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    """A Haar-distributed random orthogonal matrix (QR of a Gaussian matrix, sign-corrected)."""
    generator = torch.Generator().manual_seed(seed)
    g = torch.randn(features, features, generator=generator, device="cpu", dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    return (q * torch.sign(r.diagonal())).to(dtype)


class FixedRotation(Bijection):
    """:math:`z = x Q` for a given orthogonal matrix ``Q`` (d, d); log-det 0.

    Args:
        matrix: the orthogonal matrix (checked to ``1e-6``).
    """

    domain = REAL

    def __init__(self, matrix: Tensor) -> None:
        matrix = torch.as_tensor(matrix)
        if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"a rotation needs a square matrix, got shape {tuple(matrix.shape)}")
        super().__init__(matrix.shape[0])
        eye = torch.eye(self.features, dtype=torch.float64)
        if (matrix.double().T @ matrix.double() - eye).abs().max() > 1e-6:
            raise ValueError("the matrix is not orthogonal (Q^T Q != I)")
        self.register_buffer("matrix", matrix.detach().clone().to(torch.get_default_dtype()))

    def call_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x @ self.matrix, x.new_zeros(x.shape[:-1])

    def inverse_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return z @ self.matrix.T, z.new_zeros(z.shape[:-1])


class RandomRotation(FixedRotation):
    """A seeded random orthogonal rotation (Haar measure); ``fit`` does nothing."""

    def __init__(self, features: int, seed: int = 0) -> None:
        super().__init__(random_orthogonal(features, seed))
        self.seed = seed

    def _fit(self, x: Tensor, w: Tensor) -> None:
        pass


class PCARotation(FixedRotation):
    """Rotation onto the principal axes of the (weighted) data, largest variance first.

    Rotates about the origin (no centring, like the reference's ``fit_bias=False``); the
    following marginal destructor absorbs any mean.
    """

    def __init__(self, features: int) -> None:
        super().__init__(torch.eye(features))

    def _fit(self, x: Tensor, w: Tensor) -> None:
        _, cov = weighted_covariance(x, w)
        _, vectors = torch.linalg.eigh(cov)
        self.matrix.copy_(vectors.flip(-1))
