"""Activation normalisation (Glow's ActNorm): per feature for vectors, per channel for images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import Bijection
from .conventions import check_image_shape

__all__ = ["ActNorm", "ChannelActNorm"]


class _DataDependentInit(nn.Module):
    """The ``initialized`` buffer and its Python mirror, restored by ``load_state_dict``."""

    def _init_flag(self) -> None:
        self.register_buffer("initialized", torch.tensor(False))
        # A Python mirror of the buffer, so the forward path never reads a tensor value.
        self._is_initialized = False

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # noqa: ANN001
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        key = prefix + "initialized"
        if key in state_dict:
            self._is_initialized = bool(state_dict[key])

    def _mark_initialized(self) -> None:
        self.initialized.fill_(True)
        self._is_initialized = True


class ActNorm(_DataDependentInit, Bijection):
    r"""Per-feature affine map :math:`x = \mu + e^{s} \odot z` with data-dependent initialisation
    (Kingma & Dhariwal, "Glow", NeurIPS 2018, https://arxiv.org/abs/1807.03039).

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

    exact_inverse = True  # closed-form inverse: reversible stacks accept it

    def __init__(self, features: int) -> None:
        super().__init__(features)
        self.loc = nn.Parameter(torch.zeros(features))
        self.log_scale = nn.Parameter(torch.zeros(features))
        self._init_flag()

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set the parameters from data ``x`` (..., features): mean and standard deviation."""
        flat = x.detach().reshape(-1, self.features)
        if flat.shape[0] < 2:
            raise ValueError("ActNorm's data-dependent initialisation needs at least 2 points")
        self.loc.copy_(flat.mean(0))
        self.log_scale.copy_(flat.std(0).clamp_min(1e-6).log())
        self._mark_initialized()

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self.loc + self.log_scale.exp() * z
        return x, self.log_scale.sum().expand(x.shape[:-1])

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not self._is_initialized:
            self.initialize(x)
        z = (x - self.loc) * torch.exp(-self.log_scale)
        return z, (-self.log_scale.sum()).expand(z.shape[:-1])


class ChannelActNorm(_DataDependentInit, Bijection):
    r"""Glow's ActNorm for images: one scale and shift per channel,
    :math:`x_{c,i,j} = \mu_c + e^{s_c} z_{c,i,j}`, so :math:`\log|\det| = HW\sum_c s_c`.

    The first batch passed in the data-to-noise direction sets :math:`\mu_c` and :math:`e^{s_c}`
    to the mean and standard deviation of channel :math:`c` over the batch and all pixels
    (Kingma & Dhariwal 2018, section 3.1); the flag is saved in ``state_dict``.

    Args:
        shape: event shape :math:`(C, H, W)`.

    Example:
        >>> t = ChannelActNorm((2, 3, 3))
        >>> z = t.inv(torch.randn(64, 2, 3, 3) * 4 + 1)  # initialises from this batch
        >>> bool(z.mean((0, 2, 3)).abs().max() < 1e-5), z.shape
        (True, torch.Size([64, 2, 3, 3]))
    """

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__(check_image_shape(shape))
        channels = self.shape[0]
        self.loc = nn.Parameter(torch.zeros(channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(channels, 1, 1))
        self._init_flag()

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set the parameters from images ``x`` (..., C, H, W): per-channel mean and std."""
        flat = x.detach().movedim(-3, 0).reshape(self.shape[0], -1)
        if flat.shape[1] < 2:
            raise ValueError(
                "ChannelActNorm's data-dependent initialisation needs at least 2 values per channel"
            )
        self.loc.copy_(flat.mean(1).reshape(-1, 1, 1))
        self.log_scale.copy_(flat.std(1).clamp_min(1e-6).log().reshape(-1, 1, 1))
        self._mark_initialized()

    def _ladj(self, x: Tensor, sign: float) -> Tensor:
        pixels = self.shape[1] * self.shape[2]
        return (sign * pixels * self.log_scale.sum()).expand(x.shape[:-3])

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self.loc + self.log_scale.exp() * z
        return x, self._ladj(x, 1.0)

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not self._is_initialized:
            self.initialize(x)
        z = (x - self.loc) * torch.exp(-self.log_scale)
        return z, self._ladj(z, -1.0)
