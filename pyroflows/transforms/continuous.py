r"""Continuous normalizing flows: Neural ODE (Chen, Rubanova, Bettencourt & Duvenaud, "Neural
Ordinary Differential Equations", NeurIPS 2018) and FFJORD (Grathwohl, Chen, Bettencourt,
Sutskever & Duvenaud, "FFJORD: Free-form Continuous Dynamics for Scalable Reversible
Generative Models", ICLR 2019).

The map is the time-:math:`T` flow of an ODE whose vector field is a free-form network,

.. math::
    \frac{dz}{dt} = f(z(t), t; c), \qquad z(0) = z, \qquad x = z(T),

and the log-determinant follows from the instantaneous change of variables,
:math:`\frac{d}{dt}\log p(z(t)) = -\operatorname{tr}\frac{\partial f}{\partial z}`, so

.. math::
    \log\left|\det \frac{\partial x}{\partial z}\right|
    = \int_0^T \operatorname{tr}\frac{\partial f}{\partial z}(z(t), t)\, dt .

Both are integrated together (an augmented state :math:`(z, \ell)`) by an adaptive solver of
:mod:`torchdiffeq`. The inverse integrates the same system from :math:`T` back to :math:`0`,
so **both directions cost the same** (one solve each). Time is rescaled to :math:`s = t/T
\in [0, 1]`, :math:`\frac{dz}{ds} = T f(z, sT)`, so a trainable :math:`T` receives its gradient
through the vector field, identically for direct backpropagation and for the adjoint.

Trace: ``"exact"`` takes :math:`d` vector-Jacobian products per evaluation of :math:`f`
(:math:`O(d)` network passes); ``"hutchinson"`` takes one,
:math:`\operatorname{tr} J \approx \varepsilon^\top J \varepsilon` with
:math:`\mathbb{E}[\varepsilon\varepsilon^\top] = I` (Rademacher or Gaussian), the noise drawn
once per solve and held fixed during it (the ODE stays deterministic for the solver), which
makes the log-determinant an unbiased estimate.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint

from ..checks import check_choice, check_hidden, check_real
from ..nn.layers import zero_init
from ..nn.options import passes_keywords_to
from .base import Bijection
from .elementwise import register_values

try:  # the solvers torchdiffeq knows (private, but the public odeint checks against it)
    from torchdiffeq._impl.odeint import SOLVERS as _SOLVERS

    METHODS: tuple[str, ...] = tuple(sorted(_SOLVERS))
except ImportError:  # pragma: no cover - a future torchdiffeq layout
    METHODS = (
        "adaptive_heun",
        "bosh3",
        "dopri5",
        "dopri8",
        "euler",
        "explicit_adams",
        "fehlberg2",
        "heun2",
        "heun3",
        "implicit_adams",
        "midpoint",
        "rk4",
    )

__all__ = ["ContinuousFlow", "ODENet", "default_tolerances"]

#: Smooth activations only: the solver's error control and the trace need a smooth field
#: (ReLU makes :math:`\partial f/\partial z` piecewise constant and the field only Lipschitz).
ODE_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
}
TRACES = ("auto", "exact", "hutchinson")
NOISES = ("rademacher", "gaussian")
#: ``trace="auto"`` is exact up to this many features (then ``d`` VJPs cost at most 8 passes).
AUTO_EXACT_MAX = 8


def default_tolerances(dtype: torch.dtype) -> tuple[float, float]:
    r"""Default ``(rtol, atol)`` of the solver for a state of ``dtype``.

    * float64: ``(1e-10, 1e-10)``. dopri5's global error is a small multiple of the local
      tolerance, so a forward solve followed by the inverse solve returns to the input within
      about :math:`10^{-9}` (the property tests ask for :math:`10^{-8}`) and log-determinants
      agree with autograd to about :math:`10^{-9}`; fifth order means a 10-fold tighter
      tolerance costs only :math:`10^{1/5} \approx 1.6` times the steps.
    * float32: ``(1e-5, 1e-5)``, FFJORD's setting: machine epsilon is :math:`1.2\cdot10^{-7}`
      and the error of each step's rounding accumulates, so much tighter tolerances only add
      steps (or stall the step-size control) without improving the answer.
    * float16 / bfloat16: ``(1e-3, 1e-3)`` (prefer float32 for CNFs).
    """
    if dtype == torch.float64:
        return 1e-10, 1e-10
    if dtype == torch.float32:
        return 1e-5, 1e-5
    return 1e-3, 1e-3


class ODENet(nn.Module):
    r"""The vector field :math:`f(z, t; c)`: an MLP whose every layer also sees :math:`(t, c)`.

    Layer :math:`k` computes :math:`h_k = \sigma(W_k [h_{k-1}, t, c] + b_k)` (time and context
    concatenated at every layer, as FFJORD's ``ConcatLinear``); the output layer is
    zero-initialised, so the flow starts as the identity map.

    Args:
        features: size of :math:`z` (input and output).
        context: size of :math:`c`.
        hidden: widths of the hidden layers.
        activation: ``"tanh"`` (default), ``"softplus"`` or ``"silu"`` (smooth fields only).

    Shapes: ``z`` (..., d), ``t`` scalar, ``context`` (..., c) broadcast with ``z`` -> (..., d).
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        hidden: Sequence[int] = (64, 64),
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        hidden = check_hidden(hidden)
        # Only smooth activations: the field must be differentiable for the trace and the solver.
        check_choice("activation", activation, ODE_ACTIVATIONS)
        extra = 1 + context
        widths = (features, *hidden)
        self.layers = nn.ModuleList(
            nn.Linear(a + extra, b) for a, b in zip(widths[:-1], widths[1:])
        )
        self.activation = ODE_ACTIVATIONS[activation]()
        self.output = nn.Linear(hidden[-1] + extra, features)
        zero_init(self.output)

    def forward(self, z: Tensor, t: Tensor, context: Tensor | None = None) -> Tensor:
        tc = t.expand(*z.shape[:-1], 1)
        if context is not None:
            tc = torch.cat([tc, context], -1)
        h = z
        for layer in self.layers:
            h = self.activation(layer(torch.cat([h, tc], -1)))
        return self.output(torch.cat([h, tc], -1))


class _Dynamics:
    r"""The augmented field of one solve, in rescaled time :math:`s = t/T`:
    :math:`(dz/ds, d\ell/ds) = (T g, T \operatorname{tr} \partial g/\partial z)` with
    :math:`g = f(z, sT; c)`, plus with ``penalties`` the RNODE rates
    :math:`T\|g\|^2` and :math:`T\|\partial g/\partial z\|_F^2` (exact, or
    :math:`T\|\varepsilon^\top \partial g/\partial z\|^2` with Hutchinson's noise).

    Context and noise are bound for the solve; it is not a module, so nothing is stored on the
    flow.
    """

    def __init__(
        self,
        net: nn.Module,
        time: Tensor,
        context: Tensor | None,
        noise: Tensor | None,
        penalties: bool = False,
    ) -> None:
        self.net, self.time, self.context, self.noise = net, time, context, noise
        self.penalties = penalties
        self.evaluations = 0

    def __call__(self, s: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        self.evaluations += 1
        z = state[0]
        # Differentiable trace whenever someone will differentiate the result (direct
        # backpropagation, or the adjoint's backward solve, which runs under enable_grad).
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            if not (create_graph and z.requires_grad):
                # A fresh leaf: nothing upstream needs this state's graph (or it has none).
                z = z.detach().requires_grad_(True)
            g = self.net(z, s * self.time, self.context)
            if self.noise is None:
                rows = [
                    torch.autograd.grad(
                        g[..., i].sum(), z, create_graph=create_graph, retain_graph=True
                    )[0]
                    for i in range(g.shape[-1])
                ]
                trace = sum(row[..., i] for i, row in enumerate(rows))
                frobenius = sum(row.square().sum(-1) for row in rows) if self.penalties else None
            else:
                vjp = torch.autograd.grad(g, z, self.noise, create_graph=create_graph)[0]
                trace = (vjp * self.noise).sum(-1)
                frobenius = vjp.square().sum(-1) if self.penalties else None
        out = [self.time * g, self.time * trace]
        if self.penalties:
            # |T|: a trainable T may cross zero (the flow then runs backwards in time), and
            # the penalties are integrals over |dt|, non-negative either way.
            out += [self.time.abs() * g.square().sum(-1), self.time.abs() * frobenius]
        if not create_graph:
            out = [o.detach() for o in out]
        return tuple(out)


@passes_keywords_to(ODENet, "hidden", "activation")
class ContinuousFlow(Bijection):
    r"""A continuous normalizing flow block: :math:`x = z(T)`, :math:`dz/dt = f(z, t; c)`
    (Chen et al. 2018, https://arxiv.org/abs/1806.07366; Grathwohl et al. 2019, FFJORD).

    See the module docstring for the mathematics. **Fast in both directions**: sampling and
    density are one ODE solve each, of equal cost. Cost of a solve: NFE evaluations of the
    augmented field (NFE set by the adaptive solver: about 6 per dopri5 step, growing with the
    field's stiffness and the tolerance as :math:`\mathrm{tol}^{-1/5}`), each one network pass
    plus :math:`d` (exact trace) or 1 (Hutchinson) vector-Jacobian products.

    Args:
        features: event size :math:`d`.
        context: context size; the field takes the context as an input at every layer.
        time: integration time :math:`T` (default 1).
        train_time: make :math:`T` a trainable parameter (default) or a fixed buffer (any
            real :math:`T` gives a bijection; :math:`T = 0` is the identity).
        trace: ``"exact"`` (d VJPs per evaluation; exact log-determinant), ``"hutchinson"``
            (1 VJP; unbiased stochastic log-determinant, fresh noise per solve) or ``"auto"``
            (exact for :math:`d \le 8`, Hutchinson above).
        noise: Hutchinson's noise, ``"rademacher"`` (lower variance) or ``"gaussian"``.
        method: a :mod:`torchdiffeq` method (default ``"dopri5"``).
        rtol, atol: solver tolerances; ``None`` picks :func:`default_tolerances` of the
            input's dtype at call time.
        options: extra solver options passed to ``torchdiffeq`` (e.g. ``{"step_size": 0.05}``
            for fixed-grid methods).
        adjoint: use ``odeint_adjoint`` (memory :math:`O(1)` in the number of solver steps;
            gradients by a backward solve, accurate to the tolerance) instead of
            backpropagating through the solver's operations (memory grows with the steps).
        field: a custom vector field, a module called as ``field(z, t, context)`` returning
            ``dz/dt`` of the shape of ``z`` (replaces the :class:`ODENet`; ``hidden`` and
            ``activation`` are then unused).
        network: ``hidden`` and ``activation`` of the field's network (:class:`ODENet`).

    Shapes: ``z`` (..., d) and ``context`` (..., c) broadcast; the log-determinant has their
    broadcast batch shape. Time points and noise are created on the input's device and dtype.

    Example:
        >>> t = ContinuousFlow(2, hidden=(16, 16))
        >>> _ = torch.nn.init.normal_(t.net.output.weight, std=0.3)
        >>> z = torch.randn(5, 2, dtype=torch.float64)
        >>> t = t.double()
        >>> x, ladj = t.call_and_ladj(z)
        >>> bool((t.inverse_and_ladj(x)[0] - z).abs().max() < 1e-8)
        True
    """

    fast_direction = "both"

    def __init__(
        self,
        features: int,
        context: int = 0,
        *,
        time: float = 1.0,
        train_time: bool = True,
        trace: str = "auto",
        noise: str = "rademacher",
        method: str = "dopri5",
        rtol: float | None = None,
        atol: float | None = None,
        options: Mapping[str, Any] | None = None,
        adjoint: bool = False,
        field: nn.Module | None = None,
        **network: Any,
    ) -> None:
        super().__init__(features, context)
        for what, value, choices in (
            ("trace", trace, TRACES),
            ("noise", noise, NOISES),
            ("method", method, METHODS),
        ):
            check_choice(what, value, choices)
        for what, value in (("rtol", rtol), ("atol", atol)):
            if value is not None:
                check_real(what, value)
        check_real("time", time)
        if options is not None and not isinstance(options, Mapping):
            raise ValueError(
                f"options must be a dict of torchdiffeq solver options, got {type(options).__name__}"
            )
        for what, value in (("train_time", train_time), ("adjoint", adjoint)):
            if not isinstance(value, bool):
                raise ValueError(f"{what} must be True or False, got {value!r}")
        if field is not None and not isinstance(field, nn.Module):
            raise TypeError(
                f"field must be an nn.Module f(z, t, context), got {type(field).__name__}"
            )
        self.net = ODENet(features, context, **network) if field is None else field
        register_values(self, train_time, time=torch.tensor(float(time)))
        self.trace = trace
        self.exact = trace == "exact" or (trace == "auto" and features <= AUTO_EXACT_MAX)
        self.noise = noise
        self.method = method
        self.rtol, self.atol = rtol, atol
        self.options = dict(options) if options is not None else None
        self.adjoint = adjoint
        #: Function evaluations of the last solve (the ODE's cost; read for diagnostics).
        self.last_nfe = 0

    def extra_repr(self) -> str:
        trace = "exact" if self.exact else f"hutchinson-{self.noise}"
        return (
            f"{super().extra_repr()}, trace={trace}, method={self.method}"
            f"{', adjoint' if self.adjoint else ''}"
        )

    def _draw_noise(self, z: Tensor) -> Tensor:
        if self.noise == "rademacher":
            return torch.randint(0, 2, z.shape, device=z.device).to(z.dtype) * 2 - 1
        return torch.randn(z.shape, device=z.device, dtype=z.dtype)

    def _solve(
        self, y: Tensor, context: Tensor | None, reverse: bool, penalties: bool = False
    ) -> tuple[Tensor, ...]:
        if not isinstance(y, Tensor) or not y.is_floating_point():
            raise TypeError(
                f"input must be a floating-point tensor, got {getattr(y, 'dtype', type(y))}"
            )
        if context is not None:
            batch = torch.broadcast_shapes(y.shape[:-1], context.shape[:-1])
            y = y.expand(*batch, self.features)
            context = context.expand(*batch, self.context_features)
        zero = torch.zeros(y.shape[:-1], device=y.device, dtype=y.dtype)
        if y.numel() == 0:  # nothing to integrate (the solver's error norm of nothing is NaN)
            return (y.clone(), zero, zero, zero) if penalties else (y.clone(), zero)
        time = self.time.to(y.dtype)
        noise = None if self.exact else self._draw_noise(y)
        dynamics = _Dynamics(self.net, time, context, noise, penalties)
        default_rtol, default_atol = default_tolerances(y.dtype)
        rtol = default_rtol if self.rtol is None else self.rtol
        atol = default_atol if self.atol is None else self.atol
        span = [1.0, 0.0] if reverse else [0.0, 1.0]
        s = torch.tensor(span, device=y.device, dtype=y.dtype)
        state = (y, zero, zero, zero) if penalties else (y, zero)
        kwargs: dict[str, Any] = {
            "rtol": rtol,
            "atol": atol,
            "method": self.method,
            "options": self.options,
        }
        if self.adjoint:
            params = [p for p in self.parameters() if p.requires_grad]
            if context is not None and context.requires_grad:
                params.append(context)
            out = odeint_adjoint(dynamics, state, s, adjoint_params=tuple(params), **kwargs)
        else:
            out = odeint(dynamics, state, s, **kwargs)
        self.last_nfe = dynamics.evaluations
        y, ladj, *rest = (o[-1] for o in out)
        # Integrated from s=1 down to 0, the (positive) penalty integrals come out negated.
        return (y, ladj, *(-r if reverse else r for r in rest))

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._solve(z, context, reverse=False)

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._solve(x, context, reverse=True)

    def call_and_penalties(
        self, z: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""``(x, log|det dx/dz|, kinetic, frobenius)``: the forward map and the RNODE penalties
        of its trajectory (Finlay, Jacobsen, Nurbekyan & Oberman, "How to train your neural ODE:
        the world of Jacobian and kinetic regularization", ICML 2020),

        .. math::
            K = \int_0^T \|f(z(t), t)\|^2\,dt, \qquad
            B = \int_0^T \Bigl\|\frac{\partial f}{\partial z}\Bigr\|_F^2\,dt,

        :math:`B` exact with the exact trace and Hutchinson's unbiased
        :math:`\|\varepsilon^\top \partial f/\partial z\|^2` otherwise (same noise as the
        trace, so no extra VJP). Adding :math:`\lambda_K K + \lambda_B B` to the loss favours
        straight, well-conditioned trajectories, which the adaptive solver integrates in fewer
        steps. Shapes: the penalties have the log-determinant's shape.
        """
        return self._solve(z, context, reverse=False, penalties=True)  # type: ignore[return-value]

    def inverse_and_penalties(
        self, x: Tensor, context: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(z, log|det dz/dx|, kinetic, frobenius)``: the inverse map and the RNODE penalties
        of the same trajectory (see :meth:`call_and_penalties`; the penalties are positive in
        both directions)."""
        return self._solve(x, context, reverse=True, penalties=True)  # type: ignore[return-value]
