r"""``torch.distributed`` seen from one rank: whether a call runs on the process group, failing
together, and the few collectives every data-parallel path of pyroflows needs.

The default process group (``torch.distributed.init_process_group``, usually through
``torchrun``) is the only group pyroflows uses. Every public function that can run on several
processes takes ``distributed="auto" | True | False`` and resolves it with :func:`use_group`;
the data-parallel code then talks to the group through a :class:`Ranks` (the training loop of
:func:`~pyroflows.infer.fit` extends it with its own bookkeeping).

Failures: a check that may fail on some ranks only (their own rows, their own file) runs inside
:func:`together`, so it fails on every rank or on none, and no rank is left waiting for a
collective the others never start.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["Ranks", "row_checksum", "together", "use_group"]


def use_group(distributed: bool | str, device: torch.device) -> bool:
    """Whether a call with ``distributed=`` runs on the default process group.

    ``"auto"``: yes when ``torch.distributed`` is initialised with more than one process;
    ``True``: the same, but an uninitialised ``torch.distributed`` is a ``ValueError``;
    ``False``: no (every rank works alone, e.g. an ensemble). A NCCL group with tensors off
    the GPU is a ``ValueError`` (NCCL only moves CUDA tensors).

    Example:
        >>> use_group("auto", torch.device("cpu"))  # no process group in a plain session
        False
    """
    if not (isinstance(distributed, bool) or distributed == "auto"):
        raise ValueError(f"distributed must be 'auto', True or False, got {distributed!r}")
    ready = dist.is_available() and dist.is_initialized()
    if distributed is True and not ready:
        raise ValueError(
            "distributed=True needs torch.distributed.init_process_group(...) first (launch "
            "with torchrun, which sets RANK, WORLD_SIZE and MASTER_ADDR)"
        )
    if distributed is False or not ready or dist.get_world_size() < 2:
        return False
    if dist.get_backend() == "nccl" and device.type != "cuda":
        raise ValueError(
            "the process group uses NCCL, which needs the tensors on a GPU; move them to "
            "cuda:LOCAL_RANK or initialise the group with backend='gloo' for CPU work"
        )
    return True


class Ranks:
    """The default process group seen from one rank.

    Args:
        device: where the collectives' tensors live (CPU for gloo, the rank's GPU for NCCL).

    Attributes:
        rank: this process's rank; ``world``: the number of processes.
    """

    def __init__(self, device: torch.device) -> None:
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        self.device = device

    @property
    def main(self) -> bool:
        """Whether this is rank 0 (the one that writes files and shows progress)."""
        return self.rank == 0

    def failed_ranks(self, failed: bool) -> list[int]:
        """Ranks that report a failure (one ``all_reduce``)."""
        flags = torch.zeros(self.world, dtype=torch.float64, device=self.device)
        flags[self.rank] = float(failed)
        dist.all_reduce(flags)
        return [r for r, flag in enumerate(flags.tolist()) if flag]

    def sum(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """The sums over the ranks of ``tensors`` (one ``all_reduce`` of a flat copy in their
        promoted dtype; the inputs are not changed, each result has its input's dtype)."""
        return self._reduce(tensors, dist.ReduceOp.SUM)

    def sum_floats(self, *values: Tensor | float) -> list[float]:
        """The sums over the ranks of a few numbers (0-d tensors or floats), in float64, as
        Python floats (one ``all_reduce``)."""
        buffer = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in values])
        buffer = buffer.to(self.device)
        dist.all_reduce(buffer)
        return buffer.tolist()

    def max(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        """The elementwise maxima over the ranks (one ``all_reduce``)."""
        return self._reduce(tensors, dist.ReduceOp.MAX)

    def _reduce(self, tensors: tuple[Tensor, ...], op: dist.ReduceOp) -> tuple[Tensor, ...]:
        flat = torch.cat([t.detach().reshape(-1).to(self.device) for t in tensors])
        dist.all_reduce(flat, op=op)
        parts = flat.split([t.numel() for t in tensors])
        return tuple(p.view(t.shape).to(t.device, t.dtype) for p, t in zip(parts, tensors))

    def counts(self, n: int) -> list[int]:
        """Every rank's ``n`` (one ``all_gather``), in rank order."""
        mine = torch.tensor([n], dtype=torch.int64, device=self.device)
        every = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(every, mine)
        return [int(c) for c in torch.cat(every).tolist()]

    def gather_rows(self, tensor: Tensor, counts: list[int] | None = None) -> Tensor:
        """The ranks' ``tensor`` (rows, ...) stacked along the rows in rank order, on every rank.

        Parts may have different numbers of rows (``counts``, every rank's row count, from
        :meth:`counts` when not given): each is padded to the largest for the ``all_gather``.
        """
        counts = self.counts(tensor.shape[0]) if counts is None else counts
        padded = tensor.new_zeros((max(counts), *tensor.shape[1:]), device=self.device)
        padded[: tensor.shape[0]] = tensor.detach()
        every = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(every, padded)
        return torch.cat([part[:c] for part, c in zip(every, counts)]).to(tensor.device)


def row_checksum(*parts: Tensor | None) -> Tensor:
    """A float64 checksum (0-d) of tensors sharing their first dimension (rows): each row's
    sum weighted by its position, so the same rows in another order differ (``None`` parts
    are skipped). What the data-parallel paths compare over the ranks to tell copies apart."""
    first = next(p for p in parts if p is not None)
    n = first.shape[0]
    position = 1 + torch.arange(n, dtype=torch.float64, device=first.device) / max(n, 1)
    checksum = torch.zeros((), dtype=torch.float64, device=first.device)
    for part in parts:
        if part is not None:
            rows = part.flatten(1) if part.dim() > 1 else part[:, None]  # also with n = 0
            checksum += (rows.sum(1, dtype=torch.float64) * position).sum()
    return checksum


@contextmanager
def together(ranks: Ranks | None, what: str = "fit") -> Iterator[None]:
    """Run a block that may fail on some ranks only (their inputs, their checkpoint file):
    if it fails anywhere, it fails everywhere (the failing rank re-raises its own error, the
    others a ``ValueError`` that points to it and names ``what`` failed), so no rank waits for
    a collective that never comes. The block itself must not start collectives. Without a
    group, just runs the block."""
    if ranks is None:
        yield
        return
    try:
        yield
    except Exception:
        ranks.failed_ranks(True)
        raise
    failed = ranks.failed_ranks(False)
    if failed:
        raise ValueError(
            f"{what} failed on rank(s) {failed} of the process group (see their error); "
            "every rank stops here"
        )
