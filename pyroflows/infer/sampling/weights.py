r"""Posterior samples with importance log-weights from any guide.

:func:`guide_log_weights` draws ``num_samples`` joint samples from a guide (vectorised over a
particle plate, with a loop fallback for models that do not vectorise) and returns, for each,
the latent values and :math:`\log w = \log p(x, z) - \log q(z)`: the per-sample log-weights
that PSIS diagnostics, importance resampling and ArviZ's ``sample_stats`` use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample
from torch import Tensor

__all__ = ["guide_log_weights", "init_trace", "plate_nesting", "trace_plate_nesting"]


def init_trace(model: Callable, args: tuple, kwargs: dict) -> Any:
    """One trace of the model with latent values from an init strategy (so that even sites
    that cannot be sampled, such as ``ImproperUniform``, get a value)."""
    from pyro.infer.autoguide.initialization import InitMessenger, init_to_median

    from ..guides.guide_support import safe_init

    with poutine.block():
        return poutine.trace(InitMessenger(safe_init(init_to_median))(model)).get_trace(*args, **kwargs)


def plate_nesting(model: Callable, *args: Any, **kwargs: Any) -> int:
    """Number of batch dims the model uses (its plates and its sites' batch shapes)."""
    return trace_plate_nesting(init_trace(model, args, kwargs))


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


def _per_particle(log_prob: Tensor, dim: int, num: int) -> Tensor:
    """Sum over every dim except the particle dim ``dim`` (negative); shape (num,)."""
    if not isinstance(log_prob, Tensor) or log_prob.dim() < -dim:
        return torch.as_tensor(log_prob).sum().expand(num) if isinstance(log_prob, Tensor) else torch.tensor(float(log_prob)).expand(num)
    moved = log_prob.movedim(dim, 0)
    return moved.reshape(moved.shape[0], -1).sum(1).expand(num)


def _traces(model: Callable, guide: Callable, num: int, dim: int | None, args: tuple, kwargs: dict):  # noqa: ANN202
    with poutine.block():
        if dim is None:
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        else:
            with pyro.plate("_pyroflows_samples", num, dim=dim):
                guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
                model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    return guide_trace, model_trace


def _latent_names(guide_trace: Any, model_trace: Any) -> list[str]:
    return [name for name, site in model_trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
            and name in guide_trace.nodes]


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
    dim = -(max_plate_nesting + 1)
    if vectorize:
        try:
            return _weights_vectorized(model, guide, num_samples, dim, args, kwargs)
        except (ValueError, RuntimeError, IndexError, AssertionError):
            pass
    samples: dict[str, list[Tensor]] = {}
    logw = []
    for _ in range(num_samples):
        guide_trace, model_trace = _traces(model, guide, 1, None, args, kwargs)
        logw.append(model_trace.log_prob_sum() - guide_trace.log_prob_sum())
        for name in _latent_names(guide_trace, model_trace) + _deterministic_names(model_trace):
            samples.setdefault(name, []).append(model_trace.nodes[name]["value"])
    return {k: torch.stack(v) for k, v in samples.items()}, torch.stack(logw)


def _deterministic_names(model_trace: Any) -> list[str]:
    return [name for name, site in model_trace.nodes.items()
            if site["type"] == "sample" and site["infer"].get("_deterministic")]


def _weights_vectorized(model: Callable, guide: Callable, num: int, dim: int, args: tuple, kwargs: dict):  # noqa: ANN202
    guide_trace, model_trace = _traces(model, guide, num, dim, args, kwargs)
    for trace in (guide_trace, model_trace):
        trace.compute_log_prob(site_filter=lambda n, s: not site_is_subsample(s))
    logw = 0.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] == "sample" and not site_is_subsample(site):
                lp = site["log_prob"]
                if isinstance(lp, Tensor) and lp.dim() > -dim:
                    raise ValueError("a site has more batch dims than the plates declare")
                logw = logw + sign * _per_particle(lp, dim, num)
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
    value = value.reshape(value.shape[pos:]) if all(n == 1 for n in value.shape[:pos]) else value.movedim(pos, 0)
    batch_right = value.dim() - 1 - event_dim
    while batch_right > 0 and value.dim() > 1 and value.shape[1] == 1:
        value = value.squeeze(1)
        batch_right -= 1
    return value
