r"""A Pyro model's log-density over a particle plate: the one piece of machinery under the
flow guides, importance sampling and the guide-weight helpers.

For :math:`S` particles drawn at once, the model runs inside a plate of size :math:`S` at dim
:math:`-(n+1)`, :math:`n` its plate nesting, so every site's log-probability carries the
particle dim; summing each over its other dims gives the log joint per particle,

.. math:: \log p(x, z_s) = \sum_{\text{sites } i} \sum_{\text{dims} \ne \text{particle}}
   \log p_i(\cdot \mid z_s), \qquad s = 1..S.

A flat unconstrained latent vector :math:`u \in \mathbb{R}^D` (the order of Pyro's
``AutoContinuous`` guides) maps to the sites' values by :math:`z = \text{biject\_to}(\text{support})(u)`
and adds the log-Jacobian, :math:`\log\tilde p(u) = \log p(x, z(u)) + \log|\det\partial z/\partial u|`.
Models whose shapes do not broadcast over a particle plate are evaluated one particle at a time.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import sum_rightmost
from pyro.infer.autoguide.initialization import InitMessenger, init_to_feasible, init_to_median
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import biject_to
from tqdm.auto import tqdm

__all__ = [
    "LatentLayout",
    "UnconstrainedLogDensity",
    "check_model_arguments",
    "nan_arguments",
    "init_trace",
    "particle_trace",
    "plate_nesting",
    "safe_init",
    "sum_to_particles",
    "trace_log_joint",
    "trace_plate_nesting",
    "vmap_draws",
    "vmap_points",
]

#: Name of the plate that vectorises over particles (kept out of the model's own names).
PARTICLE_PLATE = "_pyroflows_particles"
#: What a model that does not vectorise over a particle plate raises.
VECTORIZE_ERRORS = (ValueError, RuntimeError, IndexError, AssertionError)


def check_model_arguments(model_args: object, model_kwargs: object) -> tuple[tuple, dict]:
    """A model's arguments as ``(tuple, dict)``; ``None`` gives empty ones.

    Raises:
        TypeError: ``model_args`` is not a tuple (``model_args=x`` for one argument must be
            ``(x,)``: a tensor or a list would be split into several arguments) or
            ``model_kwargs`` not a mapping.

    Example:
        >>> check_model_arguments((1,), None)
        ((1,), {})
    """
    if model_args is None:
        args: tuple = ()
    elif isinstance(model_args, tuple):
        args = model_args
    else:
        raise TypeError(
            "model_args must be a tuple of the model's positional arguments, e.g. "
            f"model_args=(data,) for one argument; got {type(model_args).__name__}"
        )
    if model_kwargs is None:
        kwargs: dict = {}
    elif isinstance(model_kwargs, Mapping):
        kwargs = dict(model_kwargs)
    else:
        raise TypeError(
            "model_kwargs must be a dict of the model's keyword arguments, e.g. "
            f"model_kwargs={{'data': data}}; got {type(model_kwargs).__name__}"
        )
    return args, kwargs


def nan_arguments(args: tuple, kwargs: dict) -> list[str]:
    """Which of a model's tensor arguments hold NaN values: ``["model_args[0]", ...]``."""
    named = [(f"model_args[{i}]", v) for i, v in enumerate(args)]
    named += [(f"model_kwargs[{k!r}]", v) for k, v in kwargs.items()]
    return [
        name
        for name, value in named
        if isinstance(value, Tensor) and value.is_floating_point() and bool(value.isnan().any())
    ]


def safe_init(init_loc_fn: Callable) -> Callable:
    """Wrap an init strategy so distributions that cannot sample (``ImproperUniform``) fall
    back to :func:`~pyro.infer.autoguide.initialization.init_to_feasible`, then to zero in
    the unconstrained space.

    Example:
        >>> fn = dist.ImproperUniform(dist.constraints.positive, (), ())  # cannot sample
        >>> float(safe_init(init_to_median)({"fn": fn, "name": "x", "is_observed": False}))
        1.0
    """

    def init(site: dict) -> Tensor:
        try:
            return init_loc_fn(site)
        except NotImplementedError:
            pass
        try:
            return init_to_feasible(site)
        except NotImplementedError:
            fn = site["fn"]
            transform = biject_to(fn.support)
            shape = transform.inverse_shape(fn.batch_shape + fn.event_shape)
            return transform(torch.zeros(shape))

    return init


