r"""Targets and proposals for importance and rejection sampling, as vectors.

A *target* is an unnormalised log-density :math:`\log \tilde p(x)` of points :math:`x \in
\mathbb{R}^D`, given either as a callable ``(S, D) -> (S,)`` or as a Pyro model. A model's
continuous latent sites are flattened, in the order the model samples them, into one
**unconstrained** vector :math:`u` exactly as Pyro's ``AutoContinuous`` guides (and
pyroflows' ``AutoFlow``) do, so a flow proposal over :math:`\mathbb{R}^D` matches the
model's support by construction:

.. math:: \log \tilde p(u) = \log p(\text{data}, z(u)) + \log\left|\det\frac{\partial z}{\partial u}\right|,
   \qquad z(u) = \text{biject\_to(support)}(u).

Weights and evidence do not depend on this choice (the Jacobian cancels), but the proposal
does: a flow placed over constrained values would put mass outside the support.

A *proposal* is a :class:`~pyroflows.Flow`, a :class:`~pyroflows.FlowDistribution`, any torch
distribution with event shape ``(D,)`` and empty batch shape, or a Pyro ``AutoContinuous``
guide (``AutoFlow``, ``AutoMultivariateNormal``, ...) whose ``get_posterior()`` is such a
distribution over the unconstrained latent vector.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoContinuous
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import Distribution

from ...core import Flow, FlowDistribution
from ..model_density import (
    LatentLayout,
    UnconstrainedLogDensity,
    check_model_arguments,
    init_trace,
    plate_nesting,
)

__all__ = ["ModelTarget", "VectorProposal", "call_target", "is_model", "resolve_target"]


class ModelTarget(UnconstrainedLogDensity):
    r"""A Pyro model's unnormalised posterior log-density over the flat unconstrained latent vector.

    Args:
        model: a Pyro model with continuous latent sites.
        model_args: its positional arguments.
        model_kwargs: its keyword arguments.
        order: site names in the order of the latent vector (default: the model's order; an
            ``AutoContinuous`` guide's order is passed here so the vectors agree).

    Calling it maps latents (S, D) to log-densities (S,), vectorised over S with a particle
    plate (a loop, with a warning, for models whose shapes do not broadcast); see
    :class:`~pyroflows.infer.model_density.UnconstrainedLogDensity`. Differentiable.

    Raises:
        TypeError: for discrete latent sites. ValueError: for a model without latent sites.

    Example:
        >>> def model():
        ...     pyro.sample("s", dist.LogNormal(0.0, 1.0))
        >>> target = ModelTarget(model)
        >>> target(torch.zeros(3, 1)).shape, target.describe()
        (torch.Size([3]), 's()')
    """

    def __init__(
        self,
        model: Callable,
        model_args: tuple = (),
        model_kwargs: dict | None = None,
        order: list[str] | None = None,
    ) -> None:
        args, kwargs = check_model_arguments(model_args, model_kwargs)
        # Traced at an init strategy's values: a site that cannot sample (ImproperUniform)
        # still gets one.
        trace = init_trace(model, args, kwargs)
        latent = {}
        for name, site in trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
                continue
            if site["fn"].support.is_discrete:
                raise TypeError(
                    f"latent site {name!r} is discrete; importance and rejection sampling "
                    "here need continuous latent sites (enumerate or marginalise it)"
                )
            latent[name] = site
        if not latent:
            raise ValueError("the model has no latent sample sites to weigh")
        order = list(latent) if order is None else list(order)
        if sorted(order) != sorted(latent):
            raise ValueError(
                f"the proposal's latent sites {order} differ from the model's {list(latent)}"
            )
        layout = LatentLayout((name, latent[name]) for name in order)
        super().__init__(
            model, layout, plate_nesting(model, *args, **kwargs), args, kwargs, warn=True
        )
        first = latent[order[0]]["value"]
        # The widest floating dtype among the sites' values, observed data included: a site
        # that cannot sample (ImproperUniform) got its init value in torch's default dtype.
        # Likewise the device: the data's, where any value is off the CPU.
        floats = [
            site["value"]
            for site in trace.nodes.values()
            if site["type"] == "sample"
            and torch.is_tensor(site["value"])
            and site["value"].is_floating_point()
        ]
        self.dtype = functools.reduce(torch.promote_types, [v.dtype for v in floats])
        self.device = next((v.device for v in floats if v.device.type != "cpu"), first.device)
        self.dim = layout.dim

    def describe(self) -> str:
        """``name(shape), ...`` of the model's unconstrained latent sites."""
        return self.layout.describe()

    def unpack(self, u: Tensor) -> dict[str, Tensor]:
        """Constrained site values for latents (S, D): ``name -> (S, *site shape)``."""
        return self.layout.unpack_batch(u.to(self.dtype))

    def __call__(self, u: Tensor, args: tuple | None = None, kwargs: dict | None = None) -> Tensor:
        if u.dim() != 2 or u.shape[1] != self.dim:
            raise ValueError(
                f"the model's latent vector has {self.dim} unconstrained dimensions "
                f"({self.describe()}); got points of shape {tuple(u.shape)}"
            )
        x = u.to(device=self.device, dtype=self.dtype)
        return super().__call__(x, args, kwargs).to(u.dtype)


class VectorProposal:
    r"""A proposal over :math:`\mathbb{R}^D` with ``sample_and_log_prob(n)`` and ``log_prob(x)``.

    Args:
        proposal: a Flow (unconditional), a FlowDistribution, a torch distribution with
            event shape (D,) and empty batch shape, or an ``AutoContinuous`` guide.
        model_args, model_kwargs: the model's arguments (to set up a guide).
    """

    def __init__(
        self, proposal: Any, model_args: tuple = (), model_kwargs: dict | None = None
    ) -> None:
        self.guide = None
        model_args, model_kwargs = check_model_arguments(model_args, model_kwargs)
        if isinstance(proposal, Flow):
            if proposal.context_features:
                raise ValueError(
                    "a conditional Flow needs a context: pass flow(context) as the proposal"
                )
            distribution = proposal()
        elif isinstance(proposal, AutoContinuous):
            if proposal.prototype_trace is None:
                with poutine.block():
                    proposal(*model_args, **model_kwargs)
            self.guide = proposal
            distribution = proposal.get_posterior(*model_args, **model_kwargs)
        elif isinstance(proposal, Distribution):
            distribution = proposal
        else:
            raise TypeError(
                f"cannot use a {type(proposal).__name__} as a vector proposal: pass a "
                "pyroflows Flow or FlowDistribution, a torch distribution or an AutoContinuous guide"
            )
        if len(distribution.event_shape) != 1 or len(distribution.batch_shape) != 0:
            raise ValueError(
                "the proposal must be a distribution over vectors: event shape (D,) and "
                f"no batch shape; got batch {tuple(distribution.batch_shape)}, "
                f"event {tuple(distribution.event_shape)}"
            )
        self.distribution = distribution
        self.dim = int(distribution.event_shape[0])

    def sample_and_log_prob(self, n: int) -> tuple[Tensor, Tensor]:
        d = self.distribution
        shape = torch.Size([n])
        if isinstance(d, FlowDistribution) or hasattr(d, "rsample_and_log_prob"):
            x, log_q = d.rsample_and_log_prob(shape)
        else:
            x = d.rsample(shape) if d.has_rsample else d.sample(shape)
            log_q = d.log_prob(x)
        return x, log_q

    def log_prob(self, x: Tensor) -> Tensor:
        return self.distribution.log_prob(x)

    def probe(self) -> Tensor:
        """One draw (1, D), which shows the proposal's device and dtype, taken without
        advancing any random number generator (so a seeded run is the same with or without
        it)."""
        cuda = torch.cuda.is_initialized()
        with torch.random.fork_rng(devices=range(torch.cuda.device_count()) if cuda else []):
            return self.sample_and_log_prob(1)[0].detach()

    def site_order(self) -> list[str] | None:
        """The guide's latent site order (``None`` for plain distributions)."""
        if self.guide is None:
            return None
        return [name for name, _ in self.guide.prototype_trace.iter_stochastic_nodes()]


def is_model(target: Callable, model_args: tuple, model_kwargs: dict | None) -> bool:
    """Whether ``target`` is a Pyro model (records sample sites when run on its arguments)
    rather than a log-density callable of a (S, D) tensor."""
    if model_args or model_kwargs:
        return True
    try:
        inspect.signature(target).bind()
    except TypeError:
        return False  # needs a positional argument: the points
    except ValueError:  # builtins without a signature
        return False
    try:
        with poutine.block():
            trace = poutine.trace(target).get_trace()
    except Exception:  # noqa: BLE001 - anything that fails without arguments is not a model
        return False
    return any(site["type"] == "sample" for site in trace.nodes.values())


def resolve_target(
    target: Any,
    proposal: VectorProposal,
    model_args: tuple,
    model_kwargs: dict | None,
    target_kind: str,
) -> tuple[Callable[[Tensor], Tensor], ModelTarget | None]:
    """The target as a log-density of (S, D) points, and the :class:`ModelTarget` when it is a model.

    Raises ValueError when a model's latent dimension differs from the proposal's.
    """
    if target_kind not in ("auto", "model", "log_density"):
        raise ValueError(
            f"target_kind must be 'auto', 'model' or 'log_density', got {target_kind!r}"
        )
    if not callable(target):
        raise TypeError(
            f"target must be a Pyro model or a log-density callable, got {type(target).__name__}"
        )
    model = target_kind == "model" or (
        target_kind == "auto"
        and (proposal.guide is not None or is_model(target, model_args, model_kwargs))
    )
    if not model:
        return target, None
    model_target = ModelTarget(target, model_args, model_kwargs, order=proposal.site_order())
    if model_target.dim != proposal.dim:
        raise ValueError(
            f"dimension mismatch: the model's unconstrained latent vector has "
            f"{model_target.dim} dimensions ({model_target.describe()}) but the "
            f"proposal has {proposal.dim}"
        )
    return model_target, model_target


def call_target(log_density: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Evaluate a log-density on points (n, D), checking it returns shape (n,)."""
    try:
        out = log_density(x)
    except (RuntimeError, ValueError, IndexError) as error:
        hint = (
            "are the target's data and parameters valid (no NaN, inside the supports)?"
            if "invalid values" in str(error) or "support" in str(error)
            else "do the target and the proposal have the same dimension?"
        )
        raise ValueError(
            f"the target failed on proposal points of shape {tuple(x.shape)} ({error}); {hint}"
        ) from error
    out = out if isinstance(out, Tensor) else torch.as_tensor(out, device=x.device)
    if out.shape != x.shape[:1]:
        raise ValueError(
            f"the target returned shape {tuple(out.shape)} for points of shape "
            f"{tuple(x.shape)}; it must return one log-density per row, shape ({x.shape[0]},)"
        )
    return out.to(device=x.device, dtype=x.dtype) if out.is_floating_point() else out.to(x)
