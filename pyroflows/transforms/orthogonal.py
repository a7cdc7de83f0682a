r"""Orthogonal maps as products of Householder reflections.

A Householder reflection :math:`H(v) = I - 2 v v^\top / \|v\|^2` is orthogonal for every
non-zero :math:`v`, so a product :math:`Q = H(v_1) H(v_2) \cdots H(v_K)` is an orthogonal
matrix parametrised without constraints (Tomczak & Welling, "Improving Variational
Auto-Encoders using Householder Flow", 2016); every orthogonal :math:`d \times d` matrix is such
a product with :math:`K \le d` (Cartan–Dieudonné). Applying :math:`Q` costs :math:`O(Kd)` per
vector and :math:`\log|\det Q| = 0`.

Shared by the Sylvester layers (their :math:`Q`) and the rotations of Gaussianization flows
(:class:`HouseholderRotation`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import check_count
from .base import Bijection

__all__ = ["HouseholderRotation", "householder_product", "householder_vectors"]


def householder_product(y: Tensor, vectors: Tensor, transpose: bool = False) -> Tensor:
    r"""Apply :math:`Q = H(v_1) \cdots H(v_K)` (or :math:`Q^\top`) to the vectors ``y``.

    Args:
        y: vectors, shape ``(..., d)``.
        vectors: the Householder vectors :math:`v_k`, shape ``(..., K, d)`` (batch dims
            broadcast against ``y``'s). A zero vector acts as the identity (its norm is clamped
            to the dtype's tiny, so no NaN).
        transpose: apply :math:`Q^\top = H(v_K) \cdots H(v_1)` instead.

    Returns:
        :math:`Q y` (or :math:`Q^\top y`), shape ``(..., d)``.

    Example:
        >>> v = torch.tensor([[1.0, 0.0]])
        >>> householder_product(torch.tensor([2.0, 3.0]), v)
        tensor([-2.,  3.])
    """
    tiny = torch.finfo(y.dtype).tiny
    reflections = vectors.shape[-2]
    steps = range(reflections) if transpose else reversed(range(reflections))
    for k in steps:
        vk = vectors[..., k, :]
        scale = 2 * (vk * y).sum(-1, keepdim=True) / (vk * vk).sum(-1, keepdim=True).clamp_min(tiny)
        y = y - scale * vk
    return y


@torch.no_grad()
def householder_vectors(matrix: Tensor, reflections: int) -> Tensor:
    r"""Householder vectors whose product matches an orthogonal ``matrix`` up to column signs.

    Householder QR: step :math:`j` reflects the current column :math:`j` onto
    :math:`\pm e_j` (the sign away from it, for stability), so after :math:`d - 1` steps
    :math:`H_{d-1} \cdots H_1 W = D` is diagonal with entries :math:`\pm 1` and
    :math:`Q = H_1 \cdots H_{d-1} = W D`. With fewer reflections :math:`K < d - 1`, :math:`Q`
    matches the first :math:`K` columns of :math:`W` up to sign; extra ones are identical
    pairs (:math:`H H = I`) plus, for an odd count, a sign flip of the last coordinate.

    Args:
        matrix: orthogonal :math:`W`, shape ``(d, d)``.
        reflections: number :math:`K \ge 0` of vectors to return.

    Returns:
        Vectors of shape ``(K, d)`` in ``matrix``'s dtype and device.
    """
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"need a square matrix, got shape {tuple(matrix.shape)}")
    d = matrix.shape[0]
    eye = torch.eye(d, dtype=matrix.dtype, device=matrix.device)
    # Rounding of an orthogonal matrix computed in this dtype (eigh in float32 leaves ~1e-6).
    tolerance = 100 * d * torch.finfo(matrix.dtype).eps
    if (matrix.T @ matrix - eye).abs().max() > tolerance:
        raise ValueError("the matrix is not orthogonal (W^T W != I)")
    a = matrix.clone()
    found = []
    for j in range(min(reflections, d - 1)):
        column = a[:, j].clone()
        column[:j] = 0  # zero already, up to rounding
        sign = 1.0 if column[j] >= 0 else -1.0
        v = column + sign * eye[j]  # reflects the column onto -sign * e_j
        a = a - 2 * torch.outer(v, v @ a) / (v @ v)
        found.append(v)
    extra = reflections - len(found)
    if extra % 2:
        found.append(eye[d - 1])
    for k in range(extra // 2):
        pair = torch.randn(
            d, generator=torch.Generator().manual_seed(k), device="cpu", dtype=torch.float64
        )
        found += [pair.to(matrix)] * 2
    if not found:
        return matrix.new_zeros(0, d)
    return torch.stack(found)


class HouseholderRotation(Bijection):
    r"""Trainable orthogonal map :math:`x = Q z`, :math:`Q = H(v_1) \cdots H(v_K)`.

    The rotation layer of Gaussianization flows (Meng, Song, Song & Ermon, "Gaussianization
    Flows", AISTATS 2020). :math:`\log|\det| = 0` in both directions, and both are one
    :math:`O(Kd)` pass (**fast in both directions**). The vectors are free parameters (no
    constraint: any non-zero :math:`v_k` gives an exact orthogonal :math:`Q`); with
    :math:`K \ge d - 1` every orthogonal matrix is reachable up to column signs
    (:meth:`set_matrix`). Unconditional (a context, when the flow has one, is ignored).

    Args:
        features: event size :math:`d`.
        reflections: number :math:`K` of reflections (default :math:`d`).

    Example:
        >>> t = HouseholderRotation(3)
        >>> q = t.matrix()
        >>> torch.allclose(q @ q.T, torch.eye(3), atol=1e-6)
        True
    """

    exact_inverse = True  # closed-form inverse: reversible stacks accept it

    def __init__(self, features: int, reflections: int | None = None) -> None:
        super().__init__(features)
        self.reflections = check_count(
            "reflections", features if reflections is None else reflections
        )
        self.vectors = nn.Parameter(torch.randn(self.reflections, features))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", reflections={self.reflections}"

    def matrix(self) -> Tensor:
        """The orthogonal matrix :math:`Q`, shape ``(d, d)``."""
        eye = torch.eye(self.features, dtype=self.vectors.dtype, device=self.vectors.device)
        return householder_product(eye, self.vectors).T  # row i is Q e_i, so transpose

    @torch.no_grad()
    def set_matrix(self, matrix: Tensor) -> None:
        """Set the vectors so that :math:`Q` equals ``matrix`` up to column signs
        (:func:`householder_vectors`; exactly the first :math:`K` columns when :math:`K < d-1`)."""
        matrix = torch.as_tensor(matrix).to(self.vectors)
        if matrix.shape != (self.features, self.features):
            raise ValueError(
                f"matrix must have shape ({self.features}, {self.features}), "
                f"got {tuple(matrix.shape)}"
            )
        self.vectors.copy_(householder_vectors(matrix, self.reflections))

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return householder_product(z, self.vectors), z.new_zeros(z.shape[:-1])

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return householder_product(x, self.vectors, transpose=True), x.new_zeros(x.shape[:-1])
