r"""Importance sampling with flow (or guide) proposals and PSIS diagnostics.

For draws :math:`x_s \sim q` and an unnormalised target :math:`\tilde p = Z p`,

.. math:: \log w_s = \log\tilde p(x_s) - \log q(x_s), \qquad
   \hat Z = \frac1S \sum_s w_s, \qquad
   \hat{\mathbb{E}}_p[f] = \sum_s \bar w_s f(x_s),\quad \bar w_s = w_s / \textstyle\sum_t w_t.

Reliability is judged by the Pareto :math:`\hat k` of the weights' upper tail (PSIS; Vehtari
et al., JMLR 2024): below :math:`\min(1 - 1/\log_{10}S, 0.7)` the estimates are usable.
A light-tailed proposal can be made safe with a *defensive mixture* (Hesterberg,
Technometrics 1995): :math:`q_\alpha = (1-\alpha)\,q + \alpha\,r` with :math:`r` a wider
Student-t fitted to draws of :math:`q`; a fixed share :math:`\alpha S` of the draws comes
from :math:`r` and every point is weighed by :math:`q_\alpha` (the deterministic-mixture
estimator, Owen & Zhou, JASA 2000, https://doi.org/10.1080/01621459.2000.10473909, unbiased for :math:`Z`).

Everything runs without gradients, vectorised over samples in chunks of ``chunk_size``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import pyro.distributions as dist
import torch
from pyro.infer.autoguide import AutoContinuous
from torch import Tensor
from torch.distributions import Distribution

from ...checks import check_count
from ...core import Flow
from ..fitting.distributed import together
from ..model_density import check_model_arguments, nan_arguments, plate_nesting
from .guide_weights import guide_log_weights
from .importance_result import ImportanceResult, finish
from .sharded import finish_sharded, sharding
from .targets_and_proposals import VectorProposal, call_target, resolve_target

__all__ = ["ImportanceResult", "importance", "seeded"]


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | None = None):  # noqa: ANN201
    """Run the block with torch's RNG seeded by ``seed``, restoring the global state after."""
    if seed is None:
        yield
        return
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _wide_component(proposal: VectorProposal, df: float, scale: float, pilot: int) -> Distribution:
    """A multivariate Student-t at the proposal's mean with ``scale`` times its covariance factor."""
    x, _ = proposal.sample_and_log_prob(pilot)
    x = x.double()
    x = x[torch.isfinite(x).all(1)]
    cov = torch.cov(x.T).reshape(proposal.dim, proposal.dim)
    jitter = 1e-9 * cov.diagonal().mean().clamp_min(1e-12)
    L = torch.linalg.cholesky(
        cov + jitter * torch.eye(proposal.dim, dtype=cov.dtype, device=cov.device)
    )
    return dist.MultivariateStudentT(
        torch.tensor(df, dtype=x.dtype, device=x.device), x.mean(0), scale * L
    )


def _is_guide(proposal: Any) -> bool:
    return callable(proposal) and not isinstance(proposal, (Flow, Distribution, AutoContinuous))


