r"""Posterior samples with importance log-weights from any guide.

:func:`guide_log_weights` draws ``num_samples`` joint samples from a guide (vectorised over a
particle plate, with a loop fallback for models that do not vectorise) and returns, for each,
the latent values and :math:`\log w = \log p(x, z) - \log q(z)`: the per-sample log-weights
that PSIS diagnostics, importance resampling and ArviZ's ``sample_stats`` use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from ..model_density import VECTORIZE_ERRORS, particle_trace, plate_nesting, trace_log_joint

__all__ = ["guide_log_weights"]


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
    if vectorize:
        try:
            return _weights_vectorized(model, guide, num_samples, max_plate_nesting, args, kwargs)
        except VECTORIZE_ERRORS:
            pass
    samples: dict[str, list[Tensor]] = {}
    logw = []
    for _ in range(num_samples):
        guide_trace, model_trace = _traces(model, guide, 1, None, args, kwargs)
        logw.append(_log_weights(guide_trace, model_trace, 1, None)[0])
        for name in _latent_names(guide_trace, model_trace) + _deterministic_names(model_trace):
            samples.setdefault(name, []).append(model_trace.nodes[name]["value"])
    return {k: torch.stack(v) for k, v in samples.items()}, torch.stack(logw)


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
