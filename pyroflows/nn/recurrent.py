r"""Recurrent conditioner for autoregressive models of sequences of any length.

A recurrent network ties the weights of an autoregressive model across positions (lecture
notes; Graves 2013; Oliva et al., "Transformation Autoregressive Networks", ICML 2018, https://arxiv.org/abs/1801.09819), so
the number of parameters does not depend on the sequence length:

.. math::
    h_i = \mathrm{cell}(h_{i-1},\ [x_{i-1}; c]), \quad x_0 := 0, \qquad
    \theta_i = W_o h_i + b_o,

hence :math:`\theta_i` depends on :math:`x_{<i}` (and the context :math:`c`) only. The cell is
an LSTM (Hochreiter & Schmidhuber 1997, https://doi.org/10.1162/neco.1997.9.8.1735), a GRU (Cho et al. 2014) or an Elman RNN
:math:`h_i = \tanh(W_{ih} u_i + W_{hh} h_{i-1} + b)`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..checks import check_choice, check_count, check_hidden
from .layers import zero_init

__all__ = ["CELLS", "RecurrentConditioner", "RecurrentLayer"]

#: Recurrent cells by name, with their number of gates (rows of ``weight_ih`` per hidden unit).
CELLS: dict[str, int] = {"lstm": 4, "gru": 3, "rnn": 1}


class RecurrentLayer(nn.Module):
    r"""One recurrent layer with ``torch.nn.LSTM``/``GRU``/``RNN``'s parameter layout.

    It holds plain parameters (``weight_ih``, ``weight_hh``, ``bias_ih``, ``bias_hh``; gates in
    PyTorch's order: LSTM i, f, g, o; GRU r, z, n) rather than wrapping ``nn.LSTM``, so that
    :func:`torch.compile` traces it (dynamo refuses ``nn.LSTM`` modules). A whole sequence runs
    through PyTorch's fused kernel (``torch.lstm``, cuDNN on GPU) in eager mode, and through an
    explicit loop over time while compiling or stepping one position at a time.

    Args:
        input_size: size of each step's input.
        hidden_size: size of the hidden state.
        cell: ``"lstm"``, ``"gru"`` or ``"rnn"`` (tanh).

    State: a tuple of tensors (..., hidden_size): ``(h, c)`` for an LSTM, ``(h,)`` otherwise.
    """

    def __init__(self, input_size: int, hidden_size: int, cell: str = "lstm") -> None:
        super().__init__()
        self.cell = check_choice("cell", cell, CELLS)
        self.input_size = check_count("input_size", input_size)
        self.hidden_size = check_count("hidden_size", hidden_size)
        gates = CELLS[cell] * hidden_size
        bound = 1 / math.sqrt(hidden_size)  # nn.LSTM's initialisation
        self.weight_ih = nn.Parameter(torch.empty(gates, input_size).uniform_(-bound, bound))
        self.weight_hh = nn.Parameter(torch.empty(gates, hidden_size).uniform_(-bound, bound))
        self.bias_ih = nn.Parameter(torch.empty(gates).uniform_(-bound, bound))
        self.bias_hh = nn.Parameter(torch.empty(gates).uniform_(-bound, bound))

    def initial_state(self, batch_shape: torch.Size, like: Tensor) -> tuple[Tensor, ...]:
        """Zero state for ``batch_shape`` with ``like``'s dtype and device."""
        h = like.new_zeros(*batch_shape, self.hidden_size)
        return (h, h) if self.cell == "lstm" else (h,)

    def cell_step(self, gi: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """One step from the input projection ``gi = W_ih u + b_ih`` and the previous state."""
        h = state[0]
        gh = torch.nn.functional.linear(h, self.weight_hh, self.bias_hh)
        if self.cell == "lstm":
            i, f, g, o = (gi + gh).chunk(4, -1)
            c = torch.sigmoid(f) * state[1] + torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * torch.tanh(c), c
        if self.cell == "gru":
            ir, iz, in_ = gi.chunk(3, -1)
            hr, hz, hn = gh.chunk(3, -1)
            r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
            n = torch.tanh(in_ + r * hn)
            return ((1 - z) * n + z * h,)
        return (torch.tanh(gi + gh),)

    def step(self, u: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Advance one position: ``u`` (..., input_size) -> new state."""
        return self.cell_step(torch.nn.functional.linear(u, self.weight_ih, self.bias_ih), state)

    def forward(self, u: Tensor, fused: bool | None = None) -> Tensor:
        """Hidden states of a whole sequence from a zero state: (N, L, input) -> (N, L, hidden).

        ``fused=None`` uses PyTorch's fused kernel except while :func:`torch.compile` traces.
        """
        if fused is None:
            fused = not torch.compiler.is_compiling()
        if fused:
            h0 = u.new_zeros(1, u.shape[0], self.hidden_size)
            weights = [self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh]
            args = (True, 1, 0.0, self.training, False, True)
            if self.cell == "lstm":
                return torch.lstm(u, (h0, h0), weights, *args)[0]
            return (torch.gru if self.cell == "gru" else torch.rnn_tanh)(u, h0, weights, *args)[0]
        gi = torch.nn.functional.linear(u, self.weight_ih, self.bias_ih)
        state = self.initial_state(u.shape[:1], u)
        outputs = []
        for t in range(u.shape[1]):
            state = self.cell_step(gi[:, t], state)
            outputs.append(state[0])
        return torch.stack(outputs, 1)

    def extra_repr(self) -> str:
        return f"{self.input_size}, {self.hidden_size}, cell={self.cell!r}"


class RecurrentConditioner(nn.Module):
    r"""Weight-tied autoregressive conditioner: parameters of position :math:`i` from a stack of
    recurrent layers run over the shifted sequence :math:`(0, x_1, \dots, x_{i-1})`.

    .. math:: \theta_i = f(x_{<i}, c), \qquad i = 1, \dots, L,

    for any length :math:`L`; the weights do not depend on :math:`L`. :meth:`forward` computes
    all :math:`\theta_i` of a known sequence in one pass (teacher forcing, for densities);
    :meth:`initial_state` and :meth:`step` produce them one position at a time (for sampling).

    Args:
        step_size: values per position :math:`s` (1 for a scalar sequence).
        params_per_step: outputs per position (``s * num_params`` for an elementwise map).
        hidden: widths of the stacked recurrent layers.
        cell: ``"lstm"``, ``"gru"`` or ``"rnn"``.
        context: size of a conditioning vector, appended to every step's input.
        zero_output: initialise the output layer to zero (identity flows at start).

    Shapes: ``x`` (..., L, step_size), ``context`` (..., context) -> (..., L, params_per_step).

    Example:
        >>> net = RecurrentConditioner(1, 2, hidden=(16,), zero_output=False)
        >>> net(torch.randn(4, 50, 1)).shape, net(torch.randn(4, 5, 1)).shape
        (torch.Size([4, 50, 2]), torch.Size([4, 5, 2]))
    """

    def __init__(
        self,
        step_size: int,
        params_per_step: int,
        hidden: Sequence[int] = (64,),
        cell: str = "lstm",
        context: int = 0,
        zero_output: bool = True,
    ) -> None:
        super().__init__()
        hidden = check_hidden(hidden)
        self.step_size = step_size
        self.params_per_step = params_per_step
        self.context_features = check_count("context", context, 0)
        sizes = (step_size + context, *hidden)
        self.layers = nn.ModuleList(
            RecurrentLayer(a, b, cell) for a, b in zip(sizes[:-1], sizes[1:])
        )
        self.output = zero_init(nn.Linear(hidden[-1], params_per_step), zero_output)

    def _inputs(self, x: Tensor, context: Tensor | None) -> Tensor:
        if context is None:
            return x
        batch = torch.broadcast_shapes(x.shape[:-2], context.shape[:-1])
        c = context.unsqueeze(-2).expand(*batch, x.shape[-2], context.shape[-1])
        return torch.cat([x.expand(*batch, *x.shape[-2:]), c], -1)

    def forward(
        self, x: Tensor, context: Tensor | None = None, fused: bool | None = None
    ) -> Tensor:
        if x.dim() < 2 or x.shape[-1] != self.step_size or x.shape[-2] < 1:
            raise ValueError(
                f"expected a sequence (..., L >= 1, {self.step_size}), got {tuple(x.shape)}"
            )
        shifted = torch.cat([torch.zeros_like(x[..., :1, :]), x[..., :-1, :]], -2)
        u = self._inputs(shifted, context)
        h = u.reshape(-1, *u.shape[-2:])
        for layer in self.layers:
            h = layer(h, fused)
        return self.output(h).reshape(*u.shape[:-1], self.params_per_step)

    def initial_state(self, batch_shape: torch.Size, like: Tensor) -> list[tuple[Tensor, ...]]:
        """Zero states of every layer, and the implicit :math:`x_0 = 0`, for sequential use."""
        return [layer.initial_state(batch_shape, like) for layer in self.layers]

    def step(
        self, x_prev: Tensor, state: list[tuple[Tensor, ...]], context: Tensor | None = None
    ) -> tuple[Tensor, list[tuple[Tensor, ...]]]:
        """Parameters of the next position given the previous value ``x_prev`` (..., step_size)
        (zeros for the first position) and the states; returns ``(params, new_states)``."""
        h = self._inputs(x_prev.unsqueeze(-2), context).squeeze(-2)
        new_state = []
        for layer, s in zip(self.layers, state):
            s = layer.step(h, s)
            new_state.append(s)
            h = s[0]
        return self.output(h), new_state
