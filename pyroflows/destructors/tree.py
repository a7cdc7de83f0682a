r"""Tree-density destructor: a density-estimation tree on the cube and its piecewise-linear CDF.

The tree partitions :math:`[0,1]^d` into axis-aligned boxes (leaves) of constant density,
grown greedily: each split is the one (dimension, threshold between two data values) with the
largest gain in training log-likelihood, leaves keep at least ``min_leaf`` points, growth stops
at ``max_leaves`` leaves, depth ``max_depth``, or when no split helps. The fitted density is
mixed with the uniform, :math:`p = (1-\lambda) p_\text{tree} + \lambda`, so no region has zero
density. Leaf :math:`l` has mass :math:`m_l`.

The destructor maps each leaf's box affinely onto a box of the cube whose volume is
:math:`m_l` (Inouye & Ravikumar 2018, https://proceedings.mlr.press/v80/inouye18a.html): walking down the tree, a node split at :math:`t` on
dimension :math:`s` splits its cube box on the same dimension at the fraction
:math:`q = m_\text{left} / m_\text{node}`. Within a leaf the map is diagonal affine, so the
Jacobian determinant is :math:`m_l / \text{vol}_l = p(x)` and the inverse is exact (walk the
tree in the cube with the split points :math:`q`).

Evaluation is vectorised: every point walks ``max_depth`` steps of ``gather`` and
``torch.where`` (no Python branching on values). The tree lives in fixed-capacity buffers
(``2 * max_leaves - 1`` nodes), so ``state_dict`` loads into any tree built with the same
options; the split fractions are a parameter (their logits), so a fitted tree can be
fine-tuned by gradient.
"""

from __future__ import annotations

import heapq
import math

import torch
from torch import Tensor, nn

from ..checks import check_count
from .base import Destructor
from .domain import UNIT
from .registry import register
from .shards import all_rows

__all__ = ["TreeDestructor"]


