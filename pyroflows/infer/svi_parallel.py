"""Data-parallel SVI steps for :func:`~pyroflows.infer.fit_guide` on ``torch.distributed``.

Every rank holds the model, the guide and the full data; each draws its own subsample of a
subsampled plate (and its own particles). :class:`DataParallelSVI` makes the start identical
on every rank (rank 0's parameters, before any optimizer exists), reseeds every rank
differently, and runs SVI steps whose ELBO gradients and losses are averaged over the ranks,
so every rank takes the same optimizer step and the same decisions. Averaging the gradients of
R ranks, each scaled by the plate's N / subsample size, is an unbiased gradient with R times the
subsample. See ``docs/distributed.rst``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
import torch.distributed as dist
from pyro.infer.util import zero_grads
from torch import Tensor, nn

from .fitting.distributed import Group

__all__ = ["DataParallelSVI", "OtherRankError"]


class OtherRankError(Exception):
    """Another rank's SVI step raised an error that is neither a ``ValueError`` nor a
    ``RuntimeError`` (which fit_guide's pilots take for a diverged step size): every rank
    stops."""


class DataParallelSVI:
    """The data-parallel parts of :func:`fit_guide` on one rank of a process group: the start
    made identical on every rank, per-rank randomness, and SVI steps whose gradients and loss
    are averaged over the ranks."""

    def __init__(self, group: Group, guide: Callable, tensors: dict[str, Tensor]) -> None:
        self.group, self.guide = group, guide
        self.names = sorted(tensors)  # the same order on every rank
        self.params = [tensors[name] for name in self.names]

    def _module_tensors(self) -> list[Tensor]:
        if not isinstance(self.guide, nn.Module):
            return []
        seen: set[int] = set()
        found = []
        for t in [*self.guide.parameters(), *self.guide.buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                found.append(t)
        return found

    @torch.no_grad()
    def start(self) -> None:
        """Check that every rank built the same parameters, give every rank rank 0's values
        (the param store's and the guide's module tensors, averages included) and reseed each
        rank differently (from rank 0's torch RNG)."""
        tensors = self.params + self._module_tensors()
        layout = [float(len(self.params)), float(len(tensors))]
        layout += [float(sum(t.numel() for t in tensors)), float(sum(map(len, self.names)))]
        both = torch.tensor(
            layout + [-v for v in layout], dtype=torch.float64, device=self.group.device
        )
        dist.all_reduce(both, op=dist.ReduceOp.MAX)
        n = len(layout)
        if not torch.equal(both[:n], -both[n:]):
            raise ValueError(
                "the ranks built different guide parameters (their number or sizes differ): "
                "in a distributed fit_guide every rank passes the same model, guide and data"
            )
        by_dtype: dict[torch.dtype, list[Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.detach().reshape(-1).to(self.group.device) for t in group])
            dist.broadcast(flat, src=0)
            for t, part in zip(group, flat.split([t.numel() for t in group])):
                t.copy_(part.view_as(t))
        base = self.group.broadcast_seed(int(torch.randint(0, 2**31, ()).item()))
        pyro.set_rng_seed((base + 7919 * self.group.rank) % 2**32)

    def step(
        self, optim: Any, loss: Any, model: Callable, args: tuple, kwargs: dict, over: bool
    ) -> tuple[float, bool]:
        """One SVI step: the ELBO gradient on this rank's subsample, averaged with the other
        ranks' (with the loss, the failures and ``over``, one flag per rank: a time budget
        out), then the optimizer's step on every parameter with a gradient. Returns the mean
        loss and whether any rank's ``over`` was set; an error on a rank raises on every rank
        (its own error there)."""
        error: BaseException | None = None
        params = list(self.params)
        value = math.nan
        try:
            with poutine.trace(param_only=True) as capture:
                value = float(loss.loss_and_grads(model, self.guide, *args, **kwargs))
            known = {id(p) for p in params}
            for site in capture.trace.nodes.values():  # made after the start: every
                t = site["value"].unconstrained()  # rank must make them, in the same order
                if id(t) not in known:
                    known.add(id(t))
                    params.append(t)
        except Exception as caught:  # raised below, once every rank knows
            error = caught
        device = self.group.device
        usual = isinstance(error, ValueError | RuntimeError)  # fit_guide's pilots catch these
        stats = torch.tensor(
            [
                value if error is None else 0.0,
                float(usual),
                float(error is not None and not usual),
                float(over),
                len(params),
            ],
            dtype=torch.float64,
            device=device,
        )
        dist.all_reduce(stats)  # one host sync: every rank knows the same
        total, usual_failures, other_failures, overs, count = stats.tolist()
        failed = usual_failures + other_failures > 0
        if not failed and count != len(params) * self.group.world:
            error = ValueError(
                "the ranks created different guide parameters during SVI: create every "
                "parameter before fit_guide starts (guide.setup(*args))"
            )
            failed = True
        if failed:
            zero_grads(params)
            if error is not None:
                raise error
            message = (
                "an SVI step failed on another rank of the process group (see its error); "
                "every rank stops here"
            )
            raise ValueError(message) if not other_failures else OtherRankError(message)
        flags = torch.tensor(
            [float(p.grad is not None) for p in params], dtype=torch.float64, device=device
        )
        dist.all_reduce(flags)  # a parameter without a gradient anywhere is not stepped
        by_dtype: dict[torch.dtype, list[int]] = {}
        for k, (p, flag) in enumerate(zip(params, flags.tolist())):
            if flag > 0:
                by_dtype.setdefault(p.dtype, []).append(k)
        for ks in by_dtype.values():
            flat = torch.cat(
                [
                    (params[k].grad if params[k].grad is not None else torch.zeros_like(params[k]))
                    .detach()
                    .reshape(-1)
                    .to(device)
                    for k in ks
                ]
            )
            dist.all_reduce(flat)
            flat /= self.group.world
            offset = 0
            for k in ks:
                p = params[k]
                p.grad = flat[offset : offset + p.numel()].view_as(p).to(p.device)
                offset += p.numel()
        stepped = [p for p in params if p.grad is not None]
        optim(stepped)
        zero_grads(params)
        return total / self.group.world, overs > 0
