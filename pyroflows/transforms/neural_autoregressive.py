r"""Neural autoregressive flows: NAF's sigmoidal transformer (Huang, Krueger, Lacoste & Courville,
"Neural Autoregressive Flows", ICML 2018) and block neural autoregressive flows (De Cao, Titov &
Aziz, "Block Neural Autoregressive Flow", UAI 2019).

**Deep sigmoidal flow** (:class:`SigmoidalMap`): a stack of ``depth`` sigmoidal blocks, each

.. math::
    y = \sigma^{-1}\Bigl(\sum_{j=1}^{K} w_j\, \sigma(a_j u + b_j)\Bigr),
    \qquad a_j > 0,\ w \in \Delta^{K-1},

computed in log space (``logsigmoid`` and ``logsumexp``), so it is exact for any input; as
:math:`u \to \pm\infty` it is asymptotically linear with slope :math:`\min_j a_j` (resp. the
slope of the largest weight's branch), so each block maps onto :math:`\mathbb{R}`. The logit of
a convex combination lies between the smallest and the largest logit, which brackets the
inverse: :math:`u \in [\min_j (y - b_j)/a_j, \max_j (y - b_j)/a_j]`; each block is inverted by
bisection on that bracket, last block first. (The paper's DDSF has wide hidden layers between
blocks; this is its width-one form, a composition of DSF blocks.)

**BNAF** (:class:`BlockNeuralAutoregressive`): a single network
:math:`g: \mathbb{R}^d \to \mathbb{R}^d` whose weights are block lower-triangular, with
:math:`d` blocks of ``hidden[k]`` units per layer, positive diagonal blocks (:math:`e^{W}`)
and free strictly-lower blocks, tanh between layers, so :math:`\partial g_i/\partial x_j = 0`
for :math:`j > i` and :math:`\partial g_i / \partial x_i > 0`. The log-determinant is the sum
of the logs of the diagonal of the Jacobian, each the product of the diagonal blocks and the
activation slopes along dimension :math:`i`'s own path. **Onto** :math:`\mathbb{R}`: tanh
bounds every hidden unit, so a plain BNAF's outputs are bounded (Pyro's ``BlockAutoregressive``
ends in tanh and maps into a box); here the output is

.. math:: y = g(x) + e^{s} \odot x,

a positive linear skip: :math:`|g_i| \le G_i = \sum_j |W^{(L)}_{ij}| + |b^{(L)}_i|`, so
:math:`y_i \to \pm\infty` with :math:`x_i` (linear tails of slope :math:`e^{s_i}`) and
:math:`x_i \in [(y_i - G_i)e^{-s_i}, (y_i + G_i)e^{-s_i}]` brackets the inverse. The inverse
is sequential: ``features`` sweeps, each solving every coordinate's scalar equation along its
own diagonal path with the other coordinates frozen (after sweep :math:`k` the first
:math:`k` coordinates are exact), by batched bisection with implicit gradients. The log-det
:math:`\log(\partial_i g_i + e^{s_i})` needs no log-space accumulation (the paper's
log-sum-exp): the skip keeps it finite where :math:`\partial_i g_i` underflows. The weights
are stored divided by ``param_scale`` (default 10), so Adam at ``lr = 1e-3`` takes the
paper's step size; see :class:`BlockNeuralAutoregressive`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import check_count, check_hidden, check_real
from ..nn import MLP
from ..numerics.bisection import monotone_inverse
from .base import Bijection
from .elementwise import ElementwiseMap, broadcast_params

__all__ = ["BlockNeuralAutoregressive", "SigmoidalMap"]


class SigmoidalMap(ElementwiseMap):
    r"""NAF's (deep) sigmoidal transformer: ``depth`` DSF blocks of ``components`` sigmoids.

    ``forward`` is the explicit map of the paper (data to noise), ``inverse`` a bisection per
    block. Parameters per feature: ``3 * components * depth`` (per block: pre-softplus slopes,
    offsets and mixture logits). The offsets start spread over :math:`[-1, 1]` so that the
    components differ (with equal offsets they would get equal gradients forever); all-zero
    parameters give a smooth map close to the identity, not the identity.

    Args:
        components: sigmoids :math:`K` per block.
        depth: number of blocks.
        min_slope: lower bound on every :math:`a_j` (keeps the inverse's bracket finite).
        iterations: bisection steps per block (default: the dtype's resolution).

    Example:
        >>> m = SigmoidalMap(components=4, depth=2)
        >>> m.num_params  # 3 K per block
        24
        >>> u, zero = torch.linspace(-2, 2, 5), torch.zeros(5, m.num_params)
        >>> v, _ = m(u, zero)  # zero parameters: smooth and increasing, not the identity
        >>> bool((v.diff() > 0).all()), torch.equal(v, u)
        (True, False)
        >>> torch.allclose(m.inverse(v, zero)[0], u, atol=1e-5)  # a bisection per block
        True
    """

    def __init__(
        self,
        components: int = 8,
        depth: int = 2,
        min_slope: float = 1e-3,
        iterations: int | None = None,
    ) -> None:
        super().__init__()
        self.components = check_count("components", components)
        self.depth = check_count("depth", depth)
        self.min_slope = check_real("min_slope", min_slope, 0.0, 1.0)
        self.iterations = iterations
        self.num_params = 3 * components * depth
        # softplus(0 + offset) + min_slope = 1: zero parameters give unit slopes.
        self._slope_offset = math.log(math.expm1(1 - min_slope))
        spread = torch.linspace(-1, 1, components) if components > 1 else torch.zeros(1)
        self.register_buffer("offset_spread", spread.to(torch.get_default_dtype()))

    def extra_repr(self) -> str:
        return f"components={self.components}, depth={self.depth}"

    def _block(self, params: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
        K = self.components
        p = params[..., 3 * K * k : 3 * K * (k + 1)]
        a = F.softplus(p[..., :K] + self._slope_offset) + self.min_slope
        b = p[..., K : 2 * K] + self.offset_spread
        log_w = torch.log_softmax(p[..., 2 * K :], dim=-1)
        return a, b, log_w

    @staticmethod
    def _dsf(u: Tensor, a: Tensor, b: Tensor, log_w: Tensor) -> tuple[Tensor, Tensor]:
        t = a * u[..., None] + b
        log_s = torch.logsumexp(log_w + F.logsigmoid(t), -1)
        log_1ms = torch.logsumexp(log_w + F.logsigmoid(-t), -1)
        log_slope = torch.logsumexp(log_w + a.log() + F.logsigmoid(t) + F.logsigmoid(-t), -1)
        return log_s - log_1ms, log_slope - log_s - log_1ms

    def forward(self, u: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        u, params = broadcast_params(u, params)
        total = torch.zeros_like(u)
        for k in range(self.depth):
            u, ladj = self._dsf(u, *self._block(params, k))
            total = total + ladj
        return u, total

    def inverse(self, v: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        v, params = broadcast_params(v, params)
        total = torch.zeros_like(v)
        for k in reversed(range(self.depth)):
            a, b, log_w = self._block(params, k)
            ends = (v[..., None] - b) / a
            v = monotone_inverse(
                lambda t, a=a, b=b, w=log_w: self._dsf(t, a, b, w)[0],
                lambda t, a=a, b=b, w=log_w: self._dsf(t, a, b, w)[1].exp(),
                v,
                ends.amin(-1),
                ends.amax(-1),
                self.iterations,
            )
            total = total - self._dsf(v, a, b, log_w)[1]
        return v, total


def _tanh_slope(h: Tensor) -> Tensor:
    r""":math:`\tanh'(h) = 4\,\sigma(2h)\,\sigma(-2h)`, to full relative precision also where
    :math:`1 - \tanh^2 h` would cancel (:math:`|h| \gtrsim 4` in float32)."""
    return 4 * torch.sigmoid(2 * h) * torch.sigmoid(-2 * h)


class BlockNeuralAutoregressive(Bijection):
    r"""One BNAF layer (De Cao et al. 2019, https://arxiv.org/abs/1904.04676) with a positive linear skip that makes it onto
    :math:`\mathbb{R}^d` (see the module docstring).

    Orientation as MAF: the network is the data-to-noise map, :math:`z = g(x) + e^{s}\odot x`.
    **Fast direction: density** (``log_prob`` is one pass of the network); sampling inverts it
    with ``features`` bisection sweeps.

    **Parametrisation.** Layer :math:`l` has weights :math:`W^{(l)}` with diagonal blocks
    :math:`e^{c\,\theta}` and strictly-lower blocks :math:`c\,\theta`, biases
    :math:`c\,\beta`, and :math:`s = c\,\sigma`, where :math:`(\theta, \beta, \sigma)` are
    the stored parameters and :math:`c` is ``param_scale``. Adam moves every stored parameter
    by about ``lr`` per step whatever its gradient, so :math:`c` multiplies the step taken in
    the network's own units: each diagonal weight is a log-weight on a fan-in-one path, and at
    ``lr = 1e-3`` with :math:`c = 1` a few thousand steps change the slopes along a path by
    only a few e-folds, far from a fitted density (the paper trains with ``lr = 1e-2`` and
    ``1e-1``). :math:`c = 10` gives the paper's step size at the usual ``lr = 1e-3``.

    **Initialisation.** Diagonal weights :math:`\approx 1/\text{fan-in}` (times
    :math:`e^{0.1\epsilon}`), lower blocks :math:`0.1\,\epsilon/\sqrt{\text{fan-in}}`, and
    biases spread uniformly over :math:`[-2, 2]` in the first layer and :math:`[-1, 1]` after:
    the units of a block then have distinct tanh kinks. (With equal weights and zero biases
    the ``hidden[l]`` units of a block are copies of one unit, get nearly equal gradients and
    stay nearly redundant.)

    Args:
        features: event size :math:`d` (natural autoregressive order; stack with
            :class:`~pyroflows.transforms.Reverse` to alternate).
        context: context size; an MLP of the context shifts the first layer's
            pre-activations (which keeps the Jacobian triangular).
        hidden: units per dimension in each hidden layer (layer widths ``features * h``).
        context_hidden: widths of the context MLP.
        iterations: bisection steps per sweep (default: the dtype's resolution).
        param_scale: :math:`c > 0` above (``1`` stores the network's parameters as they are).

    Example:
        >>> t = BlockNeuralAutoregressive(3, hidden=(8,))
        >>> x = torch.randn(5, 3)
        >>> z, ladj = t.inverse_and_ladj(x)  # one pass: the density direction
        >>> float(torch.dist(t.call_and_ladj(z)[0], x)) < 1e-5  # a bisection per coordinate
        True
    """

    fast_direction = "inverse"

    def __init__(
        self,
        features: int,
        context: int = 0,
        hidden: Sequence[int] = (16, 16),
        context_hidden: Sequence[int] = (64, 64),
        iterations: int | None = None,
        param_scale: float = 10.0,
    ) -> None:
        super().__init__(features, context)
        hidden = check_hidden(hidden)
        d = features
        self.blocks = (1, *hidden, 1)
        self.iterations = iterations
        self.param_scale = check_real("param_scale", param_scale)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for k, (i, o) in enumerate(zip(self.blocks[:-1], self.blocks[1:])):
            # Diagonal blocks hold log-weights, started near 1/fan-in so that the gain along
            # x_i stays about 1 (tanh slopes <= 1), not a steep map. Lower blocks start small.
            w = 0.1 * torch.randn(d * o, d * i) / math.sqrt(i)
            diag = self._diag_mask(d, i, o).bool()
            w[diag] = -math.log(i) + 0.1 * torch.randn(int(diag.sum()))
            if o == 1:  # last layer: half the gain
                w[diag] -= math.log(2.0)
            # Spread biases: distinct kinks, so the units of a block are not copies.
            b = (2 * torch.rand(d * o) - 1) * (2.0 if k == 0 else 1.0)
            self.weights.append(nn.Parameter(w / self.param_scale))
            self.biases.append(nn.Parameter(b / self.param_scale))
            self.register_buffer(f"diag_mask_{k}", self._diag_mask(d, i, o))
            self.register_buffer(f"lower_mask_{k}", self._lower_mask(d, i, o))
        # At initialisation the slope is about 1.5 at the origin (the skip's 1 plus the
        # network's 1/2) and 1 in the tails, where tanh saturates.
        self.log_skip = nn.Parameter(torch.zeros(d))
        self.context_net = (
            MLP(context, d * hidden[0], check_hidden(context_hidden)) if context else None
        )

    @staticmethod
    def _diag_mask(d: int, i: int, o: int) -> Tensor:
        return torch.kron(torch.eye(d), torch.ones(o, i))

    @staticmethod
    def _lower_mask(d: int, i: int, o: int) -> Tensor:
        return torch.kron(torch.tril(torch.ones(d, d), diagonal=-1), torch.ones(o, i))

    def extra_repr(self) -> str:
        return (
            super().extra_repr() + f", hidden={self.blocks[1:-1]}, param_scale={self.param_scale:g}"
        )

    def _layers(self) -> list[tuple[Tensor, Tensor, Tensor, Tensor]]:
        """Per layer: the full masked weight, its diagonal blocks (d, o, i), lower part, bias."""
        d, out = self.features, []
        for k, (i, o) in enumerate(zip(self.blocks[:-1], self.blocks[1:])):
            raw = self.param_scale * self.weights[k]
            diag_mask, lower_mask = (
                getattr(self, f"diag_mask_{k}"),
                getattr(self, f"lower_mask_{k}"),
            )
            lower = raw * lower_mask
            full = raw.exp() * diag_mask + lower
            blocks = torch.diagonal(raw.view(d, o, d, i), dim1=0, dim2=2).permute(2, 0, 1).exp()
            out.append((full, blocks, lower, self.param_scale * self.biases[k]))
        return out

    def _skip(self) -> Tensor:
        """The skip's slopes :math:`e^{s}`, (d,)."""
        return (self.param_scale * self.log_skip).exp()

    def _shift(self, context: Tensor | None) -> Tensor | float:
        return 0.0 if self.context_net is None else self.context_net(context)

    def _network(self, x: Tensor, layers: list, shift: Tensor | float) -> tuple[Tensor, Tensor]:
        """``z = g(x) + e^s x`` and ``log dz_i/dx_i`` (the Jacobian's diagonal)."""
        d = self.features
        h, dh = x, None  # dh: (..., d, units) derivative of own-block units w.r.t. own x_i
        for k, (full, blocks, _, bias) in enumerate(layers):
            if k > 0:
                dh = _tanh_slope(h).unflatten(-1, (d, -1)) * dh
                h = torch.tanh(h)
            pre = F.linear(h, full, bias) + (shift if k == 0 else 0.0)
            dh = blocks[..., 0] if k == 0 else torch.einsum("...ki,koi->...ko", dh, blocks)
            h = pre
        skip = self._skip()
        return h + skip * x, torch.log(dh.squeeze(-1) + skip)

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, log_diag = self._network(x, self._layers(), self._shift(context))
        return z, log_diag.sum(-1)

    def _diagonal_path(
        self, t: Tensor, layers: list, offsets: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Each output ``i`` as a function of its own input ``t_i`` alone (the others frozen in
        ``offsets``), and its derivative; ``t`` (..., d) -> two (..., d)."""
        h, dh = t[..., None], torch.ones_like(t)[..., None]
        for k, (_, blocks, _, _) in enumerate(layers):
            if k > 0:
                dh = _tanh_slope(h) * dh
                h = torch.tanh(h)
            h = torch.einsum("...ki,koi->...ko", h, blocks) + offsets[k]
            dh = torch.einsum("...ki,koi->...ko", dh, blocks)
        skip = self._skip()
        return h.squeeze(-1) + skip * t, dh.squeeze(-1) + skip

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        d = self.features
        layers = self._layers()
        shift = self._shift(context)
        skip = self._skip()
        final, _, _, final_bias = layers[-1]
        bound = final.abs().sum(-1) + final_bias.abs()  # |g_i| <= bound_i (tanh inputs)
        if isinstance(shift, Tensor):  # the solver's target must have the full batch shape
            z = z.expand(*torch.broadcast_shapes(z.shape[:-1], shift.shape[:-1]), d)
        lo, hi = (z - bound) / skip, (z + bound) / skip
        x = z / skip
        for _ in range(d):
            # Frozen contributions of the other coordinates (lower blocks) at each layer.
            offsets, h = [], x
            for k, (full, _, lower, bias) in enumerate(layers):
                if k > 0:
                    h = torch.tanh(h)
                offset = F.linear(h, lower, bias) + (shift if k == 0 else 0.0)
                offsets.append(offset.unflatten(-1, (d, -1)))
                h = F.linear(h, full, bias) + (shift if k == 0 else 0.0)
            x = monotone_inverse(
                lambda t, o=offsets: self._diagonal_path(t, layers, o)[0],
                lambda t, o=offsets: self._diagonal_path(t, layers, o)[1],
                z,
                lo,
                hi,
                self.iterations,
            )
        _, log_diag = self._network(x, layers, shift)
        return x, -log_diag.sum(-1)
