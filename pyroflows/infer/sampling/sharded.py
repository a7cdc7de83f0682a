r"""Importance sampling sharded over the ranks of a ``torch.distributed`` process group.

Each rank draws and weighs a contiguous share of the ``S`` draws and keeps them; only a few
numbers and each rank's ``tail_length(S) + 1`` largest log-weights cross the network, so the
global quantities are exactly those of one process holding all ``S`` weights (up to the
order of floating-point additions), on every rank:

* :math:`\log\hat Z` and its standard error from the global maximum and the global sums of
  :math:`w` and :math:`(w - \bar w)^2` (two passes, as :func:`~.psis.log_evidence`);
* PSIS: the global largest log-weights are gathered and :func:`~.psis.smooth_tail` fits the
  Pareto tail on every rank identically; each rank replaces its own tail members (ties are
  ordered by value, rank and position) and normalises by the global sum;
* ESS and self-normalised expectations (:meth:`ShardedImportanceResult.expectation`) from
  all-reduced sums.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from ..fitting.distributed import Group, process_group, together
from .importance_result import ImportanceResult, all_nan_error, warn_about
from .psis import NO_WEIGHT, clean_log_weights, khat_threshold, smooth_tail, tail_length

__all__ = ["ShardedImportanceResult", "finish_sharded", "sharding"]

_GOLDEN = 0x9E3779B97F4A7C15  # decorrelates the ranks' seeds


def sharding(
    distributed: bool | str, device: torch.device | None, num_samples: int, seed: int | None
) -> tuple[Group | None, int, int, int | None, int | None]:
    """``(group, start, stop, seed, rank_seed)``: the group (``None`` for one process), this
    rank's contiguous share ``[start, stop)`` of the ``num_samples`` draws, the seed common to
    all ranks (rank 0's; a fresh one from rank 0's torch RNG for ``None``) and this rank's.

    Raises:
        ValueError: the ranks passed different ``num_samples``, or fewer than one per rank.
    """
    if device is None:  # a generic guide: the collectives' device follows the backend
        nccl = dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
    group = process_group(distributed, device)
    if group is None:
        return None, 0, num_samples, seed, seed
    counts = torch.tensor([num_samples, -num_samples], dtype=torch.float64, device=device)
    dist.all_reduce(counts, op=dist.ReduceOp.MAX)
    if counts[0] != -counts[1]:
        raise ValueError(
            f"the ranks passed different num_samples ({int(-counts[1])} to {int(counts[0])}): "
            "in sharded importance sampling every rank passes the same (global) num_samples"
        )
    if num_samples < group.world:
        raise ValueError(
            f"num_samples={num_samples} is fewer than the {group.world} processes of the group"
        )
    if seed is None:
        seed = int(torch.randint(0, 2**62, ()))
    seed = group.broadcast_seed(seed)
    base, extra = divmod(num_samples, group.world)
    start = group.rank * base + min(group.rank, extra)
    stop = start + base + int(group.rank < extra)
    return group, start, stop, seed, (seed + group.rank * _GOLDEN) % 2**63


@dataclass(repr=False)
class ShardedImportanceResult(ImportanceResult):
    r"""An :class:`ImportanceResult` whose draws are spread over the ranks of a process group.

    The tensors (``log_weights``, ``samples``, ``site_samples``, ``log_target``,
    ``log_proposal``) hold this rank's draws only; ``smoothed_log_weights`` and
    :attr:`normalized_weights` are this rank's part of the *globally* normalised weights
    (they sum to one over all ranks). ``khat``, :attr:`ess`, :attr:`ess_raw`,
    :attr:`log_evidence`, :attr:`log_evidence_se`, :attr:`num_samples` and ``num_nan`` are
    global and identical on every rank; :meth:`expectation` is a collective (every rank calls
    it, with the same function) that returns the global estimate on every rank.
    """

    group: Any = None
    total: int = 0
    summary: dict[str, float] = field(default_factory=dict)

    @property
    def num_samples(self) -> int:
        """The number of draws over all ranks (this rank holds ``len(log_weights)``)."""
        return self.total

    @property
    def normalized_weights(self) -> Tensor:
        """This rank's part of the globally self-normalised raw weights."""
        return (self.log_weights.double() - self.summary["log_norm"]).exp()

    @property
    def ess(self) -> float:
        return self.summary["ess"]

    @property
    def ess_raw(self) -> float:
        return self.summary["ess_raw"]

    @property
    def log_evidence(self) -> float:
        return self.summary["log_evidence"]

    @property
    def log_evidence_se(self) -> float:
        return self.summary["log_evidence_se"]

    def expectation(
        self, f: Callable[[Any], Tensor] | Tensor, smoothed: bool = True
    ) -> tuple[Tensor, Tensor]:
        """The global self-normalised estimate and its MCSE, on every rank (a collective: every
        rank calls it with the same ``f``, evaluated on its own draws)."""
        with together(self.group, "importance sampling"):
            values = f(self.values) if callable(f) else f
            values = torch.as_tensor(values, device=self.log_weights.device)
            if values.shape[0] != self.log_weights.shape[0]:
                raise ValueError(
                    f"f returned {values.shape[0]} values along its first dimension for "
                    f"{self.log_weights.shape[0]} samples; it must return one value (or row) "
                    "per sample"
                )
        lw = self.smoothed_log_weights if smoothed else self.log_weights - self.summary["log_norm"]
        w = lw.double().exp().reshape((-1,) + (1,) * (values.dim() - 1))
        f_ = values.double()
        f_ = torch.where(w > 0, f_, torch.zeros_like(f_))
        sums = torch.cat([(w * f_).sum(0).reshape(-1), w.sum().reshape(1)]).to(self.group.device)
        dist.all_reduce(sums)
        estimate = (sums[:-1] / sums[-1]).reshape(values.shape[1:]).to(w.device)
        squares = ((w / sums[-1].to(w.device)) ** 2 * (f_ - estimate) ** 2).sum(0)
        squares = squares.to(self.group.device)
        dist.all_reduce(squares)
        dtype = values.dtype if values.is_floating_point() else torch.float64
        return estimate.to(dtype), squares.sqrt().to(w.device, dtype)

    def resample(self, n: int, smoothed: bool = True, generator: torch.Generator | None = None):  # noqa: ANN201
        raise NotImplementedError(
            "resample() of a sharded result: each rank holds only its own draws; resample them "
            "by normalized_weights or pareto_weights (global masses) or gather the draws first"
        )