def init_trace(model: Callable, args: tuple, kwargs: dict) -> poutine.Trace:
    """One trace of the model with latent values from an init strategy (so that even sites
    that cannot be sampled, such as ``ImproperUniform``, get a value)."""
    with poutine.block():
        return poutine.trace(InitMessenger(safe_init(init_to_median))(model)).get_trace(
            *args, **kwargs
        )


def trace_plate_nesting(trace: poutine.Trace) -> int:
    """Number of batch dims used by the sample sites of a model ``trace``."""
    nesting = 0
    for site in trace.nodes.values():
        if site["type"] != "sample":
            continue
        for frame in site["cond_indep_stack"]:
            if frame.vectorized and frame.dim is not None:
                nesting = max(nesting, -frame.dim)
        nesting = max(nesting, len(getattr(site["fn"], "batch_shape", ())))
    return nesting


def plate_nesting(model: Callable, *args: Any, **kwargs: Any) -> int:
    """Number of batch dims the model uses (its plates and its sites' batch shapes)."""
    return trace_plate_nesting(init_trace(model, args, kwargs))


def sum_to_particles(
    log_prob: Tensor | float, num: int, nesting: int | None, like: Tensor
) -> Tensor:
    r"""Sum a site's log-probability over every dim but the particle dim :math:`-(n+1)`; (num,).

    ``nesting=None`` means no particle plate (one particle): the sum of everything. A value
    without the particle dim does not depend on the particle and is repeated.

    Raises:
        ValueError: the value has more batch dims than the plates declare.
    """
    if not isinstance(log_prob, Tensor):  # e.g. a masked site's 0.0
        log_prob = torch.as_tensor(float(log_prob), dtype=like.dtype, device=like.device)
    if nesting is None or log_prob.dim() < nesting + 1:
        return log_prob.sum().expand(num)
    if log_prob.dim() > nesting + 1:
        raise ValueError("a site has more batch dims than the plates declare")
    return log_prob.reshape(log_prob.shape[0], -1).sum(1).expand(num)


def particle_trace(
    fn: Callable, num: int, nesting: int | None, args: tuple, kwargs: dict
) -> poutine.Trace:
    """Trace ``fn`` (a model, a guide, or either replayed/conditioned) inside a particle
    plate of size ``num`` at dim ``-(nesting + 1)``, hidden from outer handlers;
    ``nesting=None``: no plate."""
    with poutine.block():
        if nesting is None:
            return poutine.trace(fn).get_trace(*args, **kwargs)
        with pyro.plate(PARTICLE_PLATE, num, dim=-(nesting + 1)):
            return poutine.trace(fn).get_trace(*args, **kwargs)


def trace_log_joint(trace: poutine.Trace, num: int, nesting: int | None, like: Tensor) -> Tensor:
    """Per-particle sum of the log-probabilities of every (non-subsample) sample site, (num,)."""
    trace.compute_log_prob(site_filter=lambda name, site: not site_is_subsample(site))
    total = like.new_zeros(num)
    for site in trace.nodes.values():
        if site["type"] == "sample" and not site_is_subsample(site):
            total = total + sum_to_particles(site["log_prob"], num, nesting, like)
    return total


