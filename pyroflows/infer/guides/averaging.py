r"""Iterate averaging of a flow's parameters for the flow guides."""

from __future__ import annotations

import copy

import torch
from torch import Tensor

from ...core import Flow
from .flat_parameters import FlatParameters

__all__ = ["ParameterAverage"]


class ParameterAverage(torch.nn.Module):
    r"""An exponential moving average of a flow's parameters (iterate averaging).

    Stochastic-gradient VI ends in a noise ball around the optimum; averaging the iterates
    (Polyak & Juditsky 1992, https://doi.org/10.1137/0330046; for VI, Dhaka et al., "Robust, Accurate Stochastic Optimization
    for Variational Inference", NeurIPS 2020) removes most of that noise at no cost. Step
    :math:`n` updates :math:`\bar\theta \leftarrow \bar\theta + w_n(\theta_n - \bar\theta)`
    with :math:`w_n = \max(1/n, \text{rate})`: a plain average at first, then an EMA over about
    ``1 / rate`` steps. The copy's parameters share one flat tensor (:attr:`values`), so a step
    is one ``lerp_``. Buffers are not averaged: :meth:`copy_buffers` copies them.

    Args:
        flow: the flow whose parameters are averaged (copied; the copy holds the average).
        rate: the floor of the weight, in (0, 1].

    Example:
        >>> flow = pyroflows.flows.build("realnvp", 2, transforms=1, hidden=(4,))
        >>> average = ParameterAverage(flow, rate=0.1)
        >>> average.update(flow); average.steps
        1
    """

    def __init__(self, flow: Flow, rate: float) -> None:
        super().__init__()
        self.flow = copy.deepcopy(flow)
        for p in self.flow.parameters():
            p.requires_grad_(False)
        self.values = FlatParameters(self.flow, requires_grad=False)
        self.rate = float(rate)
        self.steps = 0

    @torch.no_grad()
    def update(self, source: Flow | Tensor) -> None:
        """One averaging step towards ``source``: a flow like the averaged one, or its
        parameters as one flat tensor (in ``named_parameters`` order)."""
        if isinstance(source, Flow):
            source = torch.cat([p.detach().reshape(-1) for p in source.parameters()])
        self.steps += 1
        weight = max(1.0 / self.steps, self.rate)
        self.values.current().lerp_(source.detach(), weight)

    @torch.no_grad()
    def copy_buffers(self, source: Flow) -> None:
        """Take ``source``'s buffers (masks, fixed whitening)."""
        for mine, theirs in zip(self.flow.buffers(), source.buffers()):
            mine.copy_(theirs)

    @torch.no_grad()
    def reset(self, source: Flow) -> None:
        """Restart the average at ``source``'s parameters."""
        self.flow.load_state_dict(source.state_dict())
        self.steps = 0
