r"""Deep destructors: shallow destructors stacked greedily (Inouye & Ravikumar 2018, https://proceedings.mlr.press/v80/inouye18a.html).

Layer :math:`t` is fitted to the output :math:`x^{t-1} = D^{t-1}(x)` of the layers before it,
and :math:`D^t = d^t \circ D^{t-1}`. The deep density is the product of the layers' densities
at the successive outputs, so each layer adds its own training log-likelihood on the
transformed data. Because the identity (the uniform density) is always an admissible layer,
the training log-likelihood never has to decrease (the talk's monotonicity result);
:class:`DeepDestructor` checks it at run time and puts the identity in place of any layer that
would lower it. The depth is chosen on held-out log-likelihood.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..checks import check_count, check_real
from ..nn.device import module_device_dtype
from ..transforms.base import Bijection
from .base import Destructor, IdentityDestructor
from .chain import Chain, Stack
from .cube import InverseNormalCdf, StandardNormalCdf
from .domain import REAL, UNIT
from .registry import build, register
from .rotation import PCARotation, RandomRotation
from .shards import any_rank, current, row_span, total

__all__ = ["DeepDestructor"]

_INIT, _LAYER, _IDENTITY = 0, 1, 2


@register("deep")
class DeepDestructor(Stack):
    r"""Greedy deep destructor with the depth picked on held-out log-likelihood.

    ``fit`` grows layers one at a time, each fitted (in closed form, by EM or greedily) to the
    output of the previous ones, and records one ``history`` entry per layer (a dict with
    ``layer``, ``train_loglik`` and ``val_loglik``, the mean log-likelihood per point in nats
    of the whole stack so far, ``gain``, ``accepted`` and ``seconds``). Growth stops after
    ``patience`` layers in a row whose held-out gain is below
    ``tol * max(1, |val_loglik|)`` (a relative-gain rule), or at ``max_layers``; the depth with
    the best held-out log-likelihood is kept.

    Monotonicity: a layer whose training gain is negative is rejected and the identity takes
    its place (``accepted=False`` in the history), and the training log-likelihood of the stack
    is checked to be non-decreasing after every layer (``RuntimeError`` otherwise).

    Failures and interruption: ``fit`` is a transaction (see
    :meth:`~pyroflows.destructors.Destructor.fit`). A KeyboardInterrupt (or any error) during
    ``fit`` leaves the destructor as it was before the call (its layers, ``layer_codes``,
    ``history``, ``fitted`` flags, values, dtype and train/eval mode), not with a partial
    stack (whose depth would not be the held-out choice), and is re-raised.

    Args:
        features: dimension.
        layer: a registry name (``"copula"``, ``"tree"``, ``"mixture"``, ...) or a factory
            ``f(features) -> Destructor``. Layers after the first see data on the cube; a layer
            whose domain is ``"real"`` is preceded by :math:`\Phi^{-1}` automatically.
        max_layers: most layers after ``init``.
        validation: held-out fraction in ``(0, 1)``, an integer ``K >= 2`` for K-fold
            cross-validation of the depth, or ``0`` for none (the relative-gain rule then uses
            the training gain).
        tol: relative-gain tolerance of the stopping rule.
        patience: layers in a row below the tolerance before stopping.
        init: first layer, taking the raw data to the cube: a registry name (default
            ``"normal-cdf"``, for real data), a :class:`Destructor`, or ``None`` when the data
            already lie on the cube (domain ``"unit"``).
        rotation: ``None``, ``"random"`` or ``"pca"``: rotate (in Gaussian space,
            :math:`\Phi^{-1}` then the rotation) before every layer, so axis-aligned layers
            (histograms, trees) see new directions.
        refit: after choosing the depth on held-out data, refit that many layers on all the
            data (always done with K folds).
        layer_options: keyword options for ``build(layer, features, **layer_options)``.
        seed: seed of the split/folds and the random rotations.
        progress: show a tqdm bar (default: only on a terminal).
        max_time: time budget of ``fit`` in seconds: no layer is started once it is spent
            (the layers so far are a valid, shallower destructor); ``None``: no budget.

    Example:
        >>> from pyroflows.data import toy
        >>> x = toy("moons", 2000).double()
        >>> deep = DeepDestructor(2, layer="copula", max_layers=5, layer_options={"bins": 20})
        >>> deep = deep.fit(x)
        >>> [h["train_loglik"] for h in deep.history] == sorted(h["train_loglik"] for h in deep.history)
        True
    """

    def __init__(
        self,
        features: int,
        layer: str | Callable[[int], Destructor] = "copula",
        max_layers: int = 20,
        validation: float | int = 0.1,
        tol: float = 1e-4,
        patience: int = 3,
        init: str | Destructor | None = "normal-cdf",
        rotation: str | None = None,
        refit: bool = True,
        layer_options: dict[str, Any] | None = None,
        seed: int = 0,
        progress: bool | None = None,
        max_time: float | None = None,
    ) -> None:
        super().__init__(features)
        max_layers = check_count("max_layers", max_layers)
        if isinstance(validation, bool) or not (
            (isinstance(validation, int) and (validation == 0 or validation >= 2))
            or (isinstance(validation, float) and 0 <= validation < 1)
        ):
            raise ValueError(
                f"validation must be a fraction in [0, 1) or a number of folds >= 2, got {validation!r}"
            )
        if rotation not in (None, "random", "pca"):
            raise ValueError(f"rotation must be None, 'random' or 'pca', got {rotation!r}")
        if not isinstance(layer, str) and not callable(layer):
            raise TypeError("layer must be a registry name or a factory f(features) -> Destructor")
        self.layer, self.max_layers, self.validation = layer, max_layers, validation
        self.tol, self.patience, self.rotation, self.refit = float(tol), patience, rotation, refit
        self.layer_options = dict(layer_options or {})
        self.seed, self.progress = seed, progress
        self.max_time = None if max_time is None else check_real("max_time", max_time)
        if isinstance(init, str):
            init = build(init, features)
        if init is not None and (not isinstance(init, Destructor) or init.features != features):
            raise TypeError(
                f"init must be a registry name, a Destructor on {features} features, or None"
            )
        # A plain attribute, not a submodule: the template is copied for every fit.
        object.__setattr__(self, "_init_template", init)
        self.domain = UNIT if init is None else init.domain
        self.layers = nn.ModuleList()
        self.register_buffer("layer_codes", torch.zeros(0, dtype=torch.long))
        self.history: list[dict[str, float]] = []

    def extra_repr(self) -> str:
        name = (
            self.layer
            if isinstance(self.layer, str)
            else getattr(self.layer, "__name__", "factory")
        )
        return f"features={self.features}, layer={name!r}, layers={len(self.layers)}, domain={self.domain_kind!r}"

    # -- layers --------------------------------------------------------------------------------

    def _new_layer(self, index: int) -> Destructor:
        device, dtype = module_device_dtype(self)
        # Built where the destructor lives (not on torch's default device), then moved there.
        with torch.device(device):
            return self._build_layer(index).to(device=device, dtype=dtype)

    def _build_layer(self, index: int) -> Destructor:
        if isinstance(self.layer, str):
            core = build(self.layer, self.features, **self.layer_options)
        else:
            core = self.layer(self.features)
            if not isinstance(core, Destructor) or core.features != self.features:
                raise TypeError("the layer factory must return a Destructor with the same features")
        parts: list[Bijection] = []
        if self.rotation is not None:
            rotate = (
                RandomRotation(self.features, seed=self.seed + index)
                if self.rotation == "random"
                else PCARotation(self.features)
            )
            parts += [InverseNormalCdf(self.features), rotate]
            if core.domain == "unit":
                parts.append(StandardNormalCdf(self.features))
        elif core.domain == REAL:
            parts.append(InverseNormalCdf(self.features))
        parts.append(core)
        return core if len(parts) == 1 else Chain(parts)

    def _make(self, code: int, index: int) -> Destructor:
        device, dtype = module_device_dtype(self)
        if code == _INIT:
            return copy.deepcopy(self._init_template).to(device=device, dtype=dtype)
        if code == _IDENTITY:
            return IdentityDestructor(self.features).to(device=device, dtype=dtype)
        return self._new_layer(index)

    def min_points(self) -> int:
        probes = [self._new_layer(0)] + (
            [self._init_template] if self._init_template is not None else []
        )
        return max(p.min_points() for p in probes)

    # -- fitting -------------------------------------------------------------------------------

    def _splits(self, n: int) -> list[tuple[Tensor, Tensor]]:
        """(training rows, held-out rows) per run, as sorted row numbers among ``n`` (on the
        CPU); sorted, so that the rows keep their order and a data-parallel fit, whose ranks
        each take the row numbers they hold, sees them in the same order as one process."""
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(n, generator=generator, device="cpu")
        if isinstance(self.validation, int):
            if self.validation == 0:
                return []
            folds = order.tensor_split(self.validation)
            splits = [
                (torch.cat([f for j, f in enumerate(folds) if j != i]), folds[i])
                for i in range(len(folds))
            ]
        elif self.validation == 0:
            return []
        else:
            n_val = max(1, int(round(self.validation * n)))
            splits = [(order[n_val:], order[:n_val])]
        return [(train.sort().values, held.sort().values) for train, held in splits]

    def _grow(
        self,
        x: Tensor,
        w: Tensor,
        xv: Tensor | None,
        wv: Tensor | None,
        depth: int,
        stop_early: bool,
        bar: tqdm | None,
        deadline: float | None = None,
    ) -> tuple[list[Destructor], list[int], list[dict[str, float]]]:
        """Fit up to ``depth`` layers on (x, w), none started past ``deadline`` (a
        ``time.perf_counter()`` value); score on (xv, wv) when given."""
        w = w / total(w.sum())
        wv = None if wv is None else wv / total(wv.sum())
        layers: list[Destructor] = []
        codes: list[int] = []
        history: list[dict[str, float]] = []
        train = val = 0.0
        start = time.perf_counter()
        if self._init_template is not None:
            first = self._make(_INIT, 0).fit(x, w)
            x, ladj = first.call_and_ladj(x)
            train = float(total(w @ ladj))
            if xv is not None:
                xv, lv = first.call_and_ladj(xv)
                val = float(total(wv @ lv))
            layers.append(first)
            codes.append(_INIT)
        history.append(
            {
                "layer": 0,
                "train_loglik": train,
                "val_loglik": val if xv is not None else math.nan,
                "gain": train,
                "accepted": True,
                "seconds": time.perf_counter() - start,
            }
        )
        stale = 0
        for index in range(1, depth + 1):
            start = time.perf_counter()
            if deadline is not None and any_rank(start > deadline):
                break
            layer = self._make(_LAYER, index).fit(x, w)
            u, ladj = layer.call_and_ladj(x)
            gain = float(total(w @ ladj))
            finite = not any_rank(not bool(torch.isfinite(u).all()))
            accepted = math.isfinite(gain) and gain >= 0 and finite
            if not accepted:
                # The identity is always available and never lowers the likelihood.
                layer, u, gain = self._make(_IDENTITY, index), x, 0.0
            if train + gain < train:
                raise RuntimeError(
                    "deep destructor: training log-likelihood decreased (monotonicity violated)"
                )
            train, x = train + gain, u
            score_gain = gain
            if xv is not None:
                xv, lv = layer.call_and_ladj(xv)
                score_gain = float(total(wv @ lv))
                val = val + score_gain
            layers.append(layer)
            codes.append(_LAYER if accepted else _IDENTITY)
            history.append(
                {
                    "layer": index,
                    "train_loglik": train,
                    "val_loglik": val if xv is not None else math.nan,
                    "gain": gain,
                    "accepted": accepted,
                    "seconds": time.perf_counter() - start,
                }
            )
            if bar is not None:
                bar.update(1)
                bar.set_postfix(train=f"{train:.4g}", val=f"{val:.4g}" if xv is not None else "-")
            reference = val - score_gain if xv is not None else train - gain
            if score_gain < self.tol * max(1.0, abs(reference)):
                stale += 1
                if stop_early and stale >= self.patience:
                    break
            else:
                stale = 0
        return layers, codes, history

    def _fit(self, x: Tensor, w: Tensor) -> None:
        first, n = row_span(x.shape[0])  # this rank's rows among all ranks' n rows
        splits = self._splits(n)
        need = self.min_points()
        if splits and min(len(tr) for tr, _ in splits) < need:
            raise ValueError(
                f"too few points ({n}) for validation={self.validation!r}: each training part "
                f"needs at least {need}"
            )
        splits = [(self._mine(tr, first, x), self._mine(va, first, x)) for tr, va in splits]
        deadline = None if self.max_time is None else time.perf_counter() + self.max_time
        ranks = current()
        quiet = ranks is not None and not ranks.main  # the bar on rank 0 only
        bar = tqdm(
            total=self.max_layers * max(1, len(splits)),
            desc="deep destructor",
            disable=True if quiet else (None if self.progress is None else not self.progress),
        )
        try:
            if not splits:
                layers, codes, history = self._grow(
                    x, w, None, None, self.max_layers, True, bar, deadline
                )
            else:
                runs = [
                    self._grow(x[tr], w[tr], x[va], w[va], self.max_layers, True, bar, deadline)
                    for tr, va in splits
                ]
                length = max(len(r[2]) for r in runs)
                curves = np.array(
                    [
                        [r[2][min(i, len(r[2]) - 1)]["val_loglik"] for i in range(length)]
                        for r in runs
                    ]
                )
                mean_val = curves.mean(0)
                depth = int(np.argmax(mean_val))
                if len(splits) == 1 and not self.refit:
                    # Keep the layers of the single run up to the best held-out depth.
                    keep = depth + (self._init_template is not None)
                    layers, codes, history = (
                        runs[0][0][:keep],
                        runs[0][1][:keep],
                        runs[0][2][: depth + 1],
                    )
                else:
                    bar.reset(total=depth)
                    bar.set_description("deep destructor (refit)")
                    layers, codes, history = self._grow(
                        x, w, None, None, depth, False, bar, deadline
                    )
                    for i, entry in enumerate(history):
                        entry["val_loglik"] = float(mean_val[i])
        finally:
            bar.close()
        # Run-time check of the monotonicity result on the final stack.
        trains = [h["train_loglik"] for h in history]
        if any(b < a for a, b in zip(trains, trains[1:])):
            raise RuntimeError(f"deep destructor: training log-likelihood decreased: {trains}")
        self._set_layers(layers)
        self.layer_codes = torch.tensor(codes, dtype=torch.long, device=x.device)
        self.history = history

    @staticmethod
    def _mine(rows: Tensor, first: int, x: Tensor) -> Tensor:
        """The row numbers (sorted, among all ranks') that this rank holds, as indices into its
        own rows ``x`` (starting at global row ``first``)."""
        mine = rows[(rows >= first) & (rows < first + x.shape[0])] - first
        return mine.to(x.device)

    def _set_layers(self, layers: list[Destructor]) -> None:
        self.layers = nn.ModuleList(layers)

    def stack(self) -> nn.ModuleList:
        return self.layers

    # -- state_dict: rebuild the layers a saved destructor had ----------------------------------

    def _load_from_state_dict(
        self,
        state_dict,
        prefix,
        local_metadata,
        strict,
        missing_keys,  # noqa: ANN001
        unexpected_keys,
        error_msgs,
    ) -> None:
        key = prefix + "layer_codes"
        if key in state_dict:
            codes = state_dict[key].tolist()
            if codes != self.layer_codes.tolist():
                self._set_layers([self._make(c, i) for i, c in enumerate(codes)])
                self.layer_codes = state_dict[key].clone().to(self.layer_codes.device)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
