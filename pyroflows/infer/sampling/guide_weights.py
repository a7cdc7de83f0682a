r"""Posterior samples with importance log-weights, and posterior predictive draws, from any guide.

:func:`guide_log_weights` draws ``num_samples`` joint samples from a guide and returns, for
each, the latent values and :math:`\log w = \log p(x, z) - \log q(z)`: the per-sample
log-weights that PSIS diagnostics, importance resampling and ArviZ's ``sample_stats`` use.
:func:`posterior_predictive` returns the model's sample sites (observed ones resampled where
the model is called without their data), as ``pyro.infer.Predictive`` does.

Both draw all samples at once, by the first route that works for the model: a particle plate
around guide and model (a model written for batching), ``torch.func.vmap`` over the draws (a
model written for one draw, e.g. ``X @ w`` inside a data plate: nothing is asked of the user;
checked against one unbatched replay of its first draw), and only then a loop over draws, with
a warning that says what prevented batching.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from tqdm.auto import tqdm

from ...checks import check_count
from ..model_density import (
    VECTORIZE_ERRORS,
    check_same,
    describe,
    init_trace,
    particle_trace,
    plate_nesting,
    trace_log_joint,
    trace_plate_nesting,
    vmap_draws,
)

__all__ = ["guide_log_weights", "posterior_predictive"]


def _traces(
    model: Callable, guide: Callable, num: int, nesting: int | None, args: tuple, kwargs: dict
) -> tuple[poutine.Trace, poutine.Trace]:
    """The guide's trace and the model's replayed on it, in a particle plate (``nesting``)."""
    guide_trace = particle_trace(guide, num, nesting, args, kwargs)
    model_trace = particle_trace(
        poutine.replay(model, trace=guide_trace), num, nesting, args, kwargs
    )
    return guide_trace, model_trace


def _latent_names(guide_trace: Any, model_trace: Any) -> list[str]:
    return [
        name
        for name, site in model_trace.nodes.items()
        if site["type"] == "sample"
        and not site["is_observed"]
        and not site_is_subsample(site)
        and name in guide_trace.nodes
    ]


@torch.no_grad()
def guide_log_weights(
    model: Callable,
    guide: Callable,
    num_samples: int,
    *args: Any,
    max_plate_nesting: int | None = None,
    vectorize: bool = True,
    **kwargs: Any,
) -> tuple[dict[str, Tensor], Tensor]:
    r"""Draw ``num_samples`` from ``guide`` and weigh them against ``model``.

    Args:
        model: the Pyro model.
        guide: a guide for it (any Pyro guide, including Pyro's and pyroflows' autoguides).
        num_samples: number of joint samples.
        *args: the model's arguments.
        max_plate_nesting: the model's plate nesting (found by tracing when ``None``).
        vectorize: draw all samples at once in a particle plate; falls back to a loop when
            the model's shapes do not allow it.
        **kwargs: the model's keyword arguments.

    Returns:
        ``(samples, log_weights)``: ``samples[name]`` has shape ``(num_samples, *site shape)``
        (constrained values of every latent site the guide samples, plus the model's
        ``pyro.deterministic`` sites), ``log_weights`` shape ``(num_samples,)`` with
        :math:`\log p(x, z_s) - \log q(z_s)`.
    """
    if max_plate_nesting is None:
        max_plate_nesting = plate_nesting(model, *args, **kwargs)

    def one(guide_trace: poutine.Trace, model_trace: poutine.Trace) -> tuple[Tensor, dict]:
        names = _latent_names(guide_trace, model_trace) + _deterministic_names(model_trace)
        logw = _log_weights(guide_trace, model_trace, 1, None)[0]
        return logw, {name: model_trace.nodes[name]["value"] for name in names}

    def plate() -> tuple[dict[str, Tensor], Tensor]:
        return _weights_vectorized(model, guide, num_samples, max_plate_nesting, args, kwargs)

    logw, samples = _draw_batched(model, guide, num_samples, args, kwargs, one, plate, vectorize)
    return samples, logw


@torch.no_grad()
def posterior_predictive(
    model: Callable,
    guide: Callable,
    num_samples: int,
    *args: Any,
    return_sites: list[str] | None = None,
    max_plate_nesting: int | None = None,
    **kwargs: Any,
) -> dict[str, Tensor]:
    r"""Draws of the model's sites under the guide's posterior, batched (as
    ``pyro.infer.Predictive(model, guide=guide, num_samples=n)(*args, **kwargs)``, which runs
    the model once per draw for a model not written for a particle plate).

    Args:
        model: the Pyro model; call it without an observed site's data (``y=None``) to draw
            that site from the posterior predictive.
        guide: a fitted guide.
        num_samples: number of draws.
        *args: the model's positional arguments.
        **kwargs: the model's keyword arguments.
        return_sites: the sites to return (default: every non-observed sample site and every
            ``pyro.deterministic`` site).
        max_plate_nesting: the model's plate nesting (found by tracing when ``None``).

    Returns:
        ``{name: (num_samples, *site shape)}``.

    Example:
        >>> draws = posterior_predictive(model, guide, 1000, X)  # doctest: +SKIP
        >>> draws["y"].shape                                      # doctest: +SKIP
        torch.Size([1000, 500])
    """
    num_samples = check_count("num_samples", num_samples)
    trace = init_trace(model, args, kwargs)
    if max_plate_nesting is None:
        max_plate_nesting = trace_plate_nesting(trace)
    if return_sites is not None:
        missing = [name for name in return_sites if name not in trace.nodes]
        if missing:
            raise ValueError(
                f"return_sites {missing} are not sites of the model (its sites: "
                f"{[n for n, s in trace.nodes.items() if s['type'] == 'sample']})"
            )

    def names(model_trace: poutine.Trace) -> list[str]:
        if return_sites is not None:
            return list(return_sites)
        return [
            name
            for name, site in model_trace.nodes.items()
            if site["type"] == "sample"
            and not site_is_subsample(site)
            and (not site["is_observed"] or site["infer"].get("_deterministic"))
        ]

    def one(guide_trace: poutine.Trace, model_trace: poutine.Trace) -> tuple[Tensor, dict]:
        values = {name: model_trace.nodes[name]["value"] for name in names(model_trace)}
        return _log_weights(guide_trace, model_trace, 1, None)[0], values

    def plate() -> tuple[dict[str, Tensor], Tensor]:
        dim = -(max_plate_nesting + 1)
        guide_trace, model_trace = _traces(
            model, guide, num_samples, max_plate_nesting, args, kwargs
        )
        out = {}
        for name in names(model_trace):
            site = model_trace.nodes[name]
            event_dim = site["fn"].event_dim if hasattr(site["fn"], "event_dim") else 0
            out[name] = _squeeze_particles(site["value"], dim, event_dim, num_samples)
        return out, None

    return _draw_batched(model, guide, num_samples, args, kwargs, one, plate)[1]


#: One draw's ``(log weight, values)`` from a guide trace and the model trace replayed on it.
DrawFn = Callable[[poutine.Trace, poutine.Trace], tuple[Tensor, dict[str, Tensor]]]


def _draw_batched(
    model: Callable,
    guide: Callable,
    num: int,
    args: tuple,
    kwargs: dict,
    one: DrawFn,
    plate: Callable[[], tuple[dict[str, Tensor], Tensor | None]],
    batched: bool = True,
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """``num`` draws of ``one(guide trace, model trace)`` -> ``(log weight, values)``, stacked:
    by ``plate()`` (all draws in a particle plate) when it works, else under
    ``torch.func.vmap``, else one draw at a time with a warning; ``batched=False``: the loop."""

    def run(fn: Callable) -> poutine.Trace:  # one unbatched run, hidden from outer handlers
        return particle_trace(fn, 1, None, args, kwargs)

    failures = {}
    if batched:
        try:
            values, logw = plate()
            return logw, values
        except VECTORIZE_ERRORS as error:
            failures["in a particle plate"] = error
        try:
            return _draw_vmapped(run, model, guide, num, one)
        except VECTORIZE_ERRORS as error:
            failures["under torch.func.vmap"] = error
        warnings.warn(
            "the model cannot be run batched over draws, so it runs once per draw (slow): "
            + "; ".join(f"{how} it failed with {describe(e)}" for how, e in failures.items()),
            stacklevel=3,
        )
    logws, stacked = [], {}
    for _ in tqdm(
        range(num), desc="model, one draw at a time", delay=1.0, leave=False, disable=None
    ):
        logw, values = one(*_traces(model, guide, 1, None, args, kwargs))
        logws.append(logw)
        for name, value in values.items():
            stacked.setdefault(name, []).append(value)
    return torch.stack(logws), {k: torch.stack(v) for k, v in stacked.items()}


def _draw_vmapped(
    run: Callable[[Callable], poutine.Trace],
    model: Callable,
    guide: Callable,
    num: int,
    one: DrawFn,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The draws of :func:`_draw_batched` under ``torch.func.vmap`` (Pyro's validation off
    inside: its checks branch on values), then the first draw replayed unbatched and
    validated: a model that runs under vmap but batches wrongly raises ValueError.
    ``run(fn)``: one unbatched trace of ``fn``."""

    def draw(_: Tensor) -> tuple[Tensor, dict[str, Tensor], tuple[dict, dict]]:
        guide_trace = run(guide)
        model_trace = run(poutine.replay(model, trace=guide_trace))
        logw, values = one(guide_trace, model_trace)
        return logw, values, (_drawn(guide_trace), _drawn(model_trace))

    logw, values, drawn = vmap_draws(draw, torch.empty(num))
    guide_first, model_first = ({k: v[0] for k, v in d.items()} for d in drawn)
    # Replay (not condition) the guide, so its sites stay sampled ones for the model's replay.
    template = run(guide)
    for name, value in guide_first.items():
        template.nodes[name]["value"] = value
    guide_trace = run(poutine.replay(guide, trace=template))
    model_only = {k: v for k, v in model_first.items() if k not in guide_first}
    model_trace = run(poutine.replay(poutine.condition(model, model_only), trace=guide_trace))
    check_same(logw[:1], _log_weights(guide_trace, model_trace, 1, None), "torch.func.vmap")
    return logw, values


