r"""Autoregressive flow layer with a recurrent (weight-tied) conditioner, for long or
variable-length sequences."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ..checks import check_count
from ..nn.recurrent import RecurrentConditioner
from .base import Bijection
from .elementwise import ElementwiseMap, broadcast_params

__all__ = ["RecurrentAutoregressive"]


class RecurrentAutoregressive(Bijection):
    r"""Autoregressive layer over a sequence whose conditioner is an LSTM/GRU/RNN
    (:class:`~pyroflows.nn.RecurrentConditioner`); Oliva et al., "Transformation
    Autoregressive Networks" (ICML 2018) use this for densities; it is MAF
    (Papamakarios et al. 2017, https://arxiv.org/abs/1705.07057) with a recurrent rather than a masked conditioner.

    The event :math:`x \in \mathbb{R}^{L s}` is read as :math:`L` positions of :math:`s` values
    (``step``); position :math:`i` is transformed by an elementwise map :math:`\tau` whose
    parameters come from the recurrent state after positions :math:`< i`:

    .. math::
        x_i = \tau\big(z_i;\ \theta_i(x_{<i}, c)\big), \qquad
        \log|\det J| = \sum_{i=1}^{L} \sum_{k=1}^{s} \log \tau'(z_{i,k}).

    **Density** (``inverse_and_ladj``) is one teacher-forced pass of the recurrent network over
    the known :math:`x` (PyTorch's fused kernel); **sampling** (``call_and_ladj``) steps the
    network :math:`L` times. The weights do not depend on :math:`L`: ``call_and_ladj`` and
    ``inverse_and_ladj`` accept any length (any last dimension that is a multiple of
    ``step``); ``features`` is only the length that the Pyro ``Transform`` protocol and
    :class:`~pyroflows.Flow` check. A layer built for one length loads the ``state_dict`` of a
    layer built for another. In a left-to-right layer (``reverse=False``)
    position :math:`i` never sees positions after it, so right-padding a sequence leaves the
    outputs of its real positions unchanged;
    :meth:`inverse_elementwise` returns per-value log-derivatives so padded positions can be
    masked out of a variable-length batch.

    Args:
        features: nominal event size (a multiple of ``step``).
        map: elementwise map :math:`\tau` (:class:`~pyroflows.transforms.AffineMap`,
            :class:`~pyroflows.transforms.SplineMap`, ...).
        context: context size (appended to the recurrent input at every position).
        hidden: widths of the stacked recurrent layers.
        cell: ``"lstm"``, ``"gru"`` or ``"rnn"``.
        step: values per position :math:`s`.
        reverse: run over the positions last to first (alternate it between stacked layers).

    Example:
        >>> from pyroflows.transforms import AffineMap
        >>> t = RecurrentAutoregressive(5, AffineMap(), hidden=(16,))
        >>> x = torch.randn(3, 50)  # any length, not only 5
        >>> z, ladj = t.inverse_and_ladj(x)  # one recurrent pass
        >>> bool(torch.allclose(t.call_and_ladj(z)[0], x, atol=1e-5)), ladj.shape
        (True, torch.Size([3]))
    """

    fast_direction = "inverse"

    def __init__(
        self,
        features: int,
        map: ElementwiseMap,
        context: int = 0,
        hidden: Sequence[int] = (64,),
        cell: str = "lstm",
        step: int = 1,
        reverse: bool = False,
    ) -> None:
        super().__init__(features, context)
        if features % check_count("step", step):
            raise ValueError(f"step must divide features={features}, got {step!r}")
        self.map = map
        self.step = step
        self.reverse = bool(reverse)
        self.conditioner = RecurrentConditioner(step, step * map.num_params, hidden, cell, context)

    def _sequence(self, v: Tensor) -> Tensor:
        if v.dim() == 0 or v.shape[-1] == 0 or v.shape[-1] % self.step:
            raise ValueError(
                f"expected sequences (..., L * {self.step}) with L >= 1, got shape {tuple(v.shape)}"
            )
        seq = v.unflatten(-1, (-1, self.step))
        return seq.flip(-2) if self.reverse else seq

    def _flat(self, seq: Tensor) -> Tensor:
        return (seq.flip(-2) if self.reverse else seq).flatten(-2)

    def inverse_elementwise(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """``z`` and the per-value :math:`\\log|\\partial z_j / \\partial x_j|`, both shaped like
        ``x`` broadcast with the context batch; sum the second over real positions only to get
        the log-determinant of a right-padded sequence."""
        seq = self._sequence(x)
        params = self.conditioner(seq, context).unflatten(-1, (self.step, self.map.num_params))
        z, ladj = self.map.inverse(*broadcast_params(seq, params))
        return self._flat(z), self._flat(ladj)

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, ladj = self.inverse_elementwise(x, context)
        return z, ladj.sum(-1)

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        seq = self._sequence(z)
        batch = (
            seq.shape[:-2]
            if context is None
            else torch.broadcast_shapes(seq.shape[:-2], context.shape[:-1])
        )
        seq = seq.expand(*batch, *seq.shape[-2:])
        state = self.conditioner.initial_state(batch, seq)
        prev = torch.zeros_like(seq[..., 0, :])
        xs, total = [], 0.0
        for i in range(seq.shape[-2]):
            params, state = self.conditioner.step(prev, state, context)
            prev, ladj = self.map(
                seq[..., i, :], params.unflatten(-1, (self.step, self.map.num_params))
            )
            xs.append(prev)
            total = total + ladj.sum(-1)
        return self._flat(torch.stack(xs, -2)), total

    def extra_repr(self) -> str:
        return super().extra_repr() + f", step={self.step}, reverse={self.reverse}"
