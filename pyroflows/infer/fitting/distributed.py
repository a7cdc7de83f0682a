r"""Data-parallel :func:`~pyroflows.infer.fit` on ``torch.distributed``: the helpers.

Every rank holds the full data set and the same model. Each global mini-batch (the same
sequence of batches a single-process fit would draw) is split into one contiguous part per
rank; a rank computes the weighted log-likelihood *sum* of its part, divides it by the weight
total of the whole global batch (known on every rank, as every rank holds all weights) and
back-propagates. The sum of these gradients over the ranks, one ``all_reduce`` of a flat
buffer per step, is then exactly the gradient of the global batch's weighted mean,

.. math:: \nabla \frac{\sum_r \sum_{n \in B_r} w_n \log p_\theta(x_n)}{\sum_{n \in B} w_n}
          = \sum_r \nabla \frac{\sum_{n \in B_r} w_n \log p_\theta(x_n)}{\sum_{n \in B} w_n},

whatever the sizes and weights of the parts, so the parameters follow the single-process
trajectory up to the order of floating-point additions. Validation sums and weights are
summed over the ranks the same way; every stopping decision is taken on those global numbers
or by rank 0 and broadcast, so the ranks never diverge or wait on each other forever.

The gradients are reduced by hand rather than through
:class:`torch.nn.parallel.DistributedDataParallel`: ``fit``'s models return a *distribution*
whose ``log_prob`` runs after (outside) ``forward``, which DDP's bookkeeping does not see, and
DDP averages instead of summing, which is not the weighted global mean with unequal parts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ...collectives import Ranks, row_checksum, together, use_group
from .callbacks import Callback

__all__ = ["Group", "has_step_hooks", "pending_initialization", "process_group", "together"]


def process_group(distributed: bool | str, device: torch.device) -> Group | None:
    """The process group ``fit`` trains on, or ``None`` for a single-process fit (see
    :func:`~pyroflows.collectives.use_group` for ``distributed``)."""
    return Group(device) if use_group(distributed, device) else None


class Group(Ranks):
    """The default process group seen from one rank, with the collectives ``fit`` needs on top
    of :class:`~pyroflows.collectives.Ranks`'s."""

    def shard(self, index: Tensor) -> Tensor:
        """This rank's contiguous part of the rows ``index`` of a global batch (parts differ by
        at most one row; a part may be empty when the batch has fewer rows than ranks)."""
        return index.tensor_split(self.world)[self.rank]

    def failed_ranks(self, failed: bool) -> list[int]:
        """Ranks that report a failure (one ``all_reduce``)."""
        flags = torch.zeros(self.world, dtype=torch.float64, device=self.device)
        flags[self.rank] = float(failed)
        dist.all_reduce(flags)
        return [r for r, flag in enumerate(flags.tolist()) if flag]

    def check_same(
        self, data: Tensor, context: Tensor | None, weights: Tensor, callbacks: Sequence[Any]
    ) -> bool:
        """Raise ``ValueError`` on every rank unless all ranks passed the same number of rows,
        the same data, context and weights in the same order (a float64 checksum weighted by
        position) and as many callbacks (one ``all_reduce``); returns whether any rank has a
        callback with its own ``on_step_end`` (see :meth:`decide`)."""
        checksum = row_checksum(data, weights, context)
        stats = torch.tensor(
            [data.shape[0], float(checksum), len(callbacks), has_step_hooks(callbacks)],
            dtype=torch.float64,
            device=self.device,
        )
        both = torch.cat([stats, -stats])
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        high, low = both[:4].tolist(), (-both[4:]).tolist()
        if high[0] != low[0]:
            raise ValueError(
                f"the ranks passed different numbers of rows to fit ({int(low[0])} to "
                f"{int(high[0])}): in a distributed fit every rank passes the full data set "
                "(fit itself gives each rank its part of every batch)"
            )
        if abs(high[1] - low[1]) > 1e-6 * (abs(high[1]) + abs(low[1]) + 1.0):
            raise ValueError(
                "the ranks passed different data, context or weights to fit (their sums "
                "differ): in a distributed fit every rank passes the full data set, the same "
                "on each"
            )
        if high[2] != low[2]:
            raise ValueError("the ranks passed different callbacks to fit: pass the same ones")
        return bool(high[3])

    def broadcast_seed(self, seed: int | None) -> int:
        """Rank 0's ``seed`` (a fresh random one for ``None``) on every rank."""
        if seed is None:
            seed = torch.Generator().seed() % 2**62
        value = torch.tensor([int(seed) % 2**63], dtype=torch.int64, device=self.device)
        dist.broadcast(value, src=0)
        return int(value.item())

    @torch.no_grad()
    def broadcast_state(self, model: nn.Module) -> None:
        """Give every rank rank 0's ``state_dict`` (parameters and buffers, one broadcast per
        dtype), loaded through ``load_state_dict`` so modules' load hooks run."""
        state = model.state_dict()
        by_dtype: dict[torch.dtype, list[str]] = {}
        for key, tensor in state.items():
            by_dtype.setdefault(tensor.dtype, []).append(key)
        received: dict[str, Tensor] = {}
        for keys in by_dtype.values():
            flat = torch.cat([state[k].detach().reshape(-1).to(self.device) for k in keys])
            dist.broadcast(flat, src=0)
            for key, part in zip(keys, flat.split([state[k].numel() for k in keys])):
                received[key] = part.view_as(state[key])
        if not self.main:
            model.load_state_dict(received)

    def reduce_gradients(self, params: Sequence[Tensor], value: Tensor) -> float:
        """Sum every parameter's ``.grad`` and the batch's log-likelihood sum ``value`` over
        the ranks (one ``all_reduce`` per parameter dtype); returns the global ``value``.

        A parameter without a gradient on one rank (its part of the batch was empty) counts as
        zero there; one without a gradient on every rank keeps ``grad=None``, as in a single
        process, so the optimizer skips it just the same.
        """
        extras = torch.cat(
            [
                value.detach().reshape(1),
                torch.tensor(
                    [float(p.grad is not None) for p in params],
                    dtype=value.dtype,
                    device=value.device,
                ),
            ]
        )
        by_dtype: dict[torch.dtype, list[int]] = {value.dtype: []}
        for k, p in enumerate(params):
            by_dtype.setdefault(p.dtype, []).append(k)
        flats: dict[torch.dtype, Tensor] = {}
        for dtype, ks in by_dtype.items():
            parts = [
                (params[k].grad if params[k].grad is not None else torch.zeros_like(params[k]))
                .detach()
                .reshape(-1)
                for k in ks
            ]
            if dtype == value.dtype:
                parts.append(extras)
            flats[dtype] = torch.cat(parts)
            dist.all_reduce(flats[dtype])
        reduced = flats[value.dtype][-len(extras) :].tolist()  # one host sync per step
        for dtype, ks in by_dtype.items():
            offset = 0
            for k in ks:
                p = params[k]
                if reduced[1 + k] > 0:
                    p.grad = flats[dtype][offset : offset + p.numel()].view_as(p)
                offset += p.numel()
        return reduced[0]

    def decide(self, callbacks: Sequence[Any], stopper: Any) -> Any:
        """Rank 0's stopping callback (or ``None``) on every rank, as one of each rank's own
        ``callbacks`` (found by position: every rank passes the same list)."""
        index = -1
        if self.main and stopper is not None:
            index = next(i for i, cb in enumerate(callbacks) if cb is stopper)
        value = torch.tensor([index], dtype=torch.int64, device=self.device)
        dist.broadcast(value, src=0)
        index = int(value.item())
        return None if index < 0 else callbacks[index]


def has_step_hooks(callbacks: Sequence[Any]) -> bool:
    """Whether some callback has its own ``on_step_end`` (then every step ends with a
    broadcast of rank 0's decision; without one, steps need no extra collective)."""
    for callback in callbacks:
        hook = getattr(callback, "on_step_end", None)
        if hook is not None and getattr(hook, "__func__", None) is not Callback.on_step_end:
            return True
    return False


def pending_initialization(model: nn.Module) -> bool:
    """Whether the model has a data-dependent initialisation still to run (a boolean buffer
    named ``initialized`` that is ``False``, as :class:`~pyroflows.transforms.ActNorm` has)."""
    return any(
        name.rsplit(".", 1)[-1] == "initialized"
        and buffer.dtype == torch.bool
        and not bool(buffer.all())
        for name, buffer in model.named_buffers()
    )