@torch.no_grad()
def importance(
    target: Callable,
    proposal: Any,
    num_samples: int,
    *,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    target_kind: str = "auto",
    chunk_size: int = 8192,
    defensive: float = 0.0,
    defensive_df: float = 3.0,
    defensive_scale: float = 2.0,
    seed: int | None = None,
    warn: bool = True,
    distributed: bool | str = "auto",
) -> ImportanceResult:
    r"""Importance sampling of ``target`` with ``proposal``: weights, PSIS k-hat, ESS, :math:`\log Z`.

    Args:
        target: a log-density callable ``(S, D) -> (S,)`` (unnormalised), or a Pyro model
            (run with ``model_args``/``model_kwargs``; its latent sites are weighed in the
            unconstrained space, see :mod:`pyroflows.infer.sampling.targets_and_proposals`).
        proposal: a :class:`~pyroflows.Flow`, a :class:`~pyroflows.FlowDistribution`, a torch
            distribution over (D,) vectors, an ``AutoContinuous`` guide (``AutoFlow``, ...), or
            any other Pyro guide of the model (then weighed by tracing guide and model,
            vectorised over a particle plate, in the constrained space).
        num_samples: number of draws :math:`S \ge 1`.
        model_args: positional arguments of the model (and guide).
        model_kwargs: keyword arguments of the model (and guide).
        target_kind: ``"auto"`` (a model if it has arguments here, the proposal is a guide, or
            it records sample sites when called without arguments), ``"model"`` or
            ``"log_density"``.
        chunk_size: draws evaluated at once (bounds the memory).
        defensive: mixture weight :math:`\alpha \in [0, 1)` of the wide Student-t component.
        defensive_df: its degrees of freedom.
        defensive_scale: its scale relative to the proposal's covariance factor.
        seed: seed for the draws (the global RNG state is restored afterwards).
        warn: warn when k-hat exceeds the threshold or targets were NaN.
        distributed: ``"auto"`` (default): inside a ``torch.distributed`` process group of
            several processes, every rank draws and keeps its share of the ``num_samples``
            draws and the diagnostics, :math:`\log\hat Z` and expectations are the exact
            global ones, on every rank (:mod:`pyroflows.infer.sampling.sharded`; every rank
            calls with the same arguments); ``True``: the same, but an uninitialised
            ``torch.distributed`` is an error; ``False``: one independent run per process.

    Returns:
        An :class:`ImportanceResult` (a
        :class:`~pyroflows.infer.sampling.sharded.ShardedImportanceResult` when sharded).

    Raises:
        ValueError: ``num_samples < 1``, a model/proposal dimension mismatch, a target that
        does not return one value per draw, or all weights zero.

    Example:
        >>> flow = pyroflows.flows.build("maf", 2)
        >>> log_p = lambda x: -0.5 * (x**2).sum(-1)        # Z = 2 pi
        >>> r = importance(log_p, flow, 10_000, seed=0)     # doctest: +SKIP
        >>> r.log_evidence, r.log_evidence_se, r.khat        # doctest: +SKIP
    """
    num_samples = check_count("num_samples", num_samples)
    chunk_size = check_count("chunk_size", chunk_size)
    if not 0.0 <= defensive < 1.0:
        raise ValueError(f"defensive must be a mixture weight in [0, 1), got {defensive!r}")
    model_args, model_kwargs = check_model_arguments(model_args, model_kwargs)
    if _is_guide(proposal):
        if defensive:
            raise ValueError(
                "a defensive mixture needs a vector proposal (Flow, distribution or "
                "AutoContinuous guide), not a generic guide"
            )
        if target_kind == "log_density":
            raise TypeError("a guide proposal needs a Pyro model as the target")
        return _guide_importance(
            target, proposal, num_samples, model_args, model_kwargs, chunk_size, seed, warn,
            distributed,
        )  # fmt: skip
    q = VectorProposal(proposal, model_args, model_kwargs)
    log_density, model_target = resolve_target(target, q, model_args, model_kwargs, target_kind)
    probe = q.probe()
    device, dtype = probe.device, probe.dtype
    group, first, stop, seed, own_seed = sharding(distributed, device, num_samples, seed)
    with together(group, "importance sampling"), seeded(seed, device):
        n_wide = int(round(defensive * num_samples))
        wide = (
            _wide_component(q, defensive_df, defensive_scale, max(2000, 20 * q.dim))
            if n_wide
            else None
        )
        xs, lps, lqs = [], [], []
        # This process's share [first, stop) of the q draws [0, S - n_wide) and then the
        # wide ones: all of them in one process.
        shares = (("q", 0, num_samples - n_wide), ("r", num_samples - n_wide, num_samples))
        own = seeded(own_seed, device) if group is not None else contextlib.nullcontext()
        with own:
            for source, low, high in shares:
                total = max(0, min(high, stop) - max(low, first))
                for start in range(0, total, chunk_size):
                    n = min(chunk_size, total - start)
                    if source == "q":
                        x, log_q = q.sample_and_log_prob(n)
                    else:
                        x = wide.sample((n,)).to(device=device, dtype=dtype)
                        log_q = q.log_prob(x)
                    if wide is not None:
                        log_r = wide.log_prob(x.to(wide.loc.dtype)).to(log_q.dtype)
                        log_q = torch.logaddexp(
                            log_q + math.log1p(-defensive), log_r + math.log(defensive)
                        )
                    xs.append(x)
                    lps.append(call_target(log_density, x))
                    lqs.append(log_q)
    x, log_p, log_q = torch.cat(xs), torch.cat(lps), torch.cat(lqs)
    sites = None if model_target is None else model_target.unpack(x)
    hint = nan_hint(model_args, model_kwargs)
    if group is None:
        result = finish(log_p - log_q, x, sites, log_p, log_q, warn, defensive, hint=hint)
    else:
        result = finish_sharded(
            log_p - log_q, x, sites, log_p, log_q, warn, defensive, group, num_samples, hint
        )
    if model_target is not None:
        result.info["sites"] = model_target.describe()
    return result


def _guide_importance(
    model: Callable,
    guide: Callable,
    num_samples: int,
    args: tuple,
    kwargs: dict,
    chunk_size: int,
    seed: int | None,
    warn: bool,
    distributed: bool | str,
) -> ImportanceResult:
    nesting = plate_nesting(model, *args, **kwargs)
    chunks: list[tuple[dict[str, Tensor], Tensor]] = []
    group, first, stop, _, own_seed = sharding(distributed, None, num_samples, seed)
    with together(group, "importance sampling"), seeded(own_seed):
        for start in range(first, stop, chunk_size):
            n = min(chunk_size, stop - start)
            chunks.append(
                guide_log_weights(model, guide, n, *args, max_plate_nesting=nesting, **kwargs)
            )
    sites = {k: torch.cat([c[0][k] for c in chunks]) for k in chunks[0][0]}
    log_w = torch.cat([c[1] for c in chunks])
    if group is not None:
        return finish_sharded(
            log_w, None, sites, None, None, warn, 0.0, group, num_samples, nan_hint(args, kwargs)
        )
    return finish(log_w, None, sites, None, None, warn, stacklevel=5, hint=nan_hint(args, kwargs))


def nan_hint(args: tuple, kwargs: dict) -> str:
    """What an all-NaN target may come from, for the error message."""
    bad = nan_arguments(args, kwargs)
    if bad:
        return f"{', '.join(bad)} hold NaN values (missing data needs obs_mask)"
    return "NaN in the data or parameters the target uses?"
