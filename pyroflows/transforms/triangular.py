"""Dense lower-triangular affine layer (a learnable Cholesky factor)."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Bijection
from .elementwise import initial_tensor, register_values

__all__ = ["LowerTriangularAffine"]


class LowerTriangularAffine(Bijection):
    r"""Affine map :math:`x = \mu + L z` with :math:`L` lower triangular and a positive diagonal.

    :math:`L = \operatorname{tril}(W, -1) + \operatorname{diag}(e^{s})`, so
    :math:`\log|\det L| = \sum_i s_i` and the inverse is one triangular solve. Started from a
    Cholesky factor, it turns :math:`\mathcal{N}(0, I)` into :math:`\mathcal{N}(\mu, LL^\top)`:
    this is the layer autoguides use to start a flow at a Laplace approximation (whitening the
    latent space, which makes badly scaled, strongly correlated posteriors easy to fit).

    Args:
        features: event size.
        loc: initial :math:`\mu` (default 0).
        scale_tril: initial lower-triangular :math:`L` with a positive diagonal (default
            :math:`I`); its upper triangle is ignored.
        trainable: learn :math:`\mu, W, s` (parameters) or keep them fixed (buffers).

    Example:
        >>> L = torch.tensor([[2.0, 0.0], [1.0, 0.5]])
        >>> t = LowerTriangularAffine(2, loc=torch.ones(2), scale_tril=L)
        >>> t(torch.tensor([[1.0, 1.0]]))
        tensor([[3.0000, 2.5000]], grad_fn=<AddBackward0>)
    """

    exact_inverse = True  # closed-form inverse: reversible stacks accept it

    def __init__(
        self,
        features: int,
        loc: Tensor | None = None,
        scale_tril: Tensor | None = None,
        trainable: bool = True,
    ) -> None:
        super().__init__(features)
        loc = initial_tensor(loc, torch.zeros(features))
        L = initial_tensor(scale_tril, torch.eye(features))
        if loc.shape != (features,) or L.shape != (features, features):
            raise ValueError(
                f"loc must have shape ({features},) and scale_tril ({features}, {features})"
            )
        diag = L.diagonal()
        if not (torch.isfinite(loc).all() and torch.isfinite(L.tril()).all() and (diag > 0).all()):
            raise ValueError("loc and scale_tril must be finite, with a positive diagonal")
        register_values(self, trainable, loc=loc, off_diag=L.tril(-1), log_diag=diag.log())
        self.register_buffer("strict_lower_mask", torch.ones(features, features).tril(-1))

    def scale_tril(self) -> Tensor:
        """The current factor :math:`L`."""
        return self.off_diag * self.strict_lower_mask + torch.diag_embed(self.log_diag.exp())

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self.loc + z @ self.scale_tril().T
        return x, self.log_diag.sum().expand(x.shape[:-1])

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        y = (x - self.loc).reshape(-1, self.features)
        # Row vectors: solve z L^T = y.
        z = torch.linalg.solve_triangular(self.scale_tril().T, y, upper=True, left=False)
        return z.reshape(x.shape), (-self.log_diag.sum()).expand(x.shape[:-1])
