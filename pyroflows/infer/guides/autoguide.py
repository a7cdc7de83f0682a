r"""``AutoFlow``: a normalizing-flow autoguide over all continuous latent sites of a Pyro model.

Like Pyro's :class:`~pyro.infer.autoguide.AutoContinuous`, the guide maps every continuous latent
site to the unconstrained space, concatenates them into one vector :math:`u \in \mathbb{R}^D` and
models :math:`q(u)` with a flow; samples are mapped back to each site's support. Unlike Pyro's
``AutoNormalizingFlow`` it is built at construction, on the device and in the dtype of the
model's values, starts from an affine layer set by ``init_loc_fn``/``init_scale`` or a Laplace
approximation, gives ``median``/``quantiles``/``sample_posterior``, and works under
``JitTrace_ELBO`` and with the param store's ``save``/``load``. It builds its prototype trace and
its plates itself, with Pyro's public API only (see :mod:`.sites`), so that a Pyro release that
changes ``AutoContinuous``'s private hooks cannot break it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.autoguide.initialization import init_to_median
from pyro.nn import PyroParam
from torch import Tensor
from torch.distributions import biject_to, constraints

from ...checks import check_real
from ...core import Flow
from ...transforms import ElementwiseAffine
from ...transforms.triangular import LowerTriangularAffine
from ..model_density import LatentLayout, UnconstrainedLogDensity, safe_init
from .averaging import ParameterAverage
from .flat_parameters import FlatParameters
from .flow_spec import DEFAULT_FLOW, check_flow_name, resolve_flow
from .guide_distribution import GuideFlowDistribution
from .initialization import INIT_CHOICES, check_init_scale, initial_gaussian, set_affine
from .lazy_build import LazyBuild
from .param_sync import store_guide_tensors
from .sites import (
    discrete_message,
    guide_plates,
    plate_nesting_and_discrete,
    prototype_trace,
    sample_delta,
    unpack_latent,
)
from .summaries import PosteriorSummaries

__all__ = ["AutoFlow"]

STL_AUTO_MAX_DIM = 256


class AutoFlow(LazyBuild, PosteriorSummaries, AutoContinuous):
    r"""Normalizing-flow autoguide over all continuous latent sites (unconstrained space).

    An ``AutoContinuous`` (so Pyro and :func:`~pyroflows.infer.importance` treat it as a guide
    with a ``get_posterior()`` over the latent vector) whose every method is its own.

    :math:`q(u) = (A \circ T)_\# \mathcal{N}(0, I)` where :math:`T` is the flow (the identity at
    initialisation) and :math:`A(y) = \mu + L y` an affine layer whose initial values come from
    the init strategy, so the guide starts as :math:`\mathcal{N}(\mu, LL^\top)`.

    Args:
        model: a Pyro model.
        flow: a registry name (default ``"nsf-iaf"``: :func:`~pyroflows.flows.variational.nsf_iaf`,
            two inverse autoregressive layers of MADE width ``(32, 32)``, an affine one at the
            base side then a 4-bin spline with an affine stage, chosen on Neal's funnel and
            the banana of ``benchmarks/vi_targets.py``; density-fast presets such
            as ``"maf"`` or ``"nsf"`` are used in their sampling-fast orientation), a
            :class:`~pyroflows.Flow` over ``D`` features (e.g. ``DeepDestructor.as_flow()``),
            or a factory ``D -> Flow``. Every name means what it means in
            :func:`pyroflows.flows.build`: ``"nsf"`` is the registry's autoregressive spline
            flow (before pyroflows 0.2 the guides' ``"nsf"`` was today's ``"nsf-iaf"``).
        init_loc_fn: per-site init strategy for :math:`\mu` (Pyro's initialization functions);
            default prior median.
        init_scale: initial standard deviation of each unconstrained coordinate (with
            ``init="loc"``).
        init: ``"loc"`` (start at :math:`\mathcal{N}(\mu, \text{init\_scale}^2 I)`),
            ``"laplace"`` (find the MAP from :math:`\mu` by L-BFGS and start at the Laplace
            approximation, which whitens badly scaled, correlated posteriors), or ``"auto"``
            (default: estimate the ELBO of both starts with ``init_particles`` samples and keep
            the better one; Laplace is skipped above ``laplace_max_dim`` latent dimensions).
        init_starts: random starts of the search for the mode besides the init point, drawn
            uniformly in :math:`[-2, 2]` per unconstrained coordinate as Stan initialises;
            each distinct mode found is a Laplace candidate, the ELBO estimates choose, so a
            local mode next to the init point (an ODE model's) does not trap the guide.
        model_args: positional arguments of the model, so that the guide is built now. Without
            them the guide is built at construction when the model takes no required
            arguments, otherwise at its first call, as Pyro's autoguides are.
        model_kwargs: keyword arguments of the model, likewise.
        affine: the initial affine layer: ``"tril"`` (dense lower-triangular, learnable),
            ``"diag"`` (elementwise) or ``"auto"`` (``"tril"`` up to ``laplace_max_dim``
            dimensions).
        laplace_max_dim: largest latent dimension for which ``init="auto"`` tries Laplace.
        init_particles: samples used to compare the initialisations.
        stl: use the "sticking the landing" gradient (Roeder et al. 2017, https://arxiv.org/abs/1703.09194: the score term of
            log q is dropped, so the gradient's variance vanishes as q approaches the
            posterior). It needs the score of q at each sample: through the inverse flow when
            every layer is fast both ways (one pass for coupling layers), else from the
            sampling pass itself (:mod:`~pyroflows.infer.guides.path_gradient`: each layer's
            D x D Jacobian, about twice a plain step's flow cost at D = 100, where the
            inverse of an inverse autoregressive layer takes D passes). ``"auto"`` (default)
            turns it on for every flow fast both ways and for the others up to D = 256.
            Use ``False`` with importance-weighted bounds.
        average: rate of the running average of the flow's parameters (iterate averaging;
            weight ``max(1/n, average)`` at step n), used by the posterior whenever the guide
            is not training (no gradients, or ``guide.eval()``); ``None`` turns it off.
        create_plates: as for Pyro's ``AutoGuide``: a function of the model's arguments
            returning the ``pyro.plate`` (or plates) the guide enters, e.g. one subsampled by
            a data loader; other plates are made from the prototype trace.
        init_max_time: time budget in seconds of the Laplace start, all starts together:
            past it the best point so far is used, and modes other than the best are not
            assessed (``None``: no budget). It is checked between evaluations of the model, and
            the best mode's Hessian and the ELBO estimates of it and of the ``"loc"`` start
            (``init_particles`` draws each) are always computed, so a model whose single
            evaluation takes long (an ODE solved at wild parameters) can exceed it by those.
            ``guide.init_report`` says what the initialisation did
            (``init_report["summary"]``, one line).
        progress: show the initialisation's progress once it has run a second (``None``: on
            a terminal).
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
        flow: Any = DEFAULT_FLOW,
        *,
        init_loc_fn: Callable = init_to_median,
        init_scale: float = 1.0,
        init: str = "auto",
        model_args: tuple | None = None,
        model_kwargs: dict | None = None,
        affine: str = "auto",
        laplace_max_dim: int = 100,
        init_particles: int = 256,
        init_starts: int = 4,
        stl: bool | str = "auto",
        average: float | None = 0.01,
        create_plates: Callable[..., Any] | None = None,
        init_max_time: float | None = 60.0,
        progress: bool | None = None,
        **flow_options: Any,
    ) -> None:
        if not (
            isinstance(init_scale, int | float) and init_scale > 0 and math.isfinite(init_scale)
        ):
            raise ValueError(f"init_scale must be a positive number, got {init_scale!r}")
        if init not in INIT_CHOICES:
            raise ValueError(f"init must be one of {INIT_CHOICES}, got {init!r}")
        if affine not in ("auto", "tril", "diag"):
            raise ValueError(f"affine must be 'auto', 'tril' or 'diag', got {affine!r}")
        check_flow_name(flow)
        self._flow_spec_box = (flow,)
        self._flow_options = dict(flow_options)
        self._init_scale = float(init_scale)
        self._init_mode = init
        self._affine_mode = affine
        self._laplace_max_dim = laplace_max_dim
        self._init_particles = init_particles
        if isinstance(init_starts, bool) or not isinstance(init_starts, int):
            raise TypeError(f"init_starts must be an int, got {type(init_starts).__name__}")
        if init_starts < 0:
            raise ValueError(f"init_starts must be >= 0, got {init_starts}")
        self._init_starts = init_starts
        self._init_max_time = (
            None if init_max_time is None else check_real("init_max_time", init_max_time)
        )
        self._progress = progress
        self.init_choice: str | None = None
        self._has_discrete = False
        if stl not in (True, False, "auto"):
            raise ValueError(f"stl must be True, False or 'auto', got {stl!r}")
        self._stl_option = stl
        self._stl = stl is True
        if average is not None and not 0 < average <= 1:
            raise ValueError(f"average must be in (0, 1] or None, got {average!r}")
        self._average_rate = average
        self.init_report: dict[str, Any] = {}
        super().__init__(model, init_loc_fn=safe_init(init_loc_fn))
        self.create_plates = create_plates
        self.model_without_init = model
        self._build_if_known(model, model_args, model_kwargs)

    # -- construction ----------------------------------------------------------------------------

    def _build(self, args: tuple, kwargs: dict) -> None:
        # self.model runs under init_loc_fn, so the prototype's values are the init point.
        trace, self._frames, discrete = prototype_trace(self.model, args, kwargs)
        if discrete:
            raise ValueError(discrete_message(type(self).__name__, discrete))
        self._layout = LatentLayout(trace.iter_stochastic_nodes())
        if self._layout.dim == 0:
            raise ValueError(
                f"{type(self).__name__} found no continuous latent sites in the model; "
                "observed and discrete (enumerated) sites are not modelled by a flow guide"
            )
        self._site_frames = {n: s["cond_indep_stack"] for n, s in trace.iter_stochastic_nodes()}
        self.latent_dim = self._layout.dim
        nesting, self._has_discrete = plate_nesting_and_discrete(self.model, args, kwargs)
        self._density = UnconstrainedLogDensity(self.model_without_init, self._layout, nesting)
        # The init strategy's point, unconstrained, flat.
        loc = torch.cat(
            [
                biject_to(site["fn"].support).inv(site["value"].detach()).reshape(-1)
                for _, site in trace.iter_stochastic_nodes()
            ]
        )
        self._dtype, self._device = loc.dtype, loc.device
        check_init_scale(self._init_scale, loc)
        # Start at N(loc, init_scale^2 I) (needed by the Laplace search, which never uses the
        # flow's values), then move to the chosen initial Gaussian.
        self._build_flows(loc)
        eye = torch.ones_like(loc).diag_embed()
        self._set_affine(loc, eye, self._init_scale)
        loc, scale_tril = self._initial_gaussian(loc, args, kwargs)
        if self.init_choice == "laplace":
            self._set_affine(loc, scale_tril, 1.0)
        self._make_flat_parameters()
        self._make_averages()
        # The STL gradient needs the guide's score at its sample: through the inverse flow
        # when every layer is fast both ways, else from the sampling pass's Jacobians
        # (path_gradient.py), whose size grows as D^2 per sample.
        flows = [flow for flow, _ in self._flows_and_slices()]
        fast_inverse = all(t.fast_direction == "both" for f in flows for t in f.transforms)
        self._path_gradient = not fast_inverse
        if self._stl_option == "auto":
            self._stl = fast_inverse or all(f.features <= STL_AUTO_MAX_DIM for f in flows)
        # Last, so that a failed build leaves the guide unbuilt.
        self.prototype_trace = trace

    def _make_flow(self, features: int) -> Flow:
        r"""``W \circ T \circ A`` for ``features`` dims: a trainable affine ``A`` at the base side,
        the flow ``T`` (the identity at start), a fixed whitening ``W`` (the init loc and, for a
        Laplace start, its Cholesky factor), so the flow and the optimizer work in units of the
        posterior's scale."""
        use_tril = self._affine_mode == "tril" or (
            self._affine_mode == "auto" and features <= self._laplace_max_dim
        )
        affine = LowerTriangularAffine if use_tril else ElementwiseAffine
        with torch.device(self._device):  # built on the model's device, not torch's default
            body = resolve_flow(self._flow_spec_box[0], features, **self._flow_options)
            trainable, whitening = affine(features), affine(features, trainable=False)
            flow = Flow([trainable, *body.transforms, whitening], body.base)
        return flow.to(device=self._device, dtype=self._dtype)

    def _build_flows(self, loc: Tensor) -> None:
        self.flow = self._make_flow(self.latent_dim)

    def _make_averages(self) -> None:
        if self._average_rate is not None:
            self.averages = torch.nn.ModuleList(
                ParameterAverage(flow, self._average_rate) for flow, _ in self._flows_and_slices()
            )

    def _make_flat_parameters(self) -> None:
        """One flat tensor for every flow parameter, the guide's ``flow_parameters`` (a
        ``PyroParam``, so its one ``pyro.param`` statement is named as Pyro names a guide's
        parameters, in a guide list too): Pyro then steps one optimizer, not one per weight
        and bias (see :mod:`.flat_parameters`). The flows' own parameters become frozen views
        of it: every gradient of the guide reaches the flat tensor, so
        ``torch.optim.Adam(guide.parameters())`` trains it as Pyro's optimizers do."""
        container = self._modules["flows" if "flows" in self._modules else "flow"]
        flat = FlatParameters(container)
        for p in container.parameters():
            p.requires_grad_(False)
        self.flow_parameters = PyroParam(flat.flat, constraints.real)
        flat.adopt(self.flow_parameters_unconstrained)
        self._flat, self._loaded = flat, False
        self._flat_parts, start = [], 0  # where each flow's parameters lie in the flat tensor
        for flow, _ in self._flows_and_slices():
            size = sum(p.numel() for p in flow.parameters())
            self._flat_parts.append(slice(start, start + size))
            start += size

    def _averages(self) -> list[ParameterAverage | None]:
        if "averages" in self._modules:
            return list(self._modules["averages"])
        return [None] * len(self._flows_and_slices())

    def _training(self) -> bool:
        return torch.is_grad_enabled() and self.training and not torch.jit.is_tracing()

    def _synced_flows(self, prefix: str | None) -> list[Flow]:
        """The live flows, their fixed whitening and parameter averages kept in the param store
        under ``prefix`` (the guide's name there, ``None`` outside its calls), the averages
        updated when training. Under JIT tracing, averaging is switched off (the trace could
        not update it)."""
        flows = [flow for flow, _ in self._flows_and_slices()]
        if torch.jit.is_tracing() and "averages" in self._modules:
            del self._modules["averages"]
        if prefix is not None:  # inside a call of the guide: sync with the param store
            loaded, self._loaded = self._loaded, False
            for i, (flow, average) in enumerate(zip(flows, self._averages())):
                store_guide_tensors(
                    f"{prefix}.flow_{i}" if i else f"{prefix}.flow", flow, average, loaded
                )
        if self._training():
            flat = self._flat.flat
            for part, average in zip(self._flat_parts, self._averages()):
                if average is not None:
                    average.update(flat[part])
        return flows

    def _pyro_prefix(self) -> str | None:
        """The guide's name in the param store (``"AutoFlow"``, ``"AutoGuideList.0"`` in a
        guide list) while it runs, ``None`` outside its calls. Inside a call this is the
        guide's one ``pyro.param`` statement, ``{name}.flow_parameters``, whose tensor (the
        store's own after a ``load``) the flows' parameters then view."""
        with poutine.trace(param_only=True) as capture:
            self.flow_parameters  # noqa: B018 (a PyroParam: reading it is the param statement)
        if not capture.trace.nodes:
            return None
        name = next(iter(capture.trace.nodes))
        stored = self.flow_parameters_unconstrained
        if stored.shape != self._flat.flat.shape:
            # An earlier guide of the same name (a new model in the same session): replace it.
            del pyro.get_param_store()[name]
            self.flow_parameters = PyroParam(self._flat.flat.detach(), constraints.real)
            return self._pyro_prefix()
        if stored.untyped_storage().data_ptr() != self._flat.flat.untyped_storage().data_ptr():
            self._loaded = True
        self._flat.adopt(stored)
        return name[: -len(".flow_parameters")]

    def _posterior_flows(self, prefix: str | None = None) -> list[Flow]:
        """The flows that give the posterior: the live ones while training (gradients enabled
        and ``guide.training``), else the parameter averages (when enabled and started).
        ``prefix``: the guide's name in the param store if known, else it is looked up."""
        flows = self._synced_flows(self._pyro_prefix() if prefix is None else prefix)
        if self._training():
            return flows
        posterior = []
        for flow, avg in zip(flows, self._averages()):
            if avg is None or avg.steps == 0:
                posterior.append(flow)
            else:
                avg.copy_buffers(flow)
                posterior.append(avg.flow)
        return posterior

    def _flows_and_slices(self) -> list[tuple[Flow, slice]]:
        """Each flow with the slice of the latent vector it models."""
        return [(self._modules["flow"], slice(0, self.latent_dim))]

    def _set_affine(self, loc: Tensor, scale_tril: Tensor, scale: float) -> None:
        set_affine(self._flows_and_slices(), loc, scale_tril, scale)

    def _initial_gaussian(self, loc: Tensor, args: tuple, kwargs: dict) -> tuple[Tensor, Tensor]:
        # The unconstrained density needs every latent site: with discrete (enumerated) sites
        # left to the ELBO, there is none to maximise, so start from init_loc_fn/init_scale.
        try_laplace = not self._has_discrete and (
            self._init_mode == "laplace"
            or (self._init_mode == "auto" and self.latent_dim <= self._laplace_max_dim)
        )

        def log_density(u: Tensor) -> Tensor:
            return self._density(u, args, kwargs)

        self.init_choice, loc, scale_tril, self.init_report = initial_gaussian(
            log_density,
            loc,
            self._init_scale,
            self._init_mode,
            try_laplace,
            self._init_particles,
            self._init_max_time,
            self._progress,
            self._init_starts,
        )
        return loc, scale_tril

    @property
    def init_elbo(self) -> dict[str, float]:
        """The ELBO estimate of each candidate start (``init_report["elbo"]``)."""
        return self.init_report.get("elbo", {})

    # -- the posterior -----------------------------------------------------------------------------

    def get_base_dist(self) -> dist.TorchDistribution:
        return self.flow.base()

    def get_transform(self, *args: Any, **kwargs: Any):  # noqa: ANN201
        return self.flow.transform()

    def get_posterior(self, *args: Any, **kwargs: Any) -> GuideFlowDistribution:
        """The flow distribution :math:`q(u)` over the unconstrained latent vector."""
        self.setup(*args, **kwargs)
        return self._posterior(None)

    def _posterior(self, prefix: str | None) -> GuideFlowDistribution:
        return self._flow_posterior(self._posterior_flows(prefix)[0])

    def _flow_posterior(self, flow: Flow) -> GuideFlowDistribution:
        """``flow``'s distribution: with gradients (training, or the JIT's tracing) through
        the flat parameters, so that they reach them; while training with ``stl``, with the
        STL log-density (the path gradient of :mod:`.path_gradient`, or the inverse pass when
        every layer is fast both ways)."""
        if not (torch.is_grad_enabled() and self.training):
            return GuideFlowDistribution(flow.base(), flow.transform())
        stl = (flow, None) if self._stl and self._training() else None
        return GuideFlowDistribution(
            flow.base(),
            flow.transform(),
            stl=stl,
            run=self._flat.call,
            path_gradient=stl is not None and self._path_gradient,
        )

    def sample_latent(self, *args: Any, **kwargs: Any) -> Tensor:
        """Sample the unconstrained latent vector (D,) at an auxiliary site (the model's args)."""
        self.setup(*args, **kwargs)
        return self._sample_latent(self._pyro_prefix())

    def _sample_latent(self, prefix: str | None) -> Tensor:
        return pyro.sample(
            f"_{prefix or type(self).__name__}_latent",
            self._posterior(prefix),
            infer={"is_auxiliary": True},
        )

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Sample every latent site of the model, given its ``*args, **kwargs``: the latent
        vector from the flow, then each site at its value, in its plates.

        Raises ValueError (when the guide is built) for discrete latent sites not marked for
        enumeration: see :func:`~pyroflows.infer.guides.sites.discrete_message`."""
        self.setup(*args, **kwargs)
        # Looked up once per call: it registers the flow with the param store.
        latent = self._sample_latent(self._pyro_prefix())
        plates = guide_plates(self, self._frames, args, kwargs, self._device)
        result = {}
        for site, u in unpack_latent(self._layout, latent):
            name = site["name"]
            with ExitStack() as stack:
                for frame in self._site_frames[name]:
                    stack.enter_context(plates[frame.name])
                result[name] = sample_delta(name, site["transform"], u, site["event_dim"])
        return result

    # -- model densities ------------------------------------------------------------------------

    def log_density(self, latent: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        r"""Unnormalised posterior log-density in the unconstrained space,
        :math:`\log p(x, z(u)) + \log|\det \partial z/\partial u|`, for latents (S, D) -> (S,).

        Batched over the S points (a particle plate, else ``torch.func.vmap``, else a loop: see
        :class:`~pyroflows.infer.model_density.UnconstrainedLogDensity`). Differentiable in
        ``latent``.
        """
        self.setup(*args, **kwargs)
        latent = latent.to(device=self._device, dtype=self._dtype)
        return self._density(latent, args, kwargs)

    def _sample_latent_batch(self, num_samples: int) -> Tensor:
        flows = self._posterior_flows()
        return torch.cat([flow().sample((num_samples,)) for flow in flows], dim=-1)
