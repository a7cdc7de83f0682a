"""Activation normalisation (Glow's ActNorm)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import Bijection

__all__ = ["ActNorm"]


class ActNorm(Bijection):
    r"""Per-feature affine map :math:`x = \mu + e^{s} \odot z` with data-dependent initialisation
    (Kingma & Dhariwal, "Glow", NeurIPS 2018).

    The first batch passed in the data-to-base direction (``log_prob``, ``inverse``) sets
    :math:`\mu` and :math:`e^s` to that batch's mean and standard deviation, so the layer's
    output starts standardised; afterwards they are ordinary parameters. The initialised
    flag is a buffer, saved in ``state_dict`` so a loaded model is not re-initialised.

    Example:
        >>> t = ActNorm(2)
        >>> x = torch.randn(1000, 2) * 3 + 5
        >>> z = t.inv(x)  # initialises from x
        >>> bool((z.mean(0).abs() < 1e-4).all())
        True
    """

    def __init__(self, features: int) -> None:
        super().__init__(features)
        self.loc = nn.Parameter(torch.zeros(features))
        self.log_scale = nn.Parameter(torch.zeros(features))
        self.register_buffer("initialized", torch.tensor(False))
        # A Python mirror of the buffer, so the forward path never reads a tensor value.
        self._is_initialized = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        key = prefix + "initialized"
        if key in state_dict:
            self._is_initialized = bool(state_dict[key])

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set the parameters from data ``x`` (..., features): mean and standard deviation."""
        flat = x.detach().reshape(-1, self.features)
        if flat.shape[0] < 2:
            raise ValueError("ActNorm's data-dependent initialisation needs at least 2 points")
        self.loc.copy_(flat.mean(0))
        self.log_scale.copy_(flat.std(0).clamp_min(1e-6).log())
        self.initialized.fill_(True)
        self._is_initialized = True

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self.loc + self.log_scale.exp() * z
        return x, self.log_scale.sum().expand(x.shape[:-1])

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not self._is_initialized:
            self.initialize(x)
        z = (x - self.loc) * torch.exp(-self.log_scale)
        return z, (-self.log_scale.sum()).expand(z.shape[:-1])