class LatentLayout:
    r"""How a flat unconstrained vector :math:`u \in \mathbb{R}^D` splits into a model's sites.

    Args:
        sites: ``(name, site)`` pairs of a model trace, in the order of the vector.

    Each site takes ``prod(unconstrained shape)`` consecutive coordinates, mapped to its
    support by ``biject_to(support)``.
    """

    def __init__(self, sites: Iterable[tuple[str, dict]]) -> None:
        self.sites: list[dict[str, Any]] = []
        for name, site in sites:
            value, fn = site["value"], site["fn"]
            transform = biject_to(fn.support)
            shape = tuple(transform.inv(value).shape)
            self.sites.append(
                {
                    "name": name,
                    "transform": transform,
                    "shape": shape,
                    "size": math.prod(shape),
                    "event_dim": fn.event_dim,
                    "batch_dims": value.dim() - fn.event_dim,
                }
            )
        self.dim = sum(s["size"] for s in self.sites)

    def describe(self) -> str:
        """``name(shape), ...`` of the unconstrained sites."""
        return ", ".join(f"{s['name']}{tuple(s['shape'])}" for s in self.sites)

    def unpack(self, u: Tensor, nesting: int | None) -> tuple[dict[str, Tensor], Tensor]:
        r"""Constrained values of latents (S, D) and :math:`\log|\det\partial z/\partial u|` (S,).

        With ``nesting`` each value gets shape ``(S, 1, ..., *site shape)`` (its batch dims
        right-aligned under ``nesting`` plate dims, the particle dim left of them); with
        ``None``, ``u`` is one point (1, D) and values have the site shapes.
        """
        S, pos = u.shape[0], 0
        values, log_det = {}, u.new_zeros(S)
        for s in self.sites:
            if nesting is None:
                shape = s["shape"]
            else:
                shape = (S,) + (1,) * max(nesting - s["batch_dims"], 0) + s["shape"]
            raw = u[..., pos : pos + s["size"]].reshape(shape)
            value = s["transform"](raw)
            ladj = s["transform"].log_abs_det_jacobian(raw, value)
            # Elementwise transforms keep the event dims in their log-det: sum them first.
            ladj = sum_rightmost(ladj, ladj.dim() - value.dim() + s["event_dim"])
            log_det = log_det + sum_to_particles(ladj, S, nesting, u)
            values[s["name"]] = value
            pos += s["size"]
        return values, log_det

    def unpack_batch(self, u: Tensor) -> dict[str, Tensor]:
        """Constrained values for latents (N, D): ``name -> (N, *site shape)``."""
        N, pos, out = u.shape[0], 0, {}
        for s in self.sites:
            out[s["name"]] = s["transform"](u[:, pos : pos + s["size"]].reshape((N, *s["shape"])))
            pos += s["size"]
        return out


