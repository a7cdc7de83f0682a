r"""Variational simulation-based calibration (VSBC; Yao, Vehtari, Simpson & Gelman, ICML 2018,
"Yes, but did it work?: Evaluating variational inference", https://arxiv.org/abs/1802.02538).

For replicates :math:`i = 1..M`: draw :math:`\theta_0^{(i)} \sim p(\theta)` and
:math:`y^{(i)} \sim p(y \mid \theta_0^{(i)})` from the model itself (its observed sites
unconditioned), condition the model on :math:`y^{(i)}`, fit a fresh guide :math:`q_i` to it,
and for every scalar parameter :math:`j` compute

.. math:: p_{ij} = \Pr_{q_i}\big(\theta_j < \theta_{0j}^{(i)}\big)
   \approx \frac1S \sum_{s=1}^S \mathbb 1\big[\theta_j^{(s)} < \theta_{0j}^{(i)}\big],
   \qquad \theta^{(s)} \sim q_i .

If :math:`q_i` were the exact posterior, :math:`p_{\cdot j}` would be uniform on
:math:`(0, 1)` (:math:`\theta_0` is a draw from the posterior of the data it simulated). Yao et
al. ask less of VI: the distribution of :math:`p_{\cdot j}` is symmetric about :math:`1/2` when
the VI point estimate of :math:`\theta_j` is unbiased on average, and asymmetric when it is
biased, whatever the width of :math:`q`. So :func:`vsbc` reports, per parameter,

* a **symmetry** test: the two-sample Kolmogorov–Smirnov test of :math:`p_{\cdot j}` against
  :math:`1 - p_{\cdot j}` (small p-value: biased point estimates);
* a **uniformity** test: the one-sample KS test of :math:`p_{\cdot j}` against
  :math:`U(0, 1)` (small p-value: miscalibrated intervals; a too-narrow :math:`q` piles
  :math:`p` up near 0 and 1, a too-wide one near 1/2).

Both p-values are SciPy's (exact for these sizes). The symmetry test treats :math:`p` and
:math:`1 - p` as independent samples, as the paper does: a heuristic.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.poutine.util import site_is_subsample
from scipy import stats
from torch import Tensor
from tqdm.auto import tqdm

from ..checks import check_count, check_real
from ..plots.layout import new_axes
from .sampling.guide_weights import guide_log_weights
from .svi import fit_guide

__all__ = ["VSBCResult", "ks_symmetry", "ks_uniform", "vsbc"]


def ks_uniform(p: Tensor) -> tuple[Tensor, Tensor]:
    r"""One-sample Kolmogorov–Smirnov test of each column of ``p`` (M, J) against
    :math:`U(0, 1)` (SciPy's exact p-value): ``(statistic, p_value)``, each (J,).

    Example:
        >>> statistic, p_value = ks_uniform(torch.linspace(0.05, 0.95, 10)[:, None])
        >>> round(float(statistic), 3), float(p_value) > 0.99
        (0.05, True)
    """
    p = _as_columns(p)
    tests = [stats.kstest(column, "uniform") for column in p.T.double().cpu().numpy()]
    return _pair(tests, p)


def ks_symmetry(p: Tensor) -> tuple[Tensor, Tensor]:
    r"""Two-sample Kolmogorov–Smirnov test of each column of ``p`` (M, J) against ``1 - p``
    (VSBC's symmetry test; SciPy's exact p-value for two samples of one size):
    ``(statistic, p_value)``, each (J,).

    Example:
        >>> statistic, p_value = ks_symmetry(torch.tensor([[0.1], [0.2], [0.8], [0.9]]))
        >>> float(statistic), float(p_value)   # symmetric about 1/2 (1 - 0.9 is 0.1 to rounding)
        (0.0, 1.0)
        >>> statistic, p_value = ks_symmetry(torch.linspace(0.55, 1.0, 20))
        >>> float(statistic), round(float(p_value), 6)   # all above 1/2
        (1.0, 0.0)
    """
    p = _as_columns(p)
    # p and 1 - p meet at values that differ by a rounding error only (1 - 0.7 vs 0.3): round
    # both to a hundred times p's resolution so that such values tie, as they should.
    decimals = round(-math.log10(torch.finfo(p.dtype).eps)) - 2
    columns = p.T.double().cpu().numpy().round(decimals)
    tests = [stats.ks_2samp(c, (1.0 - c).round(decimals), method="exact") for c in columns]
    return _pair(tests, p)


def _pair(tests: list, like: Tensor) -> tuple[Tensor, Tensor]:
    """The statistics and p-values of SciPy's results as tensors (J,) on ``like``'s device."""
    as_tensor = functools.partial(torch.tensor, dtype=like.dtype, device=like.device)
    return as_tensor([t.statistic for t in tests]), as_tensor([t.pvalue for t in tests])


def _as_columns(p: Tensor) -> Tensor:
    if not torch.is_tensor(p) or not p.is_floating_point() or p.dim() not in (1, 2):
        raise TypeError("p must be a floating-point tensor of shape (M,) or (M, J)")
    if p.shape[0] < 2:
        raise ValueError(f"the KS tests need at least 2 values, got {p.shape[0]}")
    return p[:, None] if p.dim() == 1 else p


@dataclasses.dataclass
class VSBCResult:
    r"""What :func:`vsbc` returns.

    Attributes:
        names: the scalar parameters, ``"site"`` or ``"site[i,j]"`` (J of them).
        p: :math:`p_{ij} = \Pr_{q_i}(\theta_j < \theta_{0j})`, shape (M, J).
        truth: the simulated :math:`\theta_0`, shape (M, J).
        symmetry_pvalue: (J,) the KS test of :math:`p` against :math:`1 - p` (small: the VI
            point estimates are biased).
        uniformity_pvalue: (J,) the KS test of :math:`p` against :math:`U(0, 1)` (small: the
            VI intervals are miscalibrated, e.g. too narrow).
        fits: what the fit function returned for each replicate (``GuideFitResult`` by
            default).
    """

    names: list[str]
    p: Tensor
    truth: Tensor
    symmetry_pvalue: Tensor
    uniformity_pvalue: Tensor
    fits: list[Any] = dataclasses.field(default_factory=list, repr=False)

    def asymmetric(self, level: float = 0.05) -> list[str]:
        """The parameters whose symmetry test rejects at ``level``."""
        check_real("level", level, 0, 1)
        return [n for n, v in zip(self.names, self.symmetry_pvalue.tolist()) if v < level]

    def __str__(self) -> str:
        width = max(len("parameter"), *(len(n) for n in self.names))
        rows = [f"VSBC over {self.p.shape[0]} replicates"]
        rows.append(f"{'parameter':<{width}}  symmetry p  uniformity p  mean p")
        means = self.p.mean(0).tolist()
        for name, s, u, m in zip(
            self.names, self.symmetry_pvalue.tolist(), self.uniformity_pvalue.tolist(), means
        ):
            rows.append(f"{name:<{width}}  {s:>10.3f}  {u:>12.3f}  {m:>6.3f}")
        return "\n".join(rows)

    def plot(self, bins: int = 10, ax: Any = None) -> Any:
        """Histograms of :math:`p` per parameter, with the uniform density and both tests'
        p-values in the titles; returns the figure (``ax``: axes to draw on, one per
        parameter)."""
        bins = check_count("bins", bins)
        fig, axes = new_axes(ax, len(self.names), cols=min(len(self.names), 4))
        for j, (axis, name) in enumerate(zip(axes, self.names)):
            axis.hist(self.p[:, j].detach().cpu().numpy(), bins=bins, range=(0, 1), density=True)
            axis.axhline(1.0, color="k", lw=1, ls="--")
            axis.set_title(
                f"{name}: sym. p={float(self.symmetry_pvalue[j]):.2g}, "
                f"unif. p={float(self.uniformity_pvalue[j]):.2g}",
                fontsize=9,
            )
            axis.set_xlabel(r"$p = \Pr_q(\theta < \theta_0)$")
        return fig


def _default_fit(model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> Any:
    return fit_guide(model, guide, *args, check_draws=0, progress=False, **kwargs)


def _is_deterministic(site: dict) -> bool:
    fn = site["fn"]
    while isinstance(fn, dist.MaskedDistribution | dist.Independent):
        fn = fn.base_dist
    return isinstance(fn, dist.Delta)


def _labels(name: str, shape: torch.Size) -> list[str]:
    if len(shape) == 0:
        return [name]
    return [
        f"{name}[{','.join(map(str, i))}]"
        for i in torch.cartesian_prod(*[torch.arange(n) for n in shape])
        .reshape(-1, len(shape))
        .tolist()
    ]


def vsbc(
    model: Callable,
    make_guide: Callable[[Callable, dict[str, Tensor]], Callable],
    num_replicates: int,
    *args: Any,
    fit: Callable[..., Any] | None = None,
    num_draws: int = 1000,
    observed: Sequence[str] | None = None,
    seed: int | None = None,
    progress: bool | None = None,
    **kwargs: Any,
) -> VSBCResult:
    r"""Variational simulation-based calibration of a guide family on ``model`` (see the module's
    description).

    Each replicate runs in a fresh param store (``pyro.get_param_store().scope()``), so each
    guide starts from scratch and the caller's store is left as it was; parameters of the model
    itself start at their initial values in each replicate.

    Args:
        model: a Pyro model whose observed sites (``obs=``) take the simulated data; a model
            that samples its data when called without it works too, with ``observed=``.
        make_guide: ``(conditioned_model, observed) -> guide``: a fresh guide for the model
            conditioned on one simulated data set (``observed``: site name -> simulated value),
            e.g. ``lambda model, data: AutoFlow(model)``.
        num_replicates: :math:`M`, simulated data sets (at least 2).
        *args: the model's positional arguments (the same in every replicate).
        fit: ``(model, guide, *args, **kwargs) -> anything``, fitting ``guide`` in place;
            default :func:`~pyroflows.infer.fit_guide` without its importance check and bar.
        num_draws: :math:`S`, guide draws per replicate.
        observed: the names of the data sites (default: the sites the model observes,
            ``pyro.deterministic`` ones excepted).
        seed: seeds Pyro's random number generators first (``None``: as they are).
        progress: a tqdm bar over the replicates (``None``: on a terminal).
        **kwargs: the model's keyword arguments.

    Returns:
        A :class:`VSBCResult`: :math:`p_{ij}` (M, J), :math:`\theta_0` (M, J), the symmetry and
        uniformity p-values per parameter, and each replicate's fit result.

    Raises:
        ValueError: fewer than 2 replicates or draws, no observed site (or an unknown name in
            ``observed``), no latent site.
        TypeError: ``make_guide`` or ``fit`` is not callable.

    Example:
        >>> def model(n):
        ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
        ...     with pyro.plate("data", n):
        ...         pyro.sample("x", dist.Normal(z, 1.0), obs=torch.zeros(n))
        >>> result = vsbc(model, lambda m, data: pyro.infer.autoguide.AutoNormal(m), 20, 5,
        ...               fit=lambda *a, **k: None, seed=0)   # doctest: +SKIP
        >>> print(result)   # doctest: +SKIP
    """
    num_replicates = check_count("num_replicates", num_replicates, 2)
    num_draws = check_count("num_draws", num_draws, 2)
    if not callable(make_guide):
        raise TypeError(f"make_guide must be callable, got {type(make_guide).__name__}")
    if fit is not None and not callable(fit):
        raise TypeError(f"fit must be callable or None, got {type(fit).__name__}")
    fit = _default_fit if fit is None else fit
    if seed is not None:
        pyro.set_rng_seed(seed)
    names: list[str] | None = None
    p_rows, truth_rows, fits = [], [], []
    store = pyro.get_param_store()
    for _ in tqdm(
        range(num_replicates), desc="vsbc", disable=None if progress is None else not progress
    ):
        with store.scope():
            with torch.no_grad(), poutine.block():
                prior = poutine.trace(poutine.uncondition(model)).get_trace(*args, **kwargs)
            sites = {
                name: site
                for name, site in prior.nodes.items()
                if site["type"] == "sample" and not site_is_subsample(site)
            }
            if observed is None:
                data_names = [
                    name
                    for name, site in sites.items()
                    if site["infer"].get("was_observed") and not _is_deterministic(site)
                ]
            else:
                data_names = list(observed)
                unknown = sorted(set(data_names) - set(sites))
                if unknown:
                    raise ValueError(f"observed names {unknown} are not sample sites of the model")
            if not data_names:
                raise ValueError(
                    "the model observes no site: pass observed=[...] naming its data sites"
                )
            latent = [
                name
                for name, site in sites.items()
                if name not in data_names
                and not site["infer"].get("was_observed")
                and not site["is_observed"]
            ]
            if not latent:
                raise ValueError("the model has no latent site to calibrate")
            data = {name: sites[name]["value"].detach() for name in data_names}
            conditioned = poutine.condition(model, data=data)
            guide = make_guide(conditioned, data)
            fits.append(fit(conditioned, guide, *args, **kwargs))
            draws, _ = guide_log_weights(conditioned, guide, num_draws, *args, **kwargs)
            missing = [name for name in latent if name not in draws]
            if missing:
                raise ValueError(f"the guide does not sample the latent sites {missing}")
            p_parts, truth_parts, labels = [], [], []
            for name in latent:
                theta0 = sites[name]["value"].detach()
                values = draws[name].to(theta0)
                real = theta0.dtype if theta0.is_floating_point() else torch.get_default_dtype()
                below = (values < theta0).to(real) + 0.5 * (values == theta0).to(real)
                theta0 = theta0.to(real)
                p_parts.append(below.mean(0).reshape(-1))
                truth_parts.append(theta0.reshape(-1))
                labels += _labels(name, theta0.shape)
            p_rows.append(torch.cat(p_parts))
            truth_rows.append(torch.cat(truth_parts))
            if names is None:
                names = labels
            elif labels != names:
                raise ValueError(
                    f"the model's latent sites changed between replicates: {names} vs {labels}"
                )
    p = torch.stack(p_rows)
    truth = torch.stack(truth_rows)
    return VSBCResult(
        names=names or [],
        p=p,
        truth=truth,
        symmetry_pvalue=ks_symmetry(p)[1],
        uniformity_pvalue=ks_uniform(p)[1],
        fits=fits,
    )