def _drawn(trace: poutine.Trace) -> dict[str, Tensor]:
    """The values of a trace's sampled (not observed, not subsample) sites."""
    return {
        name: site["value"]
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    }


def _deterministic_names(model_trace: Any) -> list[str]:
    return [
        name
        for name, site in model_trace.nodes.items()
        if site["type"] == "sample" and site["infer"].get("_deterministic")
    ]


def _log_weights(
    guide_trace: poutine.Trace, model_trace: poutine.Trace, num: int, nesting: int | None
) -> Tensor:
    r""":math:`\log p(x, z_s) - \log q(z_s)` per particle, (num,)."""
    like = next(
        site["value"]
        for site in guide_trace.nodes.values()
        if site["type"] == "sample" and isinstance(site["value"], Tensor)
    )
    like = like if like.is_floating_point() else torch.zeros((), device=like.device)
    return trace_log_joint(model_trace, num, nesting, like) - trace_log_joint(
        guide_trace, num, nesting, like
    )


def _weights_vectorized(
    model: Callable, guide: Callable, num: int, nesting: int, args: tuple, kwargs: dict
) -> tuple[dict[str, Tensor], Tensor]:
    dim = -(nesting + 1)
    guide_trace, model_trace = _traces(model, guide, num, nesting, args, kwargs)
    logw = _log_weights(guide_trace, model_trace, num, nesting)
    samples = {}
    for name in _latent_names(guide_trace, model_trace) + _deterministic_names(model_trace):
        site = model_trace.nodes[name]
        value = site["value"]
        event_dim = site["fn"].event_dim if hasattr(site["fn"], "event_dim") else 0
        samples[name] = _squeeze_particles(value, dim, event_dim, num)
    return samples, logw


def _squeeze_particles(value: Tensor, dim: int, event_dim: int, num: int) -> Tensor:
    """A site value drawn in a particle plate at ``dim`` -> (num, *site shape).

    The particle dim is where the plate puts it (``dim`` counted from the right of the batch
    dims); for values that lost their plate dims (a ``pyro.deterministic`` of a reduction, say)
    it is the leftmost dim of size ``num``; a value with neither does not depend on the
    particle and is repeated.
    """
    pos = value.dim() - event_dim + dim
    if not (0 <= pos < value.dim() and value.shape[pos] == num):
        pos = next((i for i, n in enumerate(value.shape) if n == num), None)
    if pos is None:
        return value.expand((num,) + value.shape)
    # Dims left of the particle dim and the size-1 plate dims right of it are dropped.
    value = (
        value.reshape(value.shape[pos:])
        if all(n == 1 for n in value.shape[:pos])
        else value.movedim(pos, 0)
    )
    batch_right = value.dim() - 1 - event_dim
    while batch_right > 0 and value.dim() > 1 and value.shape[1] == 1:
        value = value.squeeze(1)
        batch_right -= 1
    return value
