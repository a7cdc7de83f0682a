r"""Destructors fitted on rows spread over the ranks of a process group.

In a data-parallel fit (``Destructor.fit(x, distributed="auto")`` under ``torchrun``) every
rank passes *its own* rows, and the result is the destructor fitted on all of them: the
concatenation of the ranks' rows in rank order, with the weights normalised over all of them.
The fits only ever need sums over the rows (sufficient statistics), so each fit writes its
sums through :func:`total`, which is the identity in one process and one ``all_reduce`` on a
group:

* Gaussian, independent Gaussians, Beta: weighted first and second moments (and, for the Beta,
  the mean log-coordinates);
* histogram: the bin counts;
* PCA rotation and the copula: the second-moment matrix, the effective sample size;
* Gaussian mixture: k-means++ seeding draws from the probabilities of *all* rows (one
  ``all_gather`` of a number per row per centre, :func:`all_rows`, then the chosen row from its
  rank, :func:`row`); each EM step sums the responsibilities' moments;
* deep destructor: every layer's fit as above; training and held-out log-likelihoods summed;
  the held-out split and the folds drawn over the global row numbers;
* density tree: no exact sufficient statistics exist (its candidate thresholds are the data
  values themselves), so the rows are gathered (:func:`all_rows`) and every rank grows the same
  tree: exact, but each rank then holds every row while the tree is grown.

The ranks are found through a context variable set by ``fit`` (:func:`sharded`), so a
destructor made of parts (a chain, a deep stack) fits its parts on the same group without
threading it through every signature.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor

from ..collectives import Ranks

__all__ = ["all_rows", "any_rank", "current", "extremes", "row", "row_span", "sharded", "total"]

_RANKS: ContextVar[Ranks | None] = ContextVar("pyroflows_destructor_ranks", default=None)


@contextmanager
def sharded(ranks: Ranks | None) -> Iterator[None]:
    """Fit on ``ranks`` (``None``: one process) inside the block."""
    token = _RANKS.set(ranks)
    try:
        yield
    finally:
        _RANKS.reset(token)


def current() -> Ranks | None:
    """The ranks of the fit in progress, or ``None`` in one process."""
    return _RANKS.get()


def total(*tensors: Tensor) -> Tensor | tuple[Tensor, ...]:
    """Sums over the ranks of per-rank partial sums (one ``all_reduce``; the tensors themselves
    in one process). One tensor in, one out; several in, a tuple out."""
    ranks = current()
    out = tensors if ranks is None else ranks.sum(*tensors)
    return out[0] if len(out) == 1 else out


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on some rank (so every rank takes the same branch)."""
    ranks = current()
    if ranks is None:
        return bool(flag)
    return bool(ranks.max(torch.tensor([float(flag)], device=ranks.device))[0])


def extremes(x: Tensor) -> tuple[Tensor, Tensor]:
    """Column minima and maxima (features,) of the rows ``x`` (n, features) of every rank (an
    empty part counts as ``+inf`` / ``-inf``)."""
    ranks = current()
    if ranks is None:
        return x.amin(0), x.amax(0)
    inf = torch.full(x.shape[1:], torch.inf, dtype=x.dtype, device=x.device)
    low = x.amin(0) if x.shape[0] else inf
    high = x.amax(0) if x.shape[0] else -inf
    neg_low, high = ranks.max(-low, high)
    return -neg_low, high


def row_span(n: int) -> tuple[int, int]:
    """``(first, total)``: the global number of this rank's first row (ranks' rows in rank
    order) and the number of rows over all ranks, for a part of ``n`` rows."""
    ranks = current()
    if ranks is None:
        return 0, n
    counts = ranks.counts(n)
    return sum(counts[: ranks.rank]), sum(counts)


def all_rows(t: Tensor) -> Tensor:
    """Every rank's rows of ``t`` (n, ...) in rank order, on every rank."""
    ranks = current()
    return t if ranks is None else ranks.gather_rows(t)


def row(x: Tensor, index: int, first: int) -> Tensor:
    """Global row ``index`` of the rows ``x`` (n, features) spread over the ranks, on every
    rank (sent by the rank that holds it); ``first``: this rank's first global row
    (:func:`row_span`)."""
    ranks = current()
    if ranks is None:
        return x[index]
    local = index - first
    mine = x[local] if 0 <= local < x.shape[0] else x.new_zeros(x.shape[1:])
    return ranks.sum(mine)[0]