class UnconstrainedLogDensity:
    r""":math:`\log p(x, z(u)) + \log|\det\partial z/\partial u|` of latents (S, D) -> (S,).

    Batched over the S points by the first route that works for the model, then by that route
    from then on (``route``):

    1. ``"plate"``: one run of the model inside a particle plate (a model written with
       batching in mind);
    2. ``"vmap"``: ``torch.func.vmap`` over the points, for a model written for one point
       (``X @ w`` inside a data plate, say), which needs nothing from the user. Its first use
       is checked against one unbatched evaluation (under Pyro's validation), and Pyro's
       validation is off inside (its checks are data-dependent branches vmap cannot take);
    3. ``"loop"``: one model run per point, the last resort, with a warning (when ``warn``)
       that says what prevented the other two.

    Differentiable in ``u`` on every route.

    Args:
        model: the Pyro model.
        layout: the :class:`LatentLayout` of its latent sites.
        nesting: its plate nesting.
        args, kwargs: its arguments.
        warn: warn when falling back to the loop.

    Example:
        >>> def model():
        ...     pyro.sample("s", dist.LogNormal(0.0, 1.0))
        >>> trace = init_trace(model, (), {})
        >>> density = UnconstrainedLogDensity(model, LatentLayout(trace.iter_stochastic_nodes()), 0)
        >>> density(torch.zeros(4, 1)).shape, density.route
        (torch.Size([4]), 'plate')
    """

    def __init__(
        self,
        model: Callable,
        layout: LatentLayout,
        nesting: int,
        args: tuple = (),
        kwargs: dict | None = None,
        warn: bool = False,
    ) -> None:
        self.model, self.layout, self.nesting = model, layout, nesting
        self.args, self.kwargs, self.warn = tuple(args), dict(kwargs or {}), warn
        self.route = "plate"
        self.vmap_checked = False
        #: Why each route that failed did (an exception per route name).
        self.failures: dict[str, BaseException] = {}

    @property
    def vectorize(self) -> bool:
        """Whether the points are evaluated batched (route ``"plate"`` or ``"vmap"``)."""
        return self.route != "loop"

    def evaluate(
        self, u: Tensor, nesting: int | None, args: tuple | None = None, kwargs: dict | None = None
    ) -> Tensor:
        """The log-density of latents ``u`` (S, D) in a particle plate (``nesting``), or of one
        point (1, D) without a plate (``nesting=None``); ``args``/``kwargs`` override the
        model's arguments given at construction."""
        args = self.args if args is None else args
        kwargs = self.kwargs if kwargs is None else kwargs
        values, log_det = self.layout.unpack(u, nesting)
        trace = particle_trace(
            poutine.condition(self.model, values), u.shape[0], nesting, args, kwargs
        )
        return log_det + trace_log_joint(trace, u.shape[0], nesting, u)

    def __call__(self, u: Tensor, args: tuple | None = None, kwargs: dict | None = None) -> Tensor:
        if u.shape[0] == 0:
            return u.new_zeros(0)

        def one(v: Tensor) -> Tensor:  # (1, D) -> (1,)
            return self.evaluate(v, None, args, kwargs)

        reference = None  # one unbatched, validated run of the first point, once needed
        if self.route == "plate":
            try:
                return self.evaluate(u, self.nesting, args, kwargs)
            except VECTORIZE_ERRORS as error:
                reference = self._check_batching_failed(
                    error, u, one, None, lambda v: self.evaluate(v, self.nesting, args, kwargs)
                )
                self.failures["plate"] = error
                self.route = "vmap"
        if self.route == "vmap":
            # One unbatched, validated point first: a genuine error in the model raises here.
            if reference is None and not self.vmap_checked:
                reference = one(u[:1])
            try:
                out = vmap_points(one, u)
                if reference is not None and not self.vmap_checked:
                    check_same(out[:1], reference, "torch.func.vmap")
                    self.vmap_checked = True
                return out
            except VECTORIZE_ERRORS as error:
                reference = self._check_batching_failed(
                    error, u, one, reference, lambda v: vmap_points(one, v)
                )
                self.failures["vmap"] = error
                self.route = "loop"
                if self.warn:
                    warnings.warn(
                        "the model cannot be evaluated batched over draws, so it runs once per "
                        f"draw (slow): in a particle plate it failed with "
                        f"{describe(self.failures['plate'])}; under torch.func.vmap with "
                        f"{describe(error)}",
                        stacklevel=2,
                    )
        # Errors here are not a batching problem (e.g. invalid parameter values): raise.
        rows = tqdm(u, desc="model, one draw at a time", delay=1.0, leave=False, disable=None)
        return torch.cat([one(row[None]) for row in rows])

    @staticmethod
    def _check_batching_failed(
        error: BaseException,
        u: Tensor,
        one: Callable[[Tensor], Tensor],
        reference: Tensor | None,
        route: Callable[[Tensor], Tensor],
    ) -> Tensor:
        """Re-raise ``error`` unless it is the route's failure to batch, not the values': the
        route is tried again on copies of the first point, as many as ``u`` has, once that
        point evaluates unbatched (else its error is raised). A model failing at wild values
        (an ODE solve that gives up, a scale out of its support) keeps its batched route;
        switching it to the per-draw loop made every later evaluation hundreds of times
        slower. Returns the first point's unbatched log-density."""
        if reference is None:
            reference = one(u[:1])
        try:
            with torch.no_grad():
                route(u[:1].detach().expand_as(u))
        except VECTORIZE_ERRORS:
            return reference
        raise error


def vmap_draws(fn: Callable[[Tensor], Any], xs: Tensor) -> Any:
    """``torch.func.vmap(fn)(xs)`` for a function that runs a Pyro model or guide: each draw
    its own randomness, and Pyro's validation off inside (its checks branch on values, which
    vmap cannot follow; callers validate one unbatched run instead)."""
    with pyro.validation_enabled(False):
        return torch.func.vmap(fn, randomness="different")(xs)


def vmap_points(fn: Callable[[Tensor], Tensor], u: Tensor) -> Tensor:
    """``fn`` of one point (1, D) -> (1,), mapped over the rows of ``u`` (S, D) -> (S,)
    (:func:`vmap_draws`)."""
    return vmap_draws(lambda row: fn(row[None])[0], u)


def check_same(batched: Tensor, reference: Tensor, how: str) -> None:
    """Raise ValueError unless a batched evaluation agrees with the unbatched one (to the
    square root of the dtype's resolution): a model that batches without error but not
    correctly is not batched."""
    tol = torch.finfo(reference.dtype).eps ** 0.5 if reference.is_floating_point() else 0.0
    if not torch.allclose(batched, reference, rtol=tol, atol=tol, equal_nan=True):
        raise ValueError(
            f"{how} gives {batched.tolist()} where one unbatched run gives {reference.tolist()}"
        )


def describe(error: BaseException) -> str:
    """An exception as ``Type: first line of its message`` (for warnings)."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first[:200]}"
