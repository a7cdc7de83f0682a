r"""Reversible training of exactly invertible stacks (RevNet; Gomez, Ren, Urtasun & Grosse, "The
Reversible Residual Network: Backpropagation Without Storing Activations", NeurIPS 2017).

Backpropagating through a stack :math:`y = T_n \circ \dots \circ T_1(x)` normally keeps every
layer's intermediate tensors alive until the backward pass, so activation memory grows linearly
with the depth :math:`n`. A flow's layers are bijections, so the input of each layer can be
*recomputed* from its output instead of stored:

.. math::
    h_{k-1} = T_k^{-1}(h_k), \qquad k = n, \dots, 1,

walking the stack backwards from the one stored tensor :math:`h_n = y`. Re-running
:math:`T_k` on the reconstructed :math:`h_{k-1}` with gradients gives the vector-Jacobian
products for :math:`h_{k-1}`, the context and the layer's parameters; the layer's graph is freed
before the next one is built. Memory for activations is then that of one layer (plus the
output), whatever the depth, for about one extra inverse and one extra forward pass per layer.

Numerical caveat: the reconstruction is only as good as the inverse. For the layers accepted
here (coupling layers with additive, affine or rational-quadratic spline maps, permutations,
ActNorm, LU and triangular linear layers, elementwise affine maps) the inverse is exact in exact
arithmetic, and rounding makes the reconstructed :math:`h_{k-1}` differ from the true one by a
few units in the last place per layer. That error is carried down the stack and amplified by
the inverses' Lipschitz constants, so it grows with depth: measured on 32-layer stacks
(``benchmarks/reversible_memory.py``), gradients agree with ordinary backpropagation to
:math:`10^{-15}`–:math:`10^{-13}` relative in float64; in float32 to about :math:`4\cdot10^{-7}`
for ``nice`` and ``realnvp`` but only :math:`10^{-3}` for ``nsf-coupling`` (splines and LU
layers), twenty times float32's own error. ``checkpoint_every=k`` stores every :math:`k`-th
layer's input, so errors accumulate over at most :math:`k` layers (:math:`10^{-6}` for that
stack with :math:`k = 8`). Layers whose inverse is itself numerical (bisection, fixed-point
iteration: UMNN, NAF, planar, Sylvester, ...) are refused with a TypeError.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..checks import check_count
from .base import Bijection, Compose, Inverse
from .coupling import Coupling
from .elementwise import Elementwise

__all__ = ["ReversibleCompose", "is_exactly_invertible"]


def is_exactly_invertible(layer: Bijection) -> bool:
    """Whether ``layer``'s input can be recomputed from its output by a closed-form inverse.

    A class (or instance) attribute ``exact_inverse`` decides when present: the layers with
    a closed-form inverse set it (:class:`~pyroflows.transforms.ActNorm`,
    :class:`~pyroflows.transforms.ElementwiseAffine`,
    :class:`~pyroflows.transforms.HouseholderRotation`,
    :class:`~pyroflows.transforms.LowerTriangularAffine`,
    :class:`~pyroflows.transforms.LULinear`, :class:`~pyroflows.transforms.Permutation`), a new
    layer opts in with ``exact_inverse = True`` and a subclass of an accepted layer opts out
    with ``False``. Otherwise: :class:`Compose` and :class:`Inverse` when all their parts are;
    :class:`Coupling` and :class:`Elementwise` when their elementwise map is (the additive,
    affine and rational-quadratic spline maps set the same attribute, and an
    :class:`~pyroflows.transforms.InverseMap` has its map's). Autoregressive layers are
    refused: their inverse costs ``features`` sequential passes.

    Example:
        >>> from pyroflows.transforms import AffineMap, Coupling, Planar
        >>> is_exactly_invertible(Coupling(4, AffineMap())), is_exactly_invertible(Planar(4))
        (True, False)
    """
    flag = getattr(layer, "exact_inverse", None)
    if flag is not None:
        return bool(flag)
    if isinstance(layer, Compose):
        return all(is_exactly_invertible(p) for p in layer.parts)
    if isinstance(layer, Inverse):
        return is_exactly_invertible(layer.bijection)
    if isinstance(layer, (Coupling, Elementwise)):
        return bool(getattr(layer.map, "exact_inverse", False))
    return False


@dataclass
class _Spec:
    """What the autograd function needs besides tensors: the layers in the order they run."""

    layers: list[Bijection]
    inverse: bool  # True: each layer's inverse_and_ladj runs (density); False: call_and_ladj
    params: list[Tensor]  # the stack's parameters, also passed to apply() as inputs
    param_index: list[list[int]]  # per layer, positions of its parameters in ``params``
    checkpoint_every: int  # store the input of every k-th layer (0: store none)


def _run(
    layer: Bijection, inverse: bool, h: Tensor, context: Tensor | None
) -> tuple[Tensor, Tensor]:
    context = context if layer.context_features else None
    return (layer.inverse_and_ladj if inverse else layer.call_and_ladj)(h, context)


class _Reversible(torch.autograd.Function):
    """Runs the layers without recording a graph; backward rebuilds each layer's input."""

    @staticmethod
    def forward(
        ctx: Any, spec: _Spec, h: Tensor, context: Tensor | None, *params: Tensor
    ) -> tuple[Tensor, Tensor]:
        total: Tensor | float = 0.0
        checkpoints = []
        for k, layer in enumerate(spec.layers):
            if spec.checkpoint_every and k % spec.checkpoint_every == 0:
                checkpoints.append(h)
            h, ladj = _run(layer, spec.inverse, h, context)
            total = total + ladj
        modules = (m for layer in spec.layers for m in layer.modules())
        if spec.checkpoint_every != 1 and any(
            getattr(m, "_is_initialized", True) is False for m in modules
        ):
            # An ActNorm-like layer with data-dependent initialisation: reconstructing its input
            # would call its inverse, which initialises it from data in the middle of backward.
            raise ValueError(
                "ReversibleCompose: an ActNorm layer is not initialised yet; initialise it first "
                "(one log_prob of a data batch, or ActNorm.initialize) before reversible training "
                "in the sampling direction"
            )
        ctx.spec = spec
        ctx.save_for_backward(h, context, *checkpoints)
        return h, total

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_h: Tensor, grad_total: Tensor) -> tuple[Tensor | None, ...]:
        spec: _Spec = ctx.spec
        h, context, *checkpoints = ctx.saved_tensors
        need_h, need_context = ctx.needs_input_grad[1], ctx.needs_input_grad[2]
        need_param = ctx.needs_input_grad[3:]
        param_grads: list[Tensor | None] = [None] * len(need_param)
        grad_context = None
        h = h.detach()
        for k in range(len(spec.layers) - 1, -1, -1):
            layer = spec.layers[k]
            conditional = context is not None and layer.context_features > 0
            if spec.checkpoint_every and k % spec.checkpoint_every == 0:
                h_in = checkpoints[k // spec.checkpoint_every]  # stored: no reconstruction error
            else:
                with torch.no_grad():  # the layer's input, from its output by the exact inverse
                    h_in = _run(layer, not spec.inverse, h, context)[0]
            with torch.enable_grad():
                h_in = h_in.detach().requires_grad_(k > 0 or need_h)
                c_in = context.detach().requires_grad_(need_context) if conditional else None
                out, ladj = _run(layer, spec.inverse, h_in, c_in)
                inputs: list[Tensor] = []
                if h_in.requires_grad:
                    inputs.append(h_in)
                if conditional and need_context:
                    inputs.append(c_in)
                wanted = [i for i in spec.param_index[k] if need_param[i]]
                inputs += [spec.params[i] for i in wanted]
                if not inputs:
                    h = h_in.detach()
                    continue
                grad_ladj = (
                    grad_total.sum_to_size(ladj.shape)
                    if ladj.shape != grad_total.shape
                    else grad_total
                )
                outputs = [(out, grad_h)] + ([(ladj, grad_ladj)] if ladj.requires_grad else [])
                grads = list(
                    torch.autograd.grad(
                        [o for o, _ in outputs if o.requires_grad],
                        inputs,
                        [g for o, g in outputs if o.requires_grad],
                        allow_unused=True,
                    )
                )
            if h_in.requires_grad:
                g = grads.pop(0)
                grad_h = torch.zeros_like(h_in) if g is None else g
            if conditional and need_context:
                g = grads.pop(0)
                if g is not None:
                    grad_context = g if grad_context is None else grad_context + g
            for i, g in zip(wanted, grads):
                if g is not None:
                    param_grads[i] = g if param_grads[i] is None else param_grads[i] + g
            h = h_in.detach()
        return (None, grad_h if need_h else None, grad_context, *param_grads)


class ReversibleCompose(Compose):
    r"""A :class:`Compose` of exactly invertible layers trained without storing activations.

    Outputs and log-determinants are those of ``Compose(parts)`` (same operations, same order).
    When gradients are needed, the layers run inside one autograd function that keeps only the
    stack's output; its backward walks the layers in reverse, rebuilds each layer's input from
    its output with the layer's exact inverse (under ``no_grad``), re-runs the layer with
    gradients and takes its vector-Jacobian products for the input, the context and the
    layer's parameters (Gomez et al., "The Reversible Residual Network", NeurIPS 2017, https://arxiv.org/abs/1707.04585). Saved
    activation memory is therefore constant in the depth instead of linear; a training step
    costs about one extra inverse and one extra forward pass per layer.

    Both directions are reversible: ``inverse_and_ladj`` (``log_prob``, maximum likelihood)
    and ``call_and_ladj`` (``rsample``, variational inference). Without gradients (``no_grad``
    or nothing requiring grad) it is a plain :class:`Compose`.

    Args:
        parts: exactly invertible bijections (see :func:`is_exactly_invertible`), base side
            first. Others raise a TypeError naming the layer.
        checkpoint_every: ``k > 0`` also stores the input of every ``k``-th layer (in the order
            they run), so the reconstruction restarts from a stored tensor every ``k`` layers
            and its rounding error accumulates over at most ``k`` layers; this costs one
            ``(batch, features)`` tensor per ``k`` layers, still far less than a layer's
            activations. ``k = 1`` is plain recomputation (activation checkpointing per layer,
            no inverse used, gradients as ordinary backpropagation). ``0`` (default) stores
            nothing but the output.

    Shapes: as :class:`Compose`; an input with fewer batch dimensions than the context is
    expanded to the broadcast batch shape first (its gradient is summed back).

    Caveats: the gradients differ from ordinary backpropagation by the reconstruction's
    rounding error, which grows with depth (below 1e-12 relative in float64; in float32 from
    4e-7 for 32 affine couplings to 1e-3 for 32 spline couplings with LU layers, see the
    module notes and ``checkpoint_every``); the backward pass is not itself differentiable (no
    double backward); layers must be deterministic (no dropout) and must not update state in
    their forward pass other than ActNorm's one-off initialisation. Under ``torch.compile`` the
    stack runs as a plain :class:`Compose` (same values, activations stored), because dynamo
    cannot trace a backward pass that calls autograd itself.

    Example:
        >>> from pyroflows.transforms import AffineMap, Coupling, alternating_mask
        >>> parts = [Coupling(4, AffineMap(), alternating_mask(4, i), hidden=(8,)) for i in range(6)]
        >>> rev, plain = ReversibleCompose(parts), Compose(parts)
        >>> x = torch.randn(10, 4)
        >>> z, ladj = rev.inverse_and_ladj(x)
        >>> torch.equal(z, plain.inverse_and_ladj(x)[0])
        True
        >>> (z.square().sum() - ladj.sum()).backward()  # gradients reach every parameter
        >>> all(p.grad is not None for p in rev.parameters())
        True
    """

    def __init__(self, parts: Sequence[Bijection], checkpoint_every: int = 0) -> None:
        check_count("checkpoint_every", checkpoint_every, 0)
        parts = list(parts)
        for i, part in enumerate(parts):
            if isinstance(part, Bijection) and not is_exactly_invertible(part):
                raise TypeError(
                    f"ReversibleCompose needs exactly invertible layers (its backward pass rebuilds "
                    f"each layer's input from its output); part {i}, {type(part).__name__}, has no "
                    "closed-form inverse. Set exact_inverse = True on the class if it has one."
                )
        super().__init__(parts)
        self.checkpoint_every = checkpoint_every

    def _reversible(
        self, h: Tensor, context: Tensor | None, inverse: bool
    ) -> tuple[Tensor, Tensor]:
        # Dynamo cannot trace a backward pass that calls autograd itself, so compiled code runs
        # the plain stack (same values, activations stored) and fullgraph compilation works.
        compiling = torch.compiler.is_compiling()
        params = [] if compiling else list(self.parameters())
        needs_grad = (
            not compiling
            and torch.is_grad_enabled()
            and (
                h.requires_grad
                or (context is not None and context.requires_grad)
                or any(p.requires_grad for p in params)
            )
        )
        if not needs_grad:
            return (
                Compose.inverse_and_ladj(self, h, context)
                if inverse
                else Compose.call_and_ladj(self, h, context)
            )
        layers = list(reversed(self.parts)) if inverse else list(self.parts)
        if context is not None and any(p.context_features for p in layers):
            batch = torch.broadcast_shapes(h.shape[:-1], context.shape[:-1])
            if batch != h.shape[:-1]:
                h = h.expand(*batch, h.shape[-1])  # every layer then sees the full batch
        position = {id(p): i for i, p in enumerate(params)}
        index = [[position[id(p)] for p in layer.parameters()] for layer in layers]
        spec = _Spec(layers, inverse, params, index, self.checkpoint_every)
        return _Reversible.apply(spec, h, context, *params)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text + (
            f", checkpoint_every={self.checkpoint_every}" if self.checkpoint_every else ""
        )

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._reversible(z, context, inverse=False)

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._reversible(x, context, inverse=True)
