r"""``AutoFlow``: a normalizing-flow autoguide over all continuous latent sites of a Pyro model.

Like Pyro's :class:`~pyro.infer.autoguide.AutoContinuous`, the guide maps every continuous latent
site to the unconstrained space, concatenates them into one vector :math:`u \in \mathbb{R}^D` and
models :math:`q(u)` with a flow; samples are mapped back to each site's support. Unlike Pyro's
``AutoNormalizingFlow`` it is built at construction, on the device and in the dtype of the
model's values, starts from an affine layer set by ``init_loc_fn``/``init_scale`` or a Laplace
approximation, gives ``median``/``quantiles``/``sample_posterior``, and works under
``JitTrace_ELBO`` and with the param store's ``save``/``load``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions.util import sum_rightmost
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import biject_to

from ...core import Flow
from ...transforms import ElementwiseAffine
from ...transforms.triangular import LowerTriangularAffine
from ..sampling.weights import trace_plate_nesting
from .guide_support import (
    GuideFlowDistribution,
    ParameterAverage,
    _bindable,
    _reduce_to_particles,
    continuous_latent_hide_fn,
    safe_init,
    sync_with_param_store,
)
from .laplace import find_map, laplace_approximation
from .variational_flows import resolve_flow

__all__ = ["AutoFlow"]

INIT_CHOICES = ("auto", "laplace", "loc")
STL_AUTO_MAX_DIM = 16


class AutoFlow(AutoContinuous):
    r"""Normalizing-flow autoguide over all continuous latent sites (unconstrained space).

    :math:`q(u) = (A \circ T)_\# \mathcal{N}(0, I)` where :math:`T` is the flow (the identity at
    initialisation) and :math:`A(y) = \mu + L y` an affine layer whose initial values come from
    the init strategy, so the guide starts as :math:`\mathcal{N}(\mu, LL^\top)`.

    Args:
        model: a Pyro model.
        flow: a registry name (default ``"nsf"``: :func:`~pyroflows.infer.guides.variational_flows.variational_nsf`,
            two inverse autoregressive layers of MADE width ``(32, 32)``, an affine one at the
            base side then a 4-bin spline with an affine stage, chosen on Neal's funnel and
            the banana of ``benchmarks/vi_targets.py``; density-fast presets such
            as ``"maf"`` are used in their sampling-fast orientation), a
            :class:`~pyroflows.Flow` over ``D`` features (e.g. ``DeepDestructor.as_flow()``),
            or a factory ``D -> Flow``.
        init_loc_fn: per-site init strategy for :math:`\mu` (Pyro's initialization functions);
            default prior median.
        init_scale: initial standard deviation of each unconstrained coordinate (with
            ``init="loc"``).
        init: ``"loc"`` (start at :math:`\mathcal{N}(\mu, \text{init\_scale}^2 I)`),
            ``"laplace"`` (find the MAP from :math:`\mu` by L-BFGS and start at the Laplace
            approximation, which whitens badly scaled, correlated posteriors), or ``"auto"``
            (default: estimate the ELBO of both starts with ``init_particles`` samples and keep
            the better one; Laplace is skipped above ``laplace_max_dim`` latent dimensions).
        model_args: positional arguments of the model, so that the guide is built now. Without
            them the guide is built at construction when the model takes no required
            arguments, otherwise at its first call, as Pyro's autoguides are.
        model_kwargs: keyword arguments of the model, likewise.
        affine: the initial affine layer: ``"tril"`` (dense lower-triangular, learnable),
            ``"diag"`` (elementwise) or ``"auto"`` (``"tril"`` up to ``laplace_max_dim``
            dimensions).
        laplace_max_dim: largest latent dimension for which ``init="auto"`` tries Laplace.
        init_particles: samples used to compare the initialisations.
        stl: use the "sticking the landing" gradient (Roeder et al. 2017: the score term of
            log q is dropped, so the gradient's variance vanishes as q approaches the
            posterior). It evaluates log q through the inverse flow, one pass for coupling
            layers but D passes for inverse autoregressive ones, so ``"auto"`` (default) turns
            it on when that is affordable (every layer fast both ways, or D <= 16). Use ``False``
            with importance-weighted bounds.
        average: rate of the running average of the flow's parameters (iterate averaging;
            weight ``max(1/n, average)`` at step n), used by the posterior whenever the guide
            is not training (no gradients, or ``guide.eval()``); ``None`` turns it off.
        **flow_options: options of the flow preset (``transforms``, ``hidden``, ``bins``, ...).

    Raises:
        ValueError: at construction, for a model without continuous latent sites, an unknown
            flow name, a flow of the wrong size, or a bad ``init``.

    Example:
        >>> def model():
        ...     pyro.sample("x", dist.Normal(0.0, 1.0))
        >>> guide = AutoFlow(model, transforms=1, hidden=(8, 8))
        >>> guide.latent_dim
        1
    """

    def __init__(
        self,
        model: Callable,
        flow: Any = "nsf",
        *,
        init_loc_fn: Callable = init_to_median,
        init_scale: float = 1.0,
        init: str = "auto",
        model_args: tuple | None = None,
        model_kwargs: dict | None = None,
        affine: str = "auto",
        laplace_max_dim: int = 100,
        init_particles: int = 256,
        stl: bool | str = "auto",
        average: float | None = 0.01,
        **flow_options: Any,
    ) -> None:
        if not (isinstance(init_scale, int | float) and init_scale > 0 and math.isfinite(init_scale)):
            raise ValueError(f"init_scale must be a positive number, got {init_scale!r}")
        if init not in INIT_CHOICES:
            raise ValueError(f"init must be one of {INIT_CHOICES}, got {init!r}")
        if affine not in ("auto", "tril", "diag"):
            raise ValueError(f"affine must be 'auto', 'tril' or 'diag', got {affine!r}")
        if isinstance(flow, str):
            from ...flows import available

            if flow != "nsf" and flow not in available("vector"):
                raise ValueError(f"unknown flow {flow!r}; available: {', '.join(available('vector'))}")
        self._flow_spec_box = (flow,)
        self._flow_options = dict(flow_options)
        self._init_scale = float(init_scale)
        self._init_mode = init
        self._affine_mode = affine
        self._laplace_max_dim = laplace_max_dim
        self._init_particles = init_particles
        self.init_choice: str | None = None
        self._vectorizable = True
        self._has_discrete = False
        if stl not in (True, False, "auto"):
            raise ValueError(f"stl must be True, False or 'auto', got {stl!r}")
        self._stl_option = stl
        self._stl = stl is True
        if average is not None and not 0 < average <= 1:
            raise ValueError(f"average must be in (0, 1] or None, got {average!r}")
        self._average_rate = average
        self.init_elbo: dict[str, float] = {}
        super().__init__(model, init_loc_fn=safe_init(init_loc_fn))
        self._raw_model = (model,)
        args = () if model_args is None else tuple(model_args)
        kwargs = {} if model_kwargs is None else dict(model_kwargs)
        if model_args is not None or model_kwargs is not None or _bindable(model, (), {}):
            if not _bindable(model, args, kwargs):
                raise TypeError("model_args/model_kwargs do not match the model's signature")
            self.setup(*args, **kwargs)

    _prototype_hide_fn = staticmethod(continuous_latent_hide_fn)

    # -- construction ----------------------------------------------------------------------------

    def setup(self, *args: Any, **kwargs: Any) -> AutoFlow:
        """Build the guide now from one run of the model on ``*args, **kwargs`` (idempotent)."""
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        return self

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        try:
            super()._setup_prototype(*args, **kwargs)
        except RuntimeError as error:
            if "no latent variables" in str(error):
                raise ValueError(
                    f"{type(self).__name__} found no continuous latent sites in the model; "
                    "observed and discrete (enumerated) sites are not modelled by a flow guide"
                ) from None
            raise
        self._max_plate_nesting = self._plate_nesting(*args, **kwargs)
        loc = self._init_loc()
        self._dtype, self._device = loc.dtype, loc.device
        # Start at N(loc, init_scale^2 I) (needed by the Laplace search, which never uses the
        # flow's values), then move to the chosen initial Gaussian.
        self._build_flows(loc)
        eye = torch.ones_like(loc).diag_embed()
        self._set_affine(loc, eye, self._init_scale)
        loc, scale_tril = self._initial_gaussian(loc, args, kwargs)
        if self.init_choice == "laplace":
            self._set_affine(loc, scale_tril, 1.0)
        self._make_averages()
        if self._stl_option == "auto":
            # The STL gradient evaluates log q at the sample through the inverse flow: one
            # pass for coupling/elementwise layers, D passes for inverse autoregressive ones.
            flows = [flow for flow, _ in self._flows_and_slices()]
            self._stl = all(f.features <= STL_AUTO_MAX_DIM
                            or all(t.fast_direction == "both" for t in f.transforms) for f in flows)

    def _make_flow(self, features: int) -> Flow:
        r"""``W \circ T \circ A`` for ``features`` dims: a trainable affine ``A`` at the base side,
        the flow ``T`` (the identity at start), a fixed whitening ``W`` (the init loc and, for a
        Laplace start, its Cholesky factor), so the flow and the optimizer work in units of the
        posterior's scale."""
        body = resolve_flow(self._flow_spec_box[0], features, **self._flow_options)
        use_tril = self._affine_mode == "tril" or (
            self._affine_mode == "auto" and features <= self._laplace_max_dim)
        trainable = LowerTriangularAffine(features) if use_tril else ElementwiseAffine(features)
        whitening = (LowerTriangularAffine(features, trainable=False) if use_tril
                     else ElementwiseAffine(features, trainable=False))
        return Flow([trainable, *body.transforms, whitening], body.base).to(
            device=self._device, dtype=self._dtype)

    def _build_flows(self, loc: Tensor) -> None:
        self.flow = self._make_flow(self.latent_dim)

    def _make_averages(self) -> None:
        if self._average_rate is not None:
            self.averages = torch.nn.ModuleList(
                ParameterAverage(flow, self._average_rate) for flow, _ in self._flows_and_slices())

    def _averages(self) -> list[ParameterAverage | None]:
        if "averages" in self._modules:
            return list(self._modules["averages"])
        return [None] * len(self._flows_and_slices())

    def _training(self) -> bool:
        return torch.is_grad_enabled() and self.training and not torch.jit.is_tracing()

    def _synced_flows(self) -> list[Flow]:
        """The live flows, synced with the param store, their averages updated when training.
        Under JIT tracing, averaging is switched off (the trace could not update it)."""
        flows = [flow for flow, _ in self._flows_and_slices()]
        if torch.jit.is_tracing() and "averages" in self._modules:
            del self._modules["averages"]
        if self._pyro_context.active:
            for i, (flow, average) in enumerate(zip(flows, self._averages())):
                sync_with_param_store(self._pyro_get_fullname(f"flow_{i}" if i else "flow"), flow, average)
        if self._training():
            for flow, average in zip(flows, self._averages()):
                if average is not None:
                    average.update(flow)
        return flows

    def _posterior_flows(self) -> list[Flow]:
        """The flows that give the posterior: the live ones while training (gradients enabled
        and ``guide.training``), else the parameter averages (when enabled and started)."""
        flows = self._synced_flows()
        if self._training():
            return flows
        return [flow if avg is None or avg.steps == 0 else avg.flow
                for flow, avg in zip(flows, self._averages())]

    def _flows_and_slices(self) -> list[tuple[Flow, slice]]:
        """Each flow with the slice of the latent vector it models."""
        return [(self._modules["flow"], slice(0, self.latent_dim))]

    @torch.no_grad()
    def _set_affine(self, loc: Tensor, scale_tril: Tensor, scale: float) -> None:
        """Set each flow's fixed whitening ``u = loc + scale_tril @ w`` (its last layer; the
        block of ``scale_tril``'s covariance for a flow over a slice) and its trainable
        base-side affine ``y = scale * z`` (its first layer)."""
        cov = scale_tril @ scale_tril.T
        for flow, part in self._flows_and_slices():
            trainable, whitening = flow.transforms[0], flow.transforms[-1]
            L = torch.linalg.cholesky(cov[part, part])
            whitening.loc.copy_(loc[part])
            if isinstance(whitening, LowerTriangularAffine):
                whitening.off_diag.copy_(L.tril(-1))
                whitening.log_diag.copy_(L.diagonal().log())
                trainable.off_diag.zero_()
                trainable.log_diag.fill_(math.log(scale))
            else:
                whitening.log_scale.copy_(L.diagonal().log())
                trainable.log_scale.fill_(math.log(scale))
            trainable.loc.zero_()

    def _plate_nesting(self, *args: Any, **kwargs: Any) -> int:
        with poutine.block():
            trace = poutine.trace(self.model).get_trace(*args, **kwargs)
        for site in trace.nodes.values():
            if (site["type"] == "sample" and not site["is_observed"]
                    and continuous_latent_hide_fn(site) and not site_is_subsample(site)):
                self._has_discrete = True
        return trace_plate_nesting(trace)

    def _initial_gaussian(self, loc: Tensor, args: tuple, kwargs: dict) -> tuple[Tensor, Tensor]:
        D = self.latent_dim
        candidates = {"loc": (loc, self._init_scale * torch.eye(D, dtype=loc.dtype, device=loc.device))}
        # The unconstrained density needs every latent site: with discrete (enumerated) sites
        # left to the ELBO, there is none to maximise, so start from init_loc_fn/init_scale.
        want_laplace = not self._has_discrete and (self._init_mode == "laplace" or (
            self._init_mode == "auto" and D <= self._laplace_max_dim))
        if want_laplace:
            def log_p(u: Tensor) -> Tensor:
                return self.log_density(u[None], *args, **kwargs)[0]

            mode = find_map(log_p, loc)
            scale_tril = None if mode is None else laplace_approximation(log_p, mode)
            if scale_tril is not None:
                candidates["laplace"] = (mode, scale_tril)
            elif self._init_mode == "laplace":
                warnings.warn("the Laplace approximation failed (no finite MAP or a Hessian that "
                              "is not positive definite); starting from init_loc_fn/init_scale",
                              stacklevel=3)
        if len(candidates) > 1:
            with torch.no_grad():
                self.init_elbo = {k: self._gaussian_elbo(m, L, args, kwargs) for k, (m, L) in candidates.items()}
            if self._init_mode == "laplace":
                choice = "laplace"
            else:
                choice = max(self.init_elbo, key=lambda k: self.init_elbo[k])
        else:
            choice = "loc"
        self.init_choice = choice
        return candidates[choice]

    def _gaussian_elbo(self, loc: Tensor, scale_tril: Tensor, args: tuple, kwargs: dict) -> float:
        q = dist.MultivariateNormal(loc, scale_tril=scale_tril)
        u = q.sample((self._init_particles,))
        try:
            values = self.log_density(u, *args, **kwargs) - q.log_prob(u)
        except (ValueError, RuntimeError):  # e.g. a degenerate start whose samples underflow
            return -math.inf
        value = float(values.mean())
        return value if math.isfinite(value) else -math.inf

    # -- the posterior -----------------------------------------------------------------------------

    def get_base_dist(self) -> dist.TorchDistribution:
        return self.flow.base()

    def get_transform(self, *args: Any, **kwargs: Any):  # noqa: ANN201
        return self.flow.transform()

    def get_posterior(self, *args: Any, **kwargs: Any) -> GuideFlowDistribution:
        """The flow distribution :math:`q(u)` over the unconstrained latent vector."""
        if self.prototype_trace is None:
            self.setup(*args, **kwargs)
        flow = self._posterior_flows()[0]
        posterior = GuideFlowDistribution(flow.base(), flow.transform())
        if self._stl and self._training():
            posterior._stl_flow = flow
        return posterior

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        if self.prototype_trace is None:
            self.setup(*args, **kwargs)
        return super().forward(*args, **kwargs)

    # -- model densities ------------------------------------------------------------------------

    def log_density(self, latent: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        r"""Unnormalised posterior log-density in the unconstrained space,
        :math:`\log p(x, z(u)) + \log|\det \partial z/\partial u|`, for latents (S, D) -> (S,).

        Vectorised over the S points with a particle plate; falls back to a loop for models
        that cannot be vectorised. Differentiable in ``latent``.
        """
        if self.prototype_trace is None:
            self.setup(*args, **kwargs)
        latent = latent.to(device=self._device, dtype=self._dtype)
        if self._vectorizable:
            try:
                return self._log_density(latent, self._max_plate_nesting, args, kwargs)
            except (ValueError, RuntimeError, IndexError, AssertionError):
                pass
        try:
            out = torch.cat([self._log_density(u[None], 0, args, kwargs, particle_plate=False)
                             for u in latent])
        except (ValueError, RuntimeError, IndexError, AssertionError):
            raise  # not a vectorisation problem (e.g. invalid parameter values): keep trying it
        # The loop works where the particle plate did not: the model's shapes do not broadcast
        # over a particle plate, so loop from now on.
        self._vectorizable = False
        return out

    def _log_density(self, latent: Tensor, nesting: int, args: tuple, kwargs: dict,
                     particle_plate: bool = True) -> Tensor:
        S = latent.shape[0]
        shape = (S,) + (1,) * nesting + latent.shape[-1:] if particle_plate else latent.shape[-1:]
        total, values = latent.new_zeros(S), {}
        for site, u in self._unpack_latent(latent.reshape(shape)):
            transform = biject_to(site["fn"].support)
            value = transform(u)
            log_det = transform.log_abs_det_jacobian(u, value)
            log_det = sum_rightmost(log_det, log_det.dim() - value.dim() + site["fn"].event_dim)
            values[site["name"]] = value
            total = total + (_reduce_to_particles(log_det, nesting) if particle_plate else log_det.sum())
        with poutine.block():
            if particle_plate:
                with pyro.plate("_pyroflows_particles", S, dim=-(nesting + 1)):
                    trace = poutine.trace(poutine.condition(self._raw_model[0], values)).get_trace(*args, **kwargs)
            else:
                trace = poutine.trace(poutine.condition(self._raw_model[0], values)).get_trace(*args, **kwargs)
        trace.compute_log_prob(site_filter=lambda n, s: not site_is_subsample(s))
        for site in trace.nodes.values():
            if site["type"] == "sample" and not site_is_subsample(site):
                lp = site["log_prob"]
                total = total + (_reduce_to_particles(lp, nesting) if particle_plate else lp.sum())
        return total

    # -- posterior summaries ----------------------------------------------------------------------

    def _unpack_batch(self, latent: Tensor) -> dict[str, Tensor]:
        """Constrained values of every site for latents (N, D): name -> (N, *site shape)."""
        N, pos, out = latent.shape[0], 0, {}
        for name, site in self.prototype_trace.iter_stochastic_nodes():
            shape = self._unconstrained_shapes[name]
            size = math.prod(shape)
            u = latent[:, pos : pos + size].reshape((N, *shape))
            out[name] = biject_to(site["fn"].support)(u)
            pos += size
        return out

    @torch.no_grad()
    def sample_posterior(self, num_samples: int = 1000, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Draw ``num_samples`` posterior samples of every latent site, in the constrained space.

        Returns a dict ``name -> tensor (num_samples, *site shape)``.
        """
        if self.prototype_trace is None:
            self.setup(*args, **kwargs)
        return self._unpack_batch(self._sample_latent_batch(num_samples))

    def _sample_latent_batch(self, num_samples: int) -> Tensor:
        flows = self._posterior_flows()
        return torch.cat([flow().sample((num_samples,)) for flow in flows], dim=-1)

    @torch.no_grad()
    def median(self, *args: Any, num_samples: int = 4000, **kwargs: Any) -> dict[str, Tensor]:
        """Posterior marginal medians of every latent site (Monte Carlo, ``num_samples`` draws)."""
        return {k: v[0] for k, v in self.quantiles([0.5], *args, num_samples=num_samples, **kwargs).items()}

    @torch.no_grad()
    def quantiles(self, quantiles: Any, *args: Any, num_samples: int = 4000, **kwargs: Any) -> dict[str, Tensor]:
        """Posterior marginal quantiles of every latent site (Monte Carlo).

        Returns a dict ``name -> tensor (len(quantiles), *site shape)``, as Pyro's autoguides.
        """
        samples = self.sample_posterior(num_samples, *args, **kwargs)
        out = {}
        for name, value in samples.items():
            q = torch.as_tensor(quantiles, dtype=value.dtype, device=value.device)
            out[name] = torch.quantile(value, q, dim=0)
        return out
