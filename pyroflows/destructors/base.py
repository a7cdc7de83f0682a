r"""The destructor abstraction (Inouye & Ravikumar, "Deep density destructors", ICML 2018, https://proceedings.mlr.press/v80/inouye18a.html).

A *density destructor* is an invertible map :math:`D` from data to the unit cube
:math:`[0,1]^d` such that :math:`D(X)` is uniform when :math:`X` follows the destructor's
density :math:`p`; its Jacobian determinant *is* that density,
:math:`|\det J_D(x)| = p(x)`.

In pyroflows a destructor is a :class:`~pyroflows.transforms.Bijection` whose call goes
data :math:`\to` cube: ``call_and_ladj(x)`` returns ``(D(x), log p(x))`` and
``inverse_and_ladj(u)`` returns ``(D^{-1}(u), -log p(D^{-1}(u)))``. On top of the bijection
protocol every destructor offers

* ``fit(x, weights=None) -> self``: closed form, EM or greedy fitting, without gradients, on
  the data's device and dtype; inputs are validated first and a failed fit restores the
  previous state, so nothing is ever half-updated;
* ``to_uniform(x)`` (data to the cube), ``from_uniform(u)`` (the cube to data),
  ``log_prob(x)``, ``sample(n)``: checked public methods (clear errors for NaN/inf, wrong
  shapes, data outside the domain, ``u`` outside ``[0, 1]``, an unfitted destructor);
* ``domain``: what input it accepts, ``"real"`` (any finite vector) or ``"unit"`` (the cube).
  It is a genuine torch constraint (so Pyro and ``TransformedDistribution`` can use it) that
  also compares equal to its name: ``d.domain == "unit"``; ``d.domain_kind`` is the plain
  string;
* ``as_flow(base="uniform" | "normal")``: a :class:`~pyroflows.Flow` with the same density.

**Directions.** ``fast_direction`` means what it means for every pyroflows transform: which of
``call_and_ladj`` (``"forward"``) and ``inverse_and_ladj`` (``"inverse"``) is a single pass, the
one :meth:`~pyroflows.transforms.Bijection.log_abs_det_jacobian` computes through. A
destructor's call is :math:`D` (data to cube), so the flow transform of its density, base to
data, is ``Inverse(destructor)`` (what :meth:`Destructor.as_flow` builds), whose direction is
swapped. For example a mixture's :math:`D` is closed form and :math:`D^{-1}` bisects: the
mixture says ``"forward"``, and its flow transform says ``"inverse"`` (density is the single
pass, as for MAF).

Fitted state lives in parameters (what gradient fine-tuning may change) and buffers (fixed
structure), so ``.to(device)``, ``state_dict`` and pickling work as for any module.

Numerical conventions: the forward and inverse passes use static shapes (no data-dependent
Python branching); ``inverse_and_ladj`` clamps ``u`` into the open cube before any
:math:`\Phi^{-1}` (see :mod:`pyroflows.destructors.special`), so a face of the cube maps to a
finite point.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import constraints

from ..checks import check_features
from ..collectives import Ranks, row_checksum, together, use_group
from ..core import Flow
from ..nn.device import module_device_dtype
from ..nn.transaction import Transactional, transaction
from ..transforms.base import Bijection, Inverse
from .cube import StandardNormalCdf, UnitCube
from .domain import REAL, UNIT
from .shards import current, extremes, sharded, total

__all__ = ["Destructor", "IdentityDestructor", "check_no_constant_columns", "mark_fitted"]


def check_no_constant_columns(
    x: Tensor, weights: Tensor | None = None, what: str = "data", rel: float | None = None
) -> Tensor:
    """Weighted column variances (features,) of ``x`` (n, features); raise a ValueError naming
    constant columns.

    A column counts as constant when its range (max - min) is below ``rel`` (default 100
    machine epsilons of the dtype) times its largest absolute value (at least 1). Inside a
    data-parallel fit the statistics are those of every rank's rows.

    Example:
        >>> check_no_constant_columns(torch.tensor([[0.0, 1.0], [2.0, 1.0]]))
        Traceback (most recent call last):
        ValueError: data has 1 zero-variance column(s) [1]: ...
    """
    rel = 100 * torch.finfo(x.dtype).eps if rel is None else rel
    w = torch.ones(x.shape[0], dtype=x.dtype, device=x.device) if weights is None else weights
    w = w / total(w.sum())
    mean = total(w @ x)
    var = total(w @ (x - mean).square())
    low, high = extremes(x)
    scale = torch.maximum(low.abs(), high.abs()).clamp_min(1.0)
    constant = ((high - low <= rel * scale) | (var <= 0)).nonzero().flatten()
    if constant.numel():
        raise ValueError(
            f"{what} has {constant.numel()} zero-variance column(s) {constant[:10].tolist()}: "
            "a continuous density over them is degenerate (drop them or add noise, e.g. "
            "dequantize discrete values)"
        )
    return var


def mark_fitted(module: nn.Module) -> None:
    """Set the ``fitted`` flag of ``module`` and of every destructor inside it."""
    for sub in module.modules():
        if isinstance(sub, Destructor):
            sub.fitted.fill_(True)


class Destructor(Transactional, Bijection):
    """Base class of density destructors: data :math:`\\to [0,1]^d`, log-det = log-density.

    Subclasses implement ``call_and_ladj`` (data to cube, with :math:`\\log p(x)`),
    ``inverse_and_ladj`` and ``_fit(x, w)`` (``x`` already validated, ``w`` normalised weights
    summing to one, under ``torch.no_grad``), set :attr:`domain` (:data:`REAL` or
    :data:`UNIT`), set ``fast_direction = "forward"`` when only :math:`D` is a single pass
    (see the module docstring), and may override :meth:`min_points`.

    Args:
        features: dimension :math:`d` of the data.

    Example:
        >>> from pyroflows.destructors import GaussianDestructor
        >>> d = GaussianDestructor(2).fit(torch.randn(500, 2, dtype=torch.float64))
        >>> u = d.to_uniform(torch.zeros(4, 2, dtype=torch.float64))   # (4, 2) in [0, 1]^2
        >>> torch.allclose(d.from_uniform(u), torch.zeros(4, 2, dtype=torch.float64))
        True
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

    # -- checks shared by the public methods -----------------------------------------------------

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
                raise TypeError(
                    f"{what} must be a tensor or an array of numbers: {error}"
                ) from None
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

    def _checked(self, x: Any, what: str, unit: bool) -> Tensor:
        """``x`` as a tensor on this destructor's device and dtype, after every input check."""
        self._check_fitted()
        x = self._as_input(x, what)
        self._check_values(x, what, unit)
        return x

    # -- public API ------------------------------------------------------------------------------

    def fit(
        self,
        x: Tensor | np.ndarray,
        weights: Tensor | np.ndarray | None = None,
        *,
        distributed: bool | str = "auto",
    ) -> Destructor:
        """Fit the destructor's density to ``x`` (n, features); returns ``self``.

        A floating-point tensor ``x`` moves the destructor to ``x``'s device and dtype first
        (other array-likes use the destructor's own). Raises ``ValueError`` for a wrong shape,
        NaN/inf, data outside :attr:`domain`, fewer than :meth:`min_points` points, bad
        weights, or (where the density needs it) zero-variance columns. A fit is a
        transaction: on any error, KeyboardInterrupt included, the destructor is left exactly
        as before the call (values, dtype, layers, ``fitted`` flags), and the error re-raised.

        **Several processes.** Under ``torch.distributed`` (e.g. ``torchrun``) with
        ``distributed="auto"`` (or ``True``) each rank passes *its own* rows, and every rank
        ends with the destructor fitted on all the ranks' rows (in rank order, weights
        normalised over all of them), from all-reduced sufficient statistics (see
        :mod:`pyroflows.destructors.shards`); equal to a one-process fit on the concatenated
        rows up to the order of floating-point additions. A rank may hold no rows. Checks
        fail on every rank or on none; ranks that pass identical rows are an error (each
        would count the rows ``world`` times): pass ``distributed=False`` for independent
        fits on each rank.

        Args:
            x: training data.
            weights: optional non-negative per-point weights (n,), not all zero.
            distributed: ``"auto"``, ``True`` or ``False``, as for :func:`~pyroflows.infer.fit`.
        """
        nested = current()  # the part of a chain or a deep stack fits on its parent's group
        # One transaction: the dtype move, the checks and the fit all undo on any exception
        # (KeyboardInterrupt included), so the destructor is left exactly as it was.
        with transaction(self):
            if isinstance(x, Tensor) and x.is_floating_point():
                self.to(device=x.device, dtype=x.dtype)
            ranks, device = nested, module_device_dtype(self)[0]
            if nested is None and use_group(distributed, device):
                ranks = Ranks(device)
            with sharded(ranks):
                with together(ranks, f"{type(self).__name__}.fit"):
                    x, w = self._fit_inputs(x, weights)
                w = self._normalised(x, w, check_copies=nested is None)
                with torch.no_grad():
                    self._fit(x.detach(), w)
                    mark_fitted(self)
        return self

    def _fit_inputs(self, x: Any, weights: Any) -> tuple[Tensor, Tensor | None]:
        """``fit``'s data (n, features) and weights (n,) or ``None``, checked row by row."""
        x = self._as_input(x, "fit data")
        if x.dim() != 2:
            raise ValueError(f"fit data must have shape (n, {self.features}), got {tuple(x.shape)}")
        self._check_values(x, "fit data", self.domain == "unit")
        if weights is None:
            return x, None
        n = x.shape[0]
        if not isinstance(weights, Tensor):  # host data, converted on the CPU
            weights = torch.as_tensor(np.asarray(weights, dtype=np.float64), device="cpu")
        w = weights.to(device=x.device, dtype=x.dtype)
        if tuple(w.shape) not in ((n,), (n, 1)):
            raise ValueError(f"weights must have shape ({n},) for {n} rows, got {tuple(w.shape)}")
        w = w.reshape(n)
        if not torch.isfinite(w).all() or (w < 0).any():
            raise ValueError("weights must be finite and non-negative with a positive sum")
        return x, w

    def _normalised(self, x: Tensor, w: Tensor | None, check_copies: bool) -> Tensor:
        """The weights (n,) divided by their total over every rank's rows, after the checks
        that need all the rows (their number, the weights' sum, no rank passing a copy)."""
        ranks = current()
        n = x.shape[0]
        plain = w is None
        w = torch.ones(n, dtype=x.dtype, device=x.device) if plain else w
        if ranks is None:
            rows, weight = n, w.sum()
        else:
            if check_copies:
                self._check_distinct_shards(ranks, x)
            count = torch.tensor(float(n), dtype=torch.float64, device=x.device)
            rows_t, weight = ranks.sum(count, w.sum())
            rows = int(rows_t)
        where = "" if ranks is None else f" over {ranks.world} ranks"
        if rows < self.min_points():
            raise ValueError(
                f"{type(self).__name__} needs at least {self.min_points()} points to fit "
                f"{self.features} dimensions, got {rows}{where}"
            )
        if not weight > 0:
            raise ValueError(f"weights must be finite and non-negative with a positive sum{where}")
        if plain and ranks is None:
            return torch.full((n,), 1.0 / n, dtype=x.dtype, device=x.device)
        return w / weight

    @staticmethod
    def _check_distinct_shards(ranks: Ranks, x: Tensor) -> None:
        """``ValueError`` on every rank when all ranks passed the same rows (one
        ``all_reduce``): a data-parallel fit would count each row once per rank."""
        n = x.shape[0]
        checksum = row_checksum(x)
        stats = torch.stack([checksum.new_tensor(float(n)), checksum])
        (both,) = ranks.max(torch.cat([stats, -stats]))
        if n and torch.equal(both[:2], -both[2:]):
            raise ValueError(
                f"every one of the {ranks.world} ranks passed the same {n} rows to a "
                "data-parallel fit, which would count each row once per rank: pass each rank "
                "its own part of the rows, or distributed=False for independent fits"
            )

    def to_uniform(self, x: Tensor | np.ndarray) -> Tensor:
        """:math:`u = D(x)`: data (..., features) to the unit cube (checked: finite, inside the
        domain); uniform when ``x`` follows the fitted density."""
        x = self._checked(x, "input", self.domain == "unit")
        return self.call_and_ladj(x)[0]

    def log_prob(self, x: Tensor | np.ndarray) -> Tensor:
        """Log-density (...,) of data (..., features) (checked like :meth:`to_uniform`)."""
        x = self._checked(x, "input", self.domain == "unit")
        return self.call_and_ladj(x)[1]

    def from_uniform(self, u: Tensor | np.ndarray) -> Tensor:
        """:math:`x = D^{-1}(u)`: points (..., features) of the unit cube back to data space.

        Values outside ``[0, 1]`` (or NaN) raise ``ValueError``; values on the cube's faces are
        clamped to the nearest interior point where the inverse needs it (documented clamp).
        """
        u = self._checked(u, "uniform input", True)
        return self.inverse_and_ladj(u)[0]

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``n`` points (n, features): uniform points of the cube through
        :meth:`from_uniform`."""
        self._check_fitted()
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        device, dtype = module_device_dtype(self)
        where = device if generator is None else generator.device  # a generator draws on its own
        u = torch.rand(n, self.features, generator=generator, device=where, dtype=dtype)
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

        For a destructor on the cube (``domain == "unit"``) the flow's support is
        ``independent(unit_interval, 1)`` and its ``log_prob`` is ``-inf`` outside the cube.
        """
        self._check_fitted()
        device, dtype = module_device_dtype(self)
        # On the cube the density is zero outside it: log_prob -inf there, not the clamped
        # transform's finite value.
        support = constraints.independent(constraints.unit_interval, 1)
        support = support if self.domain == "unit" else None
        if base == "uniform":
            flow = Flow([Inverse(self)], base=UnitCube(self.features), support=support)
        elif base == "normal":
            flow = Flow([StandardNormalCdf(self.features), Inverse(self)], support=support)
        else:
            raise ValueError(f"base must be 'uniform' or 'normal', got {base!r}")
        return flow.to(device=device, dtype=dtype)

    def extra_repr(self) -> str:
        return f"features={self.features}, domain={self.domain_kind!r}"


class IdentityDestructor(Destructor):
    """The uniform density on the cube: :math:`D(u) = u`, log-density 0.

    What a deep destructor puts in place of a layer that would lower the training likelihood
    (the talk's monotonicity argument: the identity is always available).

    Args:
        features: dimension.

    Example:
        >>> IdentityDestructor(2).log_prob(torch.full((3, 2), 0.5))
        tensor([0., 0., 0.])
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