@register("tree")
class TreeDestructor(Destructor):
    """Density-estimation tree on :math:`[0,1]^d` as a destructor (domain ``"unit"``).

    Args:
        features: dimension.
        max_leaves: largest number of leaves.
        max_depth: largest depth (also the number of steps of the vectorised walk).
        min_leaf: fewest training points in a leaf.
        uniform_weight: weight :math:`\\lambda` of the uniform in the mixture (``0 <= λ < 1``).

    Example:
        >>> x = torch.rand(2000, 2, dtype=torch.float64) * torch.tensor([0.5, 1.0], dtype=torch.float64)
        >>> d = TreeDestructor(2, max_leaves=8).fit(x)
        >>> round(d.score(x), 1)  # about log 2 nats: the data fill half the square
        0.7
    """

    domain = UNIT

    def __init__(
        self,
        features: int,
        max_leaves: int = 32,
        max_depth: int = 12,
        min_leaf: int = 20,
        uniform_weight: float = 0.01,
    ) -> None:
        super().__init__(features)
        max_leaves = check_count("max_leaves", max_leaves)
        max_depth = check_count("max_depth", max_depth, 0)
        min_leaf = check_count("min_leaf", min_leaf)
        if not 0 <= uniform_weight < 1:
            raise ValueError(f"uniform_weight must lie in [0, 1), got {uniform_weight!r}")
        self.max_leaves, self.max_depth, self.min_leaf = max_leaves, max_depth, min_leaf
        self.uniform_weight = float(uniform_weight)
        nodes = 2 * max_leaves - 1
        self.register_buffer("feature", torch.zeros(nodes, dtype=torch.long))
        self.register_buffer("threshold", torch.zeros(nodes))
        self.register_buffer("left", torch.zeros(nodes, dtype=torch.long))
        self.register_buffer("right", torch.zeros(nodes, dtype=torch.long))
        self.register_buffer("is_leaf", torch.ones(nodes, dtype=torch.bool))
        self.split_logit = nn.Parameter(torch.zeros(nodes))

    def extra_repr(self) -> str:
        return (
            f"features={self.features}, max_leaves={self.max_leaves}, max_depth={self.max_depth}, "
            f"min_leaf={self.min_leaf}, uniform_weight={self.uniform_weight}"
        )

    # -- fitting -------------------------------------------------------------------------------

    def _best_split(self, x: Tensor, w: Tensor, lo: Tensor, hi: Tensor) -> tuple[float, int, float]:
        """Largest log-likelihood gain (gain, dim, threshold) for the points of one leaf."""
        m = x.shape[0]
        if m < 2 * self.min_leaf:
            return -math.inf, 0, 0.0
        values, order = x.sort(0)
        cw = torch.cumsum(w[order], 0)  # (m, d)
        total = cw[-1:]
        thresholds = 0.5 * (values[:-1] + values[1:])
        frac = ((thresholds - lo) / (hi - lo)).clamp(1e-300, 1)
        wl, wr = cw[:-1], total - cw[:-1]
        tiny = torch.finfo(x.dtype).tiny
        gain = (
            wl * torch.log(wl.clamp_min(tiny) / frac)
            + wr * torch.log(wr.clamp_min(tiny) / (1 - frac).clamp_min(1e-300))
            - total * torch.log(total.clamp_min(tiny))
        )
        count = torch.arange(1, m, device=x.device)[:, None]
        valid = (count >= self.min_leaf) & (m - count >= self.min_leaf) & (values[1:] > values[:-1])
        gain = torch.where(valid, gain, torch.full_like(gain, -math.inf))
        best = int(gain.argmax())
        row, dim = divmod(best, self.features)
        return float(gain[row, dim]), dim, float(thresholds[row, dim])

    def _fit(self, x: Tensor, w: Tensor) -> None:
        # The candidate thresholds are the data values themselves: no sums summarise them, so
        # a data-parallel fit gathers the rows and every rank grows the same tree.
        x, w = all_rows(x), all_rows(w)
        d = self.features
        nodes = 2 * self.max_leaves - 1
        feature = [0] * nodes
        threshold = [0.0] * nodes
        left = list(range(nodes))
        right = list(range(nodes))
        is_leaf = [True] * nodes
        lo0, hi0 = (
            torch.zeros(d, dtype=x.dtype, device=x.device),
            torch.ones(d, dtype=x.dtype, device=x.device),
        )
        info: dict[int, tuple[Tensor, Tensor, Tensor, int]] = {
            0: (torch.arange(x.shape[0], device=x.device), lo0, hi0, 0)
        }
        heap: list[tuple[float, int, int, float]] = []

        def consider(node: int) -> None:
            index, lo, hi, depth = info[node]
            if depth >= self.max_depth:
                return
            gain, dim, t = self._best_split(x[index], w[index], lo, hi)
            if gain > 1e-12:
                heapq.heappush(heap, (-gain, node, dim, t))

        consider(0)
        used, leaves = 1, 1
        while heap and leaves < self.max_leaves:
            _, node, dim, t = heapq.heappop(heap)
            index, lo, hi, depth = info.pop(node)
            go_left = x[index, dim] <= t
            l_node, r_node = used, used + 1
            used += 2
            leaves += 1
            feature[node], threshold[node], left[node], right[node], is_leaf[node] = (
                dim,
                t,
                l_node,
                r_node,
                False,
            )
            hi_left, lo_right = hi.clone(), lo.clone()
            hi_left[dim], lo_right[dim] = t, t
            info[l_node] = (index[go_left], lo, hi_left, depth + 1)
            info[r_node] = (index[~go_left], lo_right, hi, depth + 1)
            consider(l_node)
            consider(r_node)
        # Leaf masses: (1 - λ) * training weight + λ * volume, then each split's left fraction.
        mass = [0.0] * nodes
        lam = self.uniform_weight
        for node, (index, lo, hi, _) in info.items():
            mass[node] = (1 - lam) * float(w[index].sum()) + lam * float((hi - lo).prod())
        for node in reversed(range(used)):
            if not is_leaf[node]:
                mass[node] = mass[left[node]] + mass[right[node]]
        logit = [0.0] * nodes
        for node in range(used):
            if not is_leaf[node]:
                logit[node] = math.log(mass[left[node]]) - math.log(mass[right[node]])
        dev = x.device
        self.feature.copy_(torch.tensor(feature, device=dev))
        self.threshold.copy_(torch.tensor(threshold, dtype=x.dtype, device=dev))
        self.left.copy_(torch.tensor(left, device=dev))
        self.right.copy_(torch.tensor(right, device=dev))
        self.is_leaf.copy_(torch.tensor(is_leaf, device=dev))
        self.split_logit.copy_(torch.tensor(logit, dtype=x.dtype, device=dev))

    def leaf_count(self) -> int:
        """Number of leaves of the fitted tree."""
        internal = int((~self.is_leaf).sum())
        return internal + 1

    # -- the bijection -------------------------------------------------------------------------

    def _walk(self, v: Tensor, in_cube: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Walk every point to its leaf; return its data box and cube box (lo, hi) each."""
        flat = v.reshape(-1, self.features)
        n = flat.shape[0]
        node = torch.zeros(n, dtype=torch.long, device=v.device)
        xlo, xhi = torch.zeros_like(flat), torch.ones_like(flat)
        ulo, uhi = torch.zeros_like(flat), torch.ones_like(flat)
        dims = torch.arange(self.features, device=v.device)
        fraction = torch.sigmoid(self.split_logit)
        for _ in range(self.max_depth):
            leaf = self.is_leaf[node]
            s = self.feature[node]
            t = self.threshold[node]
            q = fraction[node]
            u_lo_s = ulo.gather(1, s[:, None])[:, 0]
            u_hi_s = uhi.gather(1, s[:, None])[:, 0]
            cut = u_lo_s + (u_hi_s - u_lo_s) * q
            value = flat.detach().gather(1, s[:, None])[:, 0]
            go_left = value <= (cut.detach() if in_cube else t)
            on = (dims == s[:, None]) & ~leaf[:, None]
            to_left, to_right = on & go_left[:, None], on & ~go_left[:, None]
            xhi = torch.where(to_left, t[:, None], xhi)
            xlo = torch.where(to_right, t[:, None], xlo)
            uhi = torch.where(to_left, cut[:, None], uhi)
            ulo = torch.where(to_right, cut[:, None], ulo)
            node = torch.where(leaf, node, torch.where(go_left, self.left[node], self.right[node]))
        return xlo, xhi, ulo, uhi

    def call_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        xc = x.clamp(0, 1)
        xlo, xhi, ulo, uhi = self._walk(xc, in_cube=False)
        scale = (uhi - ulo) / (xhi - xlo)
        u = (ulo + (xc.reshape(-1, self.features) - xlo) * scale).clamp(0, 1)
        return u.reshape(x.shape), scale.log().sum(-1).reshape(x.shape[:-1])

    def inverse_and_ladj(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        uc = u.clamp(0, 1)
        xlo, xhi, ulo, uhi = self._walk(uc, in_cube=True)
        scale = (uhi - ulo) / (xhi - xlo)
        x = (xlo + (uc.reshape(-1, self.features) - ulo) / scale).clamp(0, 1)
        return x.reshape(u.shape), -scale.log().sum(-1).reshape(u.shape[:-1])