def finish_sharded(
    log_w: Tensor,
    samples: Tensor | None,
    sites: dict | None,
    log_p: Tensor | None,
    log_q: Tensor | None,
    warn: bool,
    defensive: float,
    group: Group,
    total: int,
    hint: str,
) -> ShardedImportanceResult:
    """:func:`~.importance_result.finish` for this rank's share of ``total`` draws: the same
    global result on every rank (warnings on rank 0 only)."""
    log_w, num_nan = clean_log_weights(log_w)
    lw = log_w.detach().double().to(group.device)
    finite = torch.isfinite(lw)
    inf = torch.tensor(math.inf, dtype=torch.float64, device=lw.device)
    extremes = torch.stack(
        [torch.where(finite, lw, -inf).max(), -torch.where(finite, lw, inf).min()]
    )
    dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
    high, low = extremes[0].item(), -extremes[1].item()
    top = high if math.isfinite(high) else 0.0
    w = torch.exp(lw - top)
    count, nans, sum_w, sum_w2 = group.sum_floats(finite.sum(), num_nan, w.sum(), (w * w).sum())
    count, nans = int(count), int(nans)
    if nans == total:
        raise all_nan_error("importance", total, hint)
    if count == 0:
        raise ValueError(NO_WEIGHT)
    # PSIS on the global weights, as psis() does on all of them (finite ones only).
    eps = torch.finfo(log_w.dtype).eps if log_w.is_floating_point() else 2.0**-52
    x = lw - top
    if count == 1 or high - low <= 16 * eps * max(1.0, abs(high), abs(low)):
        khat = math.inf if count == 1 else -math.inf
        x = torch.where(finite, torch.zeros_like(x), x)
        shift = 0.0
    else:
        m = tail_length(count) + 1
        k = min(m, int(finite.sum()))
        local, where = torch.where(finite, x, -inf).topk(k)
        padded = torch.cat([local, inf.neg().expand(m - k)])
        gathered = [torch.empty_like(padded) for _ in range(group.world)]
        dist.all_gather(gathered, padded)
        values = torch.stack(gathered).cpu().numpy()  # (world, m), descending per rank
        ranks, positions = np.indices(values.shape)
        order = np.lexsort((positions.ravel(), ranks.ravel(), values.ravel()))[-m:]
        smoothed, khat = smooth_tail(values.ravel()[order])
        if np.isfinite(smoothed).all():
            mine = (ranks.ravel()[order] == group.rank) & (smoothed != values.ravel()[order])
            index = where[positions.ravel()[order][mine]]
            x = x.clone()
            x[index] = torch.as_tensor(smoothed[mine], dtype=x.dtype, device=x.device)
            shift = float(smoothed.max())
        else:  # a degenerate tail fit (near-constant weights): the raw weights are exact
            shift = 0.0
    mean = sum_w / total
    u = torch.exp(x - shift)
    sum_u, sum_u2, squares = group.sum_floats(u.sum(), (u * u).sum(), ((w - mean) ** 2).sum())
    smoothed_lw = (x - (shift + math.log(sum_u))).to(log_w.device, log_w.dtype)
    se = math.sqrt(squares / (total - 1)) / (math.sqrt(total) * mean) if total > 1 else math.inf
    summary = {
        "log_evidence": math.log(mean) + top,
        "log_evidence_se": se,
        "ess": sum_u**2 / sum_u2,
        "ess_raw": sum_w**2 / sum_w2,
        "log_norm": top + math.log(sum_w),
    }
    if warn and group.main:
        warn_about("importance", total, nans, khat, lambda: summary["ess"], 5)
    return ShardedImportanceResult(
        log_w, samples, sites, log_p, log_q, smoothed_lw, khat, khat_threshold(total), nans,
        defensive, group=group, total=total, summary=summary,
    )  # fmt: skip
