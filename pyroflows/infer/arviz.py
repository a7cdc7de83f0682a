"""Convert a fitted guide's posterior to an ``arviz.InferenceData``.

``to_inference_data(guide, model, num_samples, *args, **kwargs)`` draws samples from the guide,
weighs each against the model (``log p(x, z) - log q(z)``), and returns an ``InferenceData``
with the posterior in the model's constrained space (one chain), the per-sample log weights and
the PSIS-smoothed normalised log weights in ``sample_stats``, the PSIS k-hat in the attributes,
and the observed data, so ``az.summary`` and ``az.plot_posterior`` work directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .model_density import init_trace
from .sampling.guide_weights import guide_log_weights
from .sampling.psis import psis

__all__ = ["to_inference_data"]


def _observed(model: Callable, args: tuple, kwargs: dict) -> dict[str, np.ndarray]:
    trace = init_trace(model, args, kwargs)
    return {
        name: site["value"].detach().cpu().numpy()
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
        and site["is_observed"]
        and isinstance(site["value"], torch.Tensor)
    }


def to_inference_data(
    guide: Callable,
    model: Callable,
    num_samples: int = 1000,
    *args: Any,
    max_plate_nesting: int | None = None,
    observed: bool = True,
    **kwargs: Any,
) -> Any:
    """An ``arviz.InferenceData`` of ``num_samples`` draws from ``guide``.

    Args:
        guide: a fitted guide (any Pyro guide; pyroflows' guides included).
        model: its model.
        num_samples: number of posterior draws (one chain).
        *args: the model's arguments.
        max_plate_nesting: the model's plate nesting (found by tracing when ``None``).
        observed: also store the model's observed sites as ``observed_data``.
        **kwargs: the model's keyword arguments.

    Returns:
        ``arviz.InferenceData`` with groups ``posterior`` (every latent site and
        ``pyro.deterministic`` site, constrained, shapes ``(1, num_samples, *site shape)``),
        ``sample_stats`` (``log_weight``: :math:`\\log p(x,z) - \\log q(z)`;
        ``psis_log_weight``: PSIS-smoothed, normalised) and, optionally, ``observed_data``.
        ``attrs`` hold ``psis_khat`` (k-hat below 0.7 means the guide is a reliable
        importance proposal) and ``elbo`` (the mean log weight).

    Example:
        >>> idata = to_inference_data(guide, model, 2000, data)  # doctest: +SKIP
        >>> az.summary(idata)                                      # doctest: +SKIP
    """
    import arviz as az

    if not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples must be an integer >= 2, got {num_samples!r}")
    samples, log_w = guide_log_weights(
        model, guide, num_samples, *args, max_plate_nesting=max_plate_nesting, **kwargs
    )
    posterior = {
        name: value.detach().cpu().double().numpy()[None] for name, value in samples.items()
    }
    log_w_np = log_w.detach().cpu().double().numpy()
    # pyroflows' PSIS: NaN weights count as zero, and equal weights give k-hat = -inf.
    smoothed, khat = psis(log_w.detach().double())
    smoothed = smoothed.cpu().numpy()
    sample_stats = {"log_weight": log_w_np[None], "psis_log_weight": smoothed[None]}
    attrs = {
        "psis_khat": float(khat),
        "elbo": float(np.mean(log_w_np)),
        "inference_library": "pyro + pyroflows",
        "guide": type(guide).__name__,
    }
    groups: dict[str, Any] = {"posterior": posterior, "sample_stats": sample_stats}
    if observed:
        obs = _observed(model, args, kwargs)
        if obs:
            groups["observed_data"] = obs
    idata = az.from_dict(**groups, attrs=attrs)
    return idata
