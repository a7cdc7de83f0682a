r"""The distribution a flow guide samples from, with the "sticking the landing" log-density.

Sampling computes :math:`x = T_\theta(z)` and :math:`\log q_\theta(x)` in one forward pass. The
ELBO's gradient through :math:`\log q_\theta(x_\theta)` has a *score* term
:math:`\partial_\theta \log q_\theta(x)|_{x \text{ fixed}}`, zero in expectation but noisy; the
"sticking the landing" (STL) estimator (Roeder, Wu & Duvenaud, NeurIPS 2017, https://arxiv.org/abs/1703.09194) drops it by
evaluating :math:`\log q_{\bar\theta}(x)` with the parameters (and an amortised guide's
context) detached, so the gradient reaches :math:`\theta` only through :math:`x`. At
:math:`q = p` the path derivative of :math:`\log p(x) - \log q(x)` is zero for every sample.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ...core import Flow, FlowDistribution
from .path_gradient import rsample_with_path_gradient

__all__ = ["GuideFlowDistribution", "detached_log_prob"]


class _LogProb(torch.nn.Module):
    """``(x, context) -> flow(context).log_prob(x)`` as a module, for ``functional_call``."""

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: Tensor, context: Tensor | None) -> Tensor:
        return self.flow(context).log_prob(x)


def detached_log_prob(flow: Flow, x: Tensor, context: Tensor | None = None) -> Tensor:
    r""":math:`\log q_{\bar\theta}(x \mid \bar c)`: the flow's log-density at ``x`` with its
    parameters and the context detached, so the gradient reaches the parameters only through
    ``x``. Shapes: ``x`` (..., D), ``context`` (..., C) or ``None``; returns (...).

    Example:
        >>> flow = pyroflows.flows.build("realnvp", 2, transforms=1, hidden=(4,))
        >>> x = torch.zeros(3, 2, requires_grad=True)
        >>> detached_log_prob(flow, x).shape
        torch.Size([3])
    """
    params = {"flow." + k: v.detach() for k, v in flow.named_parameters()}
    context = None if context is None else context.detach()
    return torch.func.functional_call(_LogProb(flow), params, (x, context), strict=False)


class GuideFlowDistribution(FlowDistribution):
    r"""A :class:`~pyroflows.FlowDistribution` for guides: one pass for a sample and its
    log-density, and optionally the STL log-density.

    ``log_prob(x)`` is a function of the value ``x`` alone (never of which tensor object it
    is), so Pyro copying a sample or a poutine replaying it gives the same estimator:

    * with ``stl=(flow, context)`` (and gradients enabled, outside JIT tracing, where
      ``torch.func`` is unavailable), :math:`\log q_{\bar\theta}(x \mid \bar c)` through the
      inverse flow (:func:`detached_log_prob`);
    * otherwise :math:`\log q_\theta(x)`; for the very tensor ``rsample`` returned, the value
      of its forward pass is reused, which equals the inverse pass's in value and gradient
      (a speed-up only).

    Args:
        base: base distribution (batch shape as the context's, event shape (D,)).
        transform: the flow's (conditioned) transform.
        stl: ``(flow, context)`` to evaluate the STL log-density, or ``None``.
        run: how the differentiable passes run, ``run(fn, *args)``: e.g.
            :meth:`~pyroflows.infer.guides.flat_parameters.FlatParameters.call`, which
            evaluates them with the flow's parameters taken from one flat tensor; ``None``:
            as they are.
        path_gradient: with ``stl=(flow, None)``, sample with
            :func:`~pyroflows.infer.guides.path_gradient.rsample_with_path_gradient`, whose
            log-density of its own samples has the STL gradient without the inverse flow
            (other values still go through the inverse).

    Raises:
        ValueError: ``path_gradient`` without ``stl=(flow, None)`` (an unconditional flow).

    Example:
        >>> flow = pyroflows.flows.build("realnvp", 2, transforms=1, hidden=(4,))
        >>> q = GuideFlowDistribution(flow.base(), flow.transform(), stl=(flow, None))
        >>> x = q.rsample((5,))
        >>> torch.allclose(q.log_prob(x), q.log_prob(x.clone()))
        True
    """

    def __init__(
        self,
        base: torch.distributions.Distribution,
        transform,  # noqa: ANN001
        stl: tuple[Flow, Tensor | None] | None = None,
        validate_args: bool | None = None,
        run: Callable[..., Any] | None = None,
        path_gradient: bool = False,
    ) -> None:
        if path_gradient and (stl is None or stl[1] is not None):
            raise ValueError("path_gradient needs stl=(flow, None): an unconditional flow")
        super().__init__(base, transform, validate_args)
        self.stl = stl
        self.run = run
        self.path_gradient = path_gradient
        self._last: tuple[Tensor, Tensor] | None = None

    def rsample_and_log_prob(
        self, sample_shape: torch.Size = torch.Size()
    ) -> tuple[Tensor, Tensor]:
        sampler = super().rsample_and_log_prob
        stl = self.stl
        if stl is not None and self.path_gradient and self._stl_active():
            base_shape = self.base_dist.batch_shape

            def sampler(shape: torch.Size) -> tuple[Tensor, Tensor]:
                return rsample_with_path_gradient(stl[0], torch.Size(shape) + base_shape)

        return sampler(sample_shape) if self.run is None else self.run(sampler, sample_shape)

    @staticmethod
    def _stl_active() -> bool:
        # torch.func (detached_log_prob) cannot run under the JIT's tracer.
        return torch.is_grad_enabled() and not torch.jit.is_tracing()

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        x, log_q = self.rsample_and_log_prob(sample_shape)
        self._last = (x, log_q)
        return x

    def log_prob(self, value: Tensor) -> Tensor:
        if (
            self._last is not None
            and self._last[0] is value
            and (self.path_gradient or self.stl is None)
        ):
            return self._last[1]
        if self.stl is not None and self._stl_active():
            return detached_log_prob(self.stl[0], value, self.stl[1])
        if self.run is None:
            return super().log_prob(value)
        return self.run(super().log_prob, value)

    def expand(self, batch_shape, _instance=None) -> GuideFlowDistribution:  # noqa: ANN001
        return GuideFlowDistribution(
            self.base_dist.expand(torch.Size(batch_shape)),
            self.transform,
            self.stl,
            run=self.run,
            path_gradient=self.path_gradient,
        )
