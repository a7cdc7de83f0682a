r"""Machinery shared by the flow autoguides (:class:`~pyroflows.infer.AutoFlow`,
:class:`~pyroflows.infer.AutoMeanFieldFlow`, :class:`~pyroflows.infer.AutoAmortizedFlow`):
which sites a guide models, safe initial values, the guide's distribution (one pass for a
sample and its log-density, the "sticking the landing" gradient), the sync of a flow's
parameters with Pyro's param store, and iterate averaging.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable

import pyro
import torch
from pyro.infer.autoguide.initialization import init_to_feasible
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import biject_to, constraints

from ...core import Flow, FlowDistribution

__all__ = [
    "GuideFlowDistribution",
    "ParameterAverage",
    "continuous_latent_hide_fn",
    "detached_log_prob",
    "safe_init",
    "sync_with_param_store",
]


def continuous_latent_hide_fn(msg: dict) -> bool:
    """Prototype filter: keep only continuous, non-enumerated latent sample sites."""
    if msg["type"] != "sample" or msg["is_observed"] or site_is_subsample(msg):
        return True
    if msg["infer"].get("enumerate") or msg["infer"].get("is_auxiliary"):
        return True
    support = getattr(msg["fn"], "support", None)
    return bool(support is not None and support.is_discrete)


def safe_init(init_loc_fn: Callable) -> Callable:
    """Wrap an init strategy so distributions that cannot sample (``ImproperUniform``) fall
    back to :func:`~pyro.infer.autoguide.initialization.init_to_feasible`, then to zero in
    the unconstrained space."""

    def init(site: dict) -> Tensor:
        try:
            return init_loc_fn(site)
        except NotImplementedError:
            pass
        try:
            return init_to_feasible(site)
        except NotImplementedError:
            # Distributions that cannot sample at all: zero in the unconstrained space.
            fn = site["fn"]
            transform = biject_to(fn.support)
            shape = transform.inverse_shape(fn.batch_shape + fn.event_shape)
            return transform(torch.zeros(shape))

    return init


class _LogProb(torch.nn.Module):
    """``x -> flow().log_prob(x)`` as a module, for ``torch.func.functional_call``."""

    def __init__(self, flow: Flow) -> None:
        super().__init__()
        self.flow = flow

    def forward(self, x: Tensor) -> Tensor:
        return self.flow().log_prob(x)


def detached_log_prob(flow: Flow, x: Tensor) -> Tensor:
    r""":math:`\log q_{\bar\theta}(x)`: the flow's density with its parameters detached, so the
    gradient reaches the parameters only through ``x`` (the "sticking the landing" estimator
    of Roeder, Wu & Duvenaud, NeurIPS 2017, whose variance vanishes as q approaches p)."""
    params = {"flow." + k: v.detach() for k, v in flow.named_parameters()}
    return torch.func.functional_call(_LogProb(flow), params, (x,), strict=False)


class GuideFlowDistribution(FlowDistribution):
    """A :class:`~pyroflows.FlowDistribution` that remembers the log-density of its last sample.

    ``rsample`` computes ``(x, log q(x))`` in one forward pass; ``log_prob(x)`` of that very
    tensor returns the remembered value instead of inverting the flow (other values are
    inverted as usual). This is what makes a sampling-fast flow cheap inside an ELBO.
    """

    _last: tuple[Tensor, Tensor] | None = None
    _stl_flow: Flow | None = None

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        x, log_q = self.rsample_and_log_prob(sample_shape)
        if self._stl_flow is not None and torch.is_grad_enabled() and not torch.jit.is_tracing():
            # (Under JIT tracing, torch.func is unavailable: the standard estimator is used.)
            # Same value, gradient through x only (path derivative).
            log_q = detached_log_prob(self._stl_flow, x)
        self._last = (x, log_q)
        return x

    def log_prob(self, value: Tensor) -> Tensor:
        if self._last is not None and self._last[0] is value:
            return self._last[1]
        return super().log_prob(value)

    def expand(self, batch_shape, _instance=None) -> GuideFlowDistribution:  # noqa: ANN001
        new = GuideFlowDistribution(self.base_dist.expand(torch.Size(batch_shape)), self.transform)
        new._stl_flow = self._stl_flow
        return new


def _store_tensor(key: str, tensor: Tensor) -> None:
    """Keep ``tensor`` in the param store under ``key`` (the store's value wins if it holds a
    different one, e.g. after ``load``), without a ``pyro.param`` statement: saved and loaded
    with the store, never optimised."""
    store = pyro.get_param_store()
    stored = store._params.get(key)
    # A stored tensor of another shape belongs to an earlier guide of the same name (a new
    # model in the same session), not to a saved state of this one: replace it.
    if stored is not None and stored is not tensor and stored.shape == tensor.shape:
        with torch.no_grad():
            tensor.copy_(stored)
    store._params[key] = tensor
    store._param_to_name[tensor] = key
    store._constraints[key] = constraints.real


def sync_with_param_store(name: str, flow: Flow, average: ParameterAverage | None = None) -> None:
    """Register ``flow``'s parameters in Pyro's param store (taking the store's values when it
    already holds them, e.g. after ``pyro.get_param_store().load``), and keep its fixed
    whitening layer's buffers and its parameter average in the store too (saved and loaded
    with it, never optimised)."""
    before = [p for p in flow.parameters()]
    pyro.module(name, flow, update_module_params=True)
    loaded = any(a is not b for a, b in zip(before, flow.parameters()))
    for buffer_name, buffer in flow.transforms[-1].named_buffers():
        if buffer.is_floating_point() and not buffer_name.endswith("mask"):
            _store_tensor(f"{name}$$$whitening.{buffer_name}", buffer)
    if average is None:
        return
    keys = [f"{name}$$$average.{n}" for n, _ in average.flow.named_parameters()]
    store = pyro.get_param_store()
    if loaded and not all(k in store._params for k in keys):
        average.reset(flow)  # loaded parameters without an average: start it there
    elif loaded:
        average.steps = max(average.steps, int(1 / average.rate))
    for key, tensor in zip(keys, average.flow.parameters()):
        _store_tensor(key, tensor)
    with torch.no_grad():
        for mine, theirs in zip(average.flow.buffers(), flow.buffers()):
            mine.copy_(theirs)


class ParameterAverage(torch.nn.Module):
    """An exponential moving average of a flow's parameters (iterate averaging).

    Stochastic-gradient VI ends in a noise ball around the optimum; averaging the iterates
    (Polyak & Juditsky 1992; for VI, Dhaka et al., "Robust, Accurate Stochastic Optimization
    for Variational Inference", NeurIPS 2020) removes most of that noise at no cost. The
    weight of step ``n`` is ``max(1 / n, rate)``: a plain average at first, then an EMA over
    about ``1 / rate`` steps.
    """

    def __init__(self, flow: Flow, rate: float) -> None:
        super().__init__()
        self.flow = copy.deepcopy(flow)
        for p in self.flow.parameters():
            p.requires_grad_(False)
        self.rate = float(rate)
        self.steps = 0

    @torch.no_grad()
    def update(self, source: Flow) -> None:
        self.steps += 1
        weight = max(1.0 / self.steps, self.rate)
        for mine, theirs in zip(self.flow.parameters(), source.parameters()):
            mine.lerp_(theirs.detach(), weight)
        for mine, theirs in zip(self.flow.buffers(), source.buffers()):
            mine.copy_(theirs)

    @torch.no_grad()
    def reset(self, source: Flow) -> None:
        self.flow.load_state_dict(source.state_dict())
        self.steps = 0


def _bindable(fn: Callable, args: tuple, kwargs: dict) -> bool:
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return False
    return True


def _reduce_to_particles(log_prob: Tensor, nesting: int) -> Tensor:
    """Sum a site's log-probability over every dim but the particle dim ``-(nesting + 1)``."""
    if log_prob.dim() > nesting + 1:
        raise ValueError("a site has more batch dims than the plates declare")
    log_prob = log_prob.reshape((1,) * (nesting + 1 - log_prob.dim()) + log_prob.shape)
    return log_prob.flatten(1).sum(1)
