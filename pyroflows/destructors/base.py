r"""The destructor abstraction (Inouye & Ravikumar, "Deep density destructors", ICML 2018).

A *density destructor* is an invertible map :math:`D` from data to the unit cube
:math:`[0,1]^d` such that :math:`D(X)` is uniform when :math:`X` follows the destructor's
density :math:`p`; its Jacobian determinant *is* that density,
:math:`|\det J_D(x)| = p(x)`.

In pyroflows a destructor is a :class:`~pyroflows.transforms.Bijection` whose forward direction
goes data :math:`\to` cube: ``call_and_ladj(x)`` returns ``(D(x), log p(x))`` and
``inverse_and_ladj(u)`` returns ``(D^{-1}(u), -log p(D^{-1}(u)))``. On top of the bijection
protocol every destructor offers

* ``fit(x, weights=None) -> self``: closed form, EM or greedy fitting, without gradients, on
  the data's device and dtype; inputs are validated first and a failed fit restores the
  previous state, so nothing is ever half-updated;
* ``transform(x)``, ``inverse(u)``, ``log_prob(x)``, ``sample(n)``: checked public methods
  (clear errors for NaN/inf, wrong shapes, data outside the domain, ``u`` outside
  ``[0, 1]``, an unfitted destructor);
* ``domain``: what input it accepts, ``"real"`` (any finite vector) or ``"unit"`` (the cube).
  It is a genuine torch constraint (so Pyro and ``TransformedDistribution`` can use it) that
  also compares equal to its name: ``d.domain == "unit"``; ``d.domain_kind`` is the plain
  string;
* ``as_flow(base="uniform" | "normal")``: a :class:`~pyroflows.Flow` with the same density.

Fitted state lives in parameters (what gradient fine-tuning may change) and buffers (fixed
structure), so ``.to(device)``, ``state_dict`` and pickling work as for any module.

Numerical conventions: the forward and inverse passes use static shapes (no data-dependent
Python branching); ``inverse_and_ladj`` clamps ``u`` into the open cube before any
:math:`\Phi^{-1}` (see :mod:`pyroflows.destructors.special`), so a face of the cube maps to a
finite point.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions import constraints

from ..checks import check_features
from ..core import Flow
from ..nn.device import module_device_dtype
from ..transforms.base import Bijection, Inverse
from .special import normal_cdf, normal_icdf, normal_log_pdf

__all__ = [
    "REAL",
    "UNIT",
    "Chain",
    "Destructor",
    "DomainConstraint",
    "IdentityDestructor",
    "InverseNormalCdf",
    "StandardNormalCdf",
    "UnitCube",
    "check_no_constant_columns",
]


class DomainConstraint(constraints.Constraint):
    """A destructor's input domain: ``"real"`` (finite vectors) or ``"unit"`` (``[0,1]^d``).

    A torch constraint with ``event_dim = 1`` that also compares equal to its name, so
    ``destructor.domain == "unit"`` reads naturally while ``TransformedDistribution`` still sees
    a constraint.
    """

    event_dim = 1
    is_discrete = False

    def __init__(self, kind: str) -> None:
        if kind not in ("real", "unit"):
            raise ValueError(f"a destructor domain is 'real' or 'unit', got {kind!r}")
        self.kind = kind
        super().__init__()

    def check(self, value: Tensor) -> Tensor:
        if self.kind == "unit":
            return ((value >= 0) & (value <= 1)).all(-1)
        return torch.isfinite(value).all(-1)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return other == self.kind
        return isinstance(other, DomainConstraint) and other.kind == self.kind

    def __hash__(self) -> int:
        return hash(("pyroflows-domain", self.kind))

    def __str__(self) -> str:
        return self.kind

    def __repr__(self) -> str:
        return f"DomainConstraint({self.kind!r})"


REAL = DomainConstraint("real")
UNIT = DomainConstraint("unit")


def check_no_constant_columns(x: Tensor, weights: Tensor | None = None, what: str = "data",
                              rel: float | None = None) -> Tensor:
    """Weighted column variances of ``x``; raise a ValueError naming constant columns.

    A column counts as constant when its range (max - min) is below ``rel`` (default 100
    machine epsilons of the dtype) times its largest absolute value (at least 1).
    """
    rel = 100 * torch.finfo(x.dtype).eps if rel is None else rel
    w = torch.ones(x.shape[0], dtype=x.dtype, device=x.device) if weights is None else weights
    w = w / w.sum()
    mean = w @ x
    var = w @ (x - mean).square()
    scale = x.abs().amax(0).clamp_min(1.0)
    constant = ((x.amax(0) - x.amin(0) <= rel * scale) | (var <= 0)).nonzero().flatten()
    if constant.numel():
        raise ValueError(
            f"{what} has {constant.numel()} zero-variance column(s) {constant[:10].tolist()}: "
            "a continuous density over them is degenerate (drop them or add noise, e.g. "
            "dequantize discrete values)"
        )
    return var


class Destructor(Bijection):
    """Base class of density destructors: data :math:`\\to [0,1]^d`, log-det = log-density.

    Subclasses implement ``call_and_ladj``, ``inverse_and_ladj`` and ``_fit(x, w)`` (``x``
    already validated, ``w`` normalised weights summing to one, under ``torch.no_grad``), set
    :attr:`domain` (:data:`REAL` or :data:`UNIT`) and may override :meth:`min_points`.

    Args:
        features: dimension :math:`d` of the data.
    """

    domain = REAL
    codomain = UNIT

    def __init__(self, features: int) -> None:
        super().__init__(features)
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        # Follows .to(device, dtype) even in a destructor without floating state (not saved).
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    # -- what subclasses implement -------------------------------------------------------------

    def _fit(self, x: Tensor, w: Tensor) -> None:
        raise NotImplementedError

    def min_points(self) -> int:
        """Fewest training points ``fit`` accepts (default 2; ``features + 1`` for covariances)."""
        return 2

    # -- public API ------------------------------------------------------------------------------

    @property
    def domain_kind(self) -> str:
        """``"real"`` or ``"unit"``: the input this destructor accepts, as a string."""
        return self.domain.kind

    def _as_input(self, x: Any, what: str) -> Tensor:
        device, dtype = module_device_dtype(self)
        if isinstance(x, Tensor):
            tensor = x
        else:
            try:
                tensor = torch.as_tensor(np.asarray(x, dtype=np.float64))
            except (TypeError, ValueError) as error:
                raise TypeError(f"{what} must be a tensor or an array of numbers: {error}") from None
        if not tensor.is_floating_point():
            tensor = tensor.to(dtype)
        check_features(tensor, self.features, what)
        return tensor.to(device=device, dtype=dtype)

    def _check_values(self, x: Tensor, what: str, unit: bool) -> None:
        bad = ~torch.isfinite(x)
        if bad.any():
            rows = bad.reshape(-1, self.features).any(1).nonzero().flatten()[:5].tolist()
            raise ValueError(f"{what} has NaN or infinite values (rows {rows}, ...)")
        if unit:
            outside = (x < 0) | (x > 1)
            if outside.any():
                rows = outside.reshape(-1, self.features).any(1).nonzero().flatten()[:5].tolist()
                raise ValueError(
                    f"{what} must lie in the unit cube [0, 1]^{self.features}, but "
                    f"{int(outside.sum())} values lie outside (range [{float(x.min()):.4g}, "
                    f"{float(x.max()):.4g}], rows {rows}, ...)"
                )

    def _check_fitted(self) -> None:
        if not bool(self.fitted):
            raise RuntimeError(f"{type(self).__name__} is not fitted yet: call .fit(data) first")

    def fit(self, x: Tensor | np.ndarray, weights: Tensor | np.ndarray | None = None) -> Destructor:
        """Fit the destructor's density to ``x`` (n, features); returns ``self``.

        A floating-point tensor ``x`` moves the destructor to ``x``'s device and dtype first
        (other array-likes use the destructor's own). Raises ``ValueError`` for a wrong shape,
        NaN/inf, data outside :attr:`domain`, fewer than :meth:`min_points` points, bad
        weights, or (where the density needs it) zero-variance columns; on any error the
        previous fitted state is restored.

        Args:
            x: training data.
            weights: optional non-negative per-point weights (n,), not all zero.
        """
        if isinstance(x, Tensor) and x.is_floating_point():
            self.to(device=x.device, dtype=x.dtype)
        x = self._as_input(x, "fit data")
        if x.dim() != 2:
            raise ValueError(f"fit data must have shape (n, {self.features}), got {tuple(x.shape)}")
        self._check_values(x, "fit data", self.domain == "unit")
        n = x.shape[0]
        if n < self.min_points():
            raise ValueError(
                f"{type(self).__name__} needs at least {self.min_points()} points to fit "
                f"{self.features} dimensions, got {n}"
            )
        if weights is None:
            w = torch.full((n,), 1.0 / n, dtype=x.dtype, device=x.device)
        else:
            w = torch.as_tensor(weights).to(device=x.device, dtype=x.dtype).reshape(-1)
            if w.shape[0] != n:
                raise ValueError(f"weights has {w.shape[0]} values but the data has {n} rows")
            if not torch.isfinite(w).all() or (w < 0).any() or not w.sum() > 0:
                raise ValueError("weights must be finite and non-negative with a positive sum")
            w = w / w.sum()
        state = copy.deepcopy(self.state_dict())
        try:
            with torch.no_grad():
                self._fit(x.detach(), w)
                _mark_fitted(self)
        except BaseException:
            self.load_state_dict(state)
            raise
        return self

    def transform(self, x: Tensor | np.ndarray) -> Tensor:
        """Map data (..., features) to the unit cube (checked: finite, inside the domain)."""
        self._check_fitted()
        x = self._as_input(x, "input")
        self._check_values(x, "input", self.domain == "unit")
        return self.call_and_ladj(x)[0]

    def log_prob(self, x: Tensor | np.ndarray) -> Tensor:
        """Log-density (...,) of data (..., features) (checked like :meth:`transform`)."""
        self._check_fitted()
        x = self._as_input(x, "input")
        self._check_values(x, "input", self.domain == "unit")
        return self.call_and_ladj(x)[1]

    def inverse(self, u: Tensor | np.ndarray) -> Tensor:
        """Map points of the unit cube back to data space.

        Values outside ``[0, 1]`` (or NaN) raise ``ValueError``; values on the cube's faces are
        clamped to the nearest interior point where the inverse needs it (documented clamp).
        """
        self._check_fitted()
        u = self._as_input(u, "inverse input")
        self._check_values(u, "inverse input", True)
        return self.inverse_and_ladj(u)[0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` points: uniform points of the cube mapped through :meth:`inverse`."""
        self._check_fitted()
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        device, dtype = module_device_dtype(self)
        u = torch.rand(n, self.features, generator=generator, dtype=dtype)
        with torch.no_grad():
            return self.inverse_and_ladj(u.to(device))[0]

    def score(self, x: Tensor | np.ndarray) -> float:
        """Mean log-likelihood per point of ``x`` in nats."""
        with torch.no_grad():
            return float(self.log_prob(x).mean())

    def as_flow(self, base: str = "uniform") -> Flow:
        """A :class:`~pyroflows.Flow` with this destructor's density (parameters shared).

        Args:
            base: ``"uniform"``: uniform base on the cube and the transform
                ``Inverse(destructor)`` (exact); ``"normal"``: standard normal base, a
                :math:`\\Phi` layer, then ``Inverse(destructor)`` (a real-valued latent, e.g.
                for code that assumes one).
        """
        self._check_fitted()
        device, dtype = module_device_dtype(self)
        if base == "uniform":
            flow = Flow([Inverse(self)], base=UnitCube(self.features))
        elif base == "normal":
            flow = Flow([StandardNormalCdf(self.features), Inverse(self)])
        else:
            raise ValueError(f"base must be 'uniform' or 'normal', got {base!r}")
        return flow.to(device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return f"features={self.features}, domain={self.domain_kind!r}"


def _mark_fitted(module: nn.Module) -> None:
    for sub in module.modules():
        if isinstance(sub, Destructor):
            sub.fitted.fill_(True)


class _ClosedUniform(dist.Uniform):
    """Uniform whose log-density is finite on the closed interval (destructors reach 1.0)."""

    def log_prob(self, value: Tensor) -> Tensor:
        inside = (value >= self.low) & (value <= self.high)
        log_density = -(self.high - self.low).log()
        shape = torch.broadcast_shapes(value.shape, log_density.shape)
        return torch.where(inside, log_density.expand(shape),
                           torch.full(shape, -torch.inf, dtype=value.dtype, device=value.device))


class UnitCube(nn.Module):
    """Uniform base on :math:`[0,1]^d` that follows the module's device and dtype (buffers)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = features
        self.register_buffer("low", torch.zeros(features))
        self.register_buffer("high", torch.ones(features))

    def forward(self, batch_shape: torch.Size = torch.Size()) -> dist.TorchDistribution:
        base = _ClosedUniform(self.low, self.high, validate_args=False).to_event(1)
        return base.expand(batch_shape) if batch_shape else base


class StandardNormalCdf(Bijection):
    r""":math:`u = \Phi(z)` elementwise: real :math:`\to` unit cube (not fitted, no parameters)."""

    codomain = UNIT

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return normal_cdf(z), normal_log_pdf(z).sum(-1)

    def inverse_and_ladj(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z = normal_icdf(u)
        return z, -normal_log_pdf(z).sum(-1)


class InverseNormalCdf(Bijection):
    r""":math:`z = \Phi^{-1}(u)` elementwise: unit cube :math:`\to` real (clamped at the faces)."""

    domain = UNIT

    def call_and_ladj(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z = normal_icdf(u)
        return z, -normal_log_pdf(z).sum(-1)

    def inverse_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return normal_cdf(z), normal_log_pdf(z).sum(-1)


class IdentityDestructor(Destructor):
    """The uniform density on the cube: :math:`D(u) = u`, log-density 0.

    What a deep destructor puts in place of a layer that would lower the training likelihood
    (the talk's monotonicity argument: the identity is always available).
    """

    domain = UNIT

    def __init__(self, features: int) -> None:
        super().__init__(features)
        self.fitted.fill_(True)

    def _fit(self, x: Tensor, w: Tensor) -> None:
        pass

    def call_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x, x.new_zeros(x.shape[:-1])

    def inverse_and_ladj(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return u, u.new_zeros(u.shape[:-1])


class Chain(Destructor):
    """Bijections applied in order, the last mapping onto the cube; fitted part by part.

    ``Chain([InverseNormalCdf(d), PCARotation(d), NormalCdfDestructor(d)])`` is a destructor
    on the cube: each fittable part (one with ``_fit``) is fitted on the output of the parts
    before it, and the sum of the log-determinants is the chain's log-density. The chain's
    domain is its first part's.

    Args:
        parts: pyroflows bijections, data side first; the last must map onto the cube.
    """

    def __init__(self, parts: Sequence[Bijection]) -> None:
        parts = list(parts)
        if not parts:
            raise ValueError("Chain needs at least one part")
        features = parts[0].features
        if any(p.features != features for p in parts):
            raise ValueError(f"all parts must have the same features, got {[p.features for p in parts]}")
        if parts[-1].codomain is not UNIT and parts[-1].codomain != "unit":
            raise ValueError("the last part of a Chain must map onto the unit cube")
        super().__init__(features)
        self.parts = nn.ModuleList(parts)
        first = parts[0].domain
        self.domain = UNIT if first == "unit" else REAL
        if any(getattr(p, "fast_direction", "both") == "forward" for p in parts):
            self.fast_direction = "forward"

    def min_points(self) -> int:
        return max((p.min_points() for p in self.parts if hasattr(p, "min_points")), default=2)

    def _fit(self, x: Tensor, w: Tensor) -> None:
        for part in self.parts:
            if hasattr(part, "_fit"):
                part._fit(x, w)
                _mark_fitted(part)
            x = part.call_and_ladj(x)[0]

    def call_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[:-1])
        for part in self.parts:
            x, ladj = part.call_and_ladj(x)
            total = total + ladj
        return x, total

    def inverse_and_ladj(self, u: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = u.new_zeros(u.shape[:-1])
        for part in reversed(self.parts):
            u, ladj = part.inverse_and_ladj(u)
            total = total + ladj
        return u, total
