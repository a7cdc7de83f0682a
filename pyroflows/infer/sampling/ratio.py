r"""Density-ratio reweighting between two populations with flows.

Given draws :math:`x^{(1)}_i \sim p_1` (the *source*, where outcomes :math:`y_i = f(x^{(1)}_i)`
were measured) and draws :math:`x^{(2)}_j \sim p_2` (the *target* population), the average
outcome over the target population is

.. math:: \mathbb{E}_{p_2}[f] = \mathbb{E}_{p_1}\!\left[f\,\frac{p_2}{p_1}\right]
   \approx \sum_i \bar w_i\, y_i, \qquad
   \log w_i = \log \hat p_2(x^{(1)}_i) - \log \hat p_1(x^{(1)}_i),

with :math:`\hat p_1, \hat p_2` flows fitted by maximum likelihood to each population (the
two-populations example of Papamakarios et al.'s review, "Normalizing flows for probabilistic
modeling and inference", JMLR 2021). Self-normalised weights are used (the plain
:math:`\frac1N\sum_i y_i w_i` of the review is :meth:`DensityRatioResult.expectation` with
``self_normalized=False``). PSIS k-hat flags a target population that the source does not
cover; :math:`\log\frac1N\sum_i w_i` (``log_evidence``) should be near 0 when the two
fitted densities are consistent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...checks import as_data
from ...core import Flow
from ..fitting.fit import FitResult, fit
from .importance_result import ImportanceResult, finish

__all__ = ["DensityRatioResult", "density_ratio"]


def _log_prob(model: Any, x: Tensor) -> Tensor:
    distribution = model() if isinstance(model, Flow) else model
    return distribution.log_prob(x)


@dataclass(repr=False)
class DensityRatioResult(ImportanceResult):
    r"""An :class:`~pyroflows.infer.ImportanceResult` over the source points, plus the two
    density models (``source_flow``, ``target_flow``) and their fits (``None`` when given)."""

    source_flow: Any = None
    target_flow: Any = None
    source_fit: FitResult | None = None
    target_fit: FitResult | None = None

    @torch.no_grad()
    def log_ratio(self, x: Tensor) -> Tensor:
        r""":math:`\log \hat p_2(x) - \log \hat p_1(x)` for new points (n, D) -> (n,)."""
        x = x.to(self.log_weights)
        return _log_prob(self.target_flow, x) - _log_prob(self.source_flow, x)

    def expectation(
        self,
        f: Callable[[Tensor], Tensor] | Tensor | np.ndarray,
        smoothed: bool = True,
        self_normalized: bool = True,
    ) -> tuple[Tensor, Tensor]:
        r"""Estimate the target-population mean of outcomes measured on the source points.

        Args:
            f: outcomes :math:`y_i` (n,) or (n, k) for the source points, or a function of
                the source points (n, D) returning them.
            smoothed: PSIS-smoothed weights (default) or raw ones.
            self_normalized: :math:`\sum_i \bar w_i y_i` (default), or the unnormalised
                :math:`\frac1N\sum_i w_i y_i` with MCSE :math:`\operatorname{sd}(w y)/\sqrt N`
                (raw weights).

        Returns:
            ``(estimate, mcse)``.
        """
        if self_normalized:
            return super().expectation(f, smoothed)
        values = f(self.samples) if callable(f) else f
        values = torch.as_tensor(
            np.asarray(values) if not isinstance(values, Tensor) else values,
            device=self.log_weights.device,
        ).double()
        if values.shape[0] != self.num_samples:
            raise ValueError(f"got {values.shape[0]} outcomes for {self.num_samples} source points")
        w = self.log_weights.double().exp().reshape((-1,) + (1,) * (values.dim() - 1))
        terms = w * values
        return terms.mean(0), terms.std(0) / self.num_samples**0.5

    def __repr__(self) -> str:
        return "DensityRatioResult" + super().__repr__()[len("ImportanceResult") :]


def _fit_flow(
    name: str, x: Tensor, standardize: bool, flow_options: dict, fit_options: dict
) -> tuple[Flow, FitResult]:
    from ...flows import build

    with torch.device(x.device):  # built where the data are, not on torch's default device
        flow = build(name, x.shape[1], standardize=x if standardize else None, **flow_options)
    flow = flow.to(device=x.device, dtype=x.dtype)
    return flow, fit(flow, x, **{"progress": False, **fit_options})


def density_ratio(
    x_source: Tensor | np.ndarray,
    x_target: Tensor | np.ndarray,
    flow: str | tuple[Any, Any] = "maf",
    *,
    flow_options: dict | None = None,
    fit_options: dict | None = None,
    standardize: bool = True,
    warn: bool = True,
) -> DensityRatioResult:
    r"""Importance weights :math:`\hat p_\text{target}/\hat p_\text{source}` for the source points.

    Args:
        x_source: source population draws (n, D) (where outcomes were measured).
        x_target: target population draws (m, D).
        flow: a registry name (``"maf"``, ``"nsf"``, ...): one flow of that kind is fitted to
            each population with :func:`~pyroflows.infer.fit`; or a pair
            ``(source_model, target_model)`` of fitted Flows, FlowDistributions or torch
            distributions.
        flow_options: options of :func:`~pyroflows.flows.build` (``transforms``, ``hidden``, ...).
        fit_options: options of :func:`~pyroflows.infer.fit` (``epochs``, ``lr``, ``seed``, ...).
        standardize: standardise each flow on its population (``build(standardize=x)``).
        warn: warn when k-hat exceeds the threshold.

    Returns:
        A :class:`DensityRatioResult` (weights over the n source points, PSIS k-hat, ESS,
        ``expectation(y)`` with MCSE, the flows and their fits).

    Raises:
        ValueError: mismatched dimensions, NaN/inf data, too few points.

    Example:
        >>> r = density_ratio(x1, x2, "maf", fit_options={"epochs": 50})   # doctest: +SKIP
        >>> mean, mcse = r.expectation(y1)                                # doctest: +SKIP
    """
    flow_options, fit_options = dict(flow_options or {}), dict(fit_options or {})
    if isinstance(flow, str):
        dtype = (
            x_source.dtype
            if isinstance(x_source, Tensor) and x_source.is_floating_point()
            else torch.float64
        )
        device = x_source.device if isinstance(x_source, Tensor) else torch.device("cpu")
        xs = as_data(x_source, "x_source", None, None, device, dtype)
        if xs.dim() != 2:
            raise ValueError(f"x_source must have shape (n, D), got {tuple(xs.shape)}")
        xt = as_data(x_target, "x_target", xs.shape[1], None, device, dtype)
        source, source_fit = _fit_flow(flow, xs, standardize, flow_options, fit_options)
        target, target_fit = _fit_flow(flow, xt, standardize, flow_options, fit_options)
    elif isinstance(flow, tuple) and len(flow) == 2:
        source, target = flow
        source_fit = target_fit = None
        reference = next(iter(source.parameters()), None) if isinstance(source, Flow) else None
        device = reference.device if reference is not None else torch.device("cpu")
        dtype = (
            reference.dtype
            if reference is not None
            else (x_source.dtype if isinstance(x_source, Tensor) else torch.float64)
        )
        xs = as_data(x_source, "x_source", None, None, device, dtype)
        if xs.dim() != 2:
            raise ValueError(f"x_source must have shape (n, D), got {tuple(xs.shape)}")
        for name, model in (("source", source), ("target", target)):
            features = getattr(model, "features", None) or (
                model.event_shape[0]
                if hasattr(model, "event_shape") and len(model.event_shape) == 1
                else None
            )
            if features != xs.shape[1]:
                raise ValueError(
                    f"the {name} model is over {features} features but the data have {xs.shape[1]}"
                )
    else:
        raise TypeError("flow must be a registry name or a (source_model, target_model) pair")
    with torch.no_grad():
        log_w = _log_prob(target, xs) - _log_prob(source, xs)
        base = finish(log_w, xs, None, None, None, warn, what="density_ratio", stacklevel=3)
    return DensityRatioResult(
        **vars(base),
        source_flow=source,
        target_flow=target,
        source_fit=source_fit,
        target_fit=target_fit,
    )
