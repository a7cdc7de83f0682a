r"""``AutoAmortizedFlow``: a conditional flow over local latent variables (VAE-style guides).

For a model with a data plate,

.. code-block:: python

    def model(x):
        decoder = pyro.module("decoder", net)
        with pyro.plate("data", len(x), subsample_size=64) as idx:
            z = pyro.sample("z", dist.Normal(0, 1).expand([8]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x[idx])

the guide is :math:`q(z_i \mid x_i) = \text{flow}(\cdot \mid c_i)`, :math:`c_i = \text{encoder}(x_i)`:
one conditional flow shared by all data points, its context computed by a user network from the
observed data of each point. The guide enters the same plate (so it follows the model's
subsampling), takes the data of the subsampled points, and samples every local latent site of
the plate jointly from one flow over their concatenated unconstrained values. Like
:class:`~pyroflows.infer.AutoFlow`, it builds its prototype trace and plates with Pyro's public
API only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import pyro
import torch
from pyro.infer.autoguide import AutoGuide
from torch import Tensor, nn
from torch.distributions import biject_to

from ...core import Flow
from .flow_spec import DEFAULT_FLOW, check_flow_name, resolve_flow
from .guide_distribution import GuideFlowDistribution
from .lazy_build import LazyBuild
from .param_sync import pyro_prefix, sync_module
from .sites import discrete_message, guide_plates, prototype_trace, sample_delta

__all__ = ["AutoAmortizedFlow"]


def _first_arg(*args: Any, **kwargs: Any) -> Tensor:
    if not args or not isinstance(args[0], Tensor):
        raise ValueError(
            "AutoAmortizedFlow's default data_fn takes the model's first positional "
            "argument as the data; pass data_fn=... for other signatures"
        )
    return args[0]


class AutoAmortizedFlow(LazyBuild, AutoGuide):
    r"""Amortized conditional-flow guide for the local latent sites of one plate.

    Args:
        model: a Pyro model whose continuous latent sites all lie in the plate ``plate``.
        encoder: an ``nn.Module`` mapping the data of a batch of points, shape (B, ...), to
            their contexts, shape (B, C).
        flow: a registry name (default ``"nsf-iaf"``, the sampling-fast spline flow
            :func:`~pyroflows.flows.variational.nsf_iaf`; names mean what they mean in
            :func:`pyroflows.flows.build`, so ``"nsf"`` is the registry's autoregressive spline
            flow, used in its sampling-fast orientation), a conditional :class:`~pyroflows.Flow`
            with ``C`` context features, or a factory ``(features, context) -> Flow``.
        plate: name of the data plate (default: the only plate of the latent sites).
        data_fn: ``(*args, **kwargs) -> Tensor`` giving the full data, indexed along its first
            dim by the plate's (subsample) indices; default: the model's first argument.
        model_args: the model's arguments, to build the guide at construction (otherwise
            at the first call).
        model_kwargs: the model's keyword arguments, likewise.
        stl: use the "sticking the landing" gradient (see :class:`~pyroflows.infer.AutoFlow`).
        create_plates: as for Pyro's ``AutoGuide``: a function of the model's arguments
            returning the ``pyro.plate`` (or plates) the guide enters; the data plate is
            otherwise made from the prototype trace (its size and subsample size).
        **flow_options: preset options (``transforms``, ``hidden``, ...).

    Raises:
        ValueError: at construction, for a model without continuous latent sites, latent sites
            outside the plate, an unknown flow, or an encoder whose output size does not match
            the flow's context size.
    """

    def __init__(
        self,
        model: Callable,
        encoder: nn.Module,
        flow: Any = DEFAULT_FLOW,
        *,
        plate: str | None = None,
        data_fn: Callable[..., Tensor] = _first_arg,
        model_args: tuple | None = None,
        model_kwargs: dict | None = None,
        stl: bool = False,
        create_plates: Callable[..., Any] | None = None,
        **flow_options: Any,
    ) -> None:
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module, got {type(encoder).__name__}")
        check_flow_name(flow)
        super().__init__(model, create_plates=create_plates)
        self.encoder = encoder
        self._flow_spec_box = (flow,)
        self._flow_options = dict(flow_options)
        self._plate_name = plate
        self._data_fn = data_fn
        self._stl = bool(stl)
        self._build_if_known(model, model_args, model_kwargs)

    def _build(self, args: tuple, kwargs: dict) -> None:
        trace, self._frames, discrete = prototype_trace(self.model, args, kwargs)
        if discrete:
            raise ValueError(discrete_message(type(self).__name__, discrete))
        sites = list(trace.iter_stochastic_nodes())
        if not sites:
            raise ValueError("AutoAmortizedFlow found no continuous latent sites in the model")
        plates = {f.name for _, s in sites for f in s["cond_indep_stack"]}
        name = self._plate_name
        if name is None:
            if len(plates) != 1:
                raise ValueError(f"the latent sites lie in plates {sorted(plates)}; pass plate=...")
            name = plates.pop()
        self._plate_name = name
        outside = [n for n, s in sites if name not in {f.name for f in s["cond_indep_stack"]}]
        if outside:
            raise ValueError(
                f"latent sites {outside} are outside the plate {name!r}: AutoAmortizedFlow only "
                "models local latents; guide global ones with another guide, e.g. "
                "AutoGuideList with AutoFlow(poutine.block(model, hide=[...]))"
            )
        self._plate_dim = next(
            f.dim for _, s in sites for f in s["cond_indep_stack"] if f.name == name
        )
        self._site_info = []
        features = 0
        for site_name, site in sites:
            if len(site["cond_indep_stack"]) != 1:
                raise ValueError(
                    f"site {site_name!r} is in nested plates; only one data plate is supported"
                )
            value = site["value"]
            unconstrained = biject_to(site["fn"].support).inv(value)
            event_dim = site["fn"].event_dim
            batch_dims = value.dim() - event_dim
            # Per-point shape: the unconstrained value without its batch (plate) dims.
            event_shape = unconstrained.shape[batch_dims:]
            size = math.prod(event_shape)
            self._site_info.append((site_name, site, tuple(event_shape), features, size))
            features += size
        self.latent_dim = features
        self._dtype, self._device = value.dtype, value.device
        data = self._data_fn(*args, **kwargs)
        probe = data[: min(2, len(data))]
        with torch.no_grad():
            context = self.encoder(probe.to(self._device))
        if (
            not isinstance(context, Tensor)
            or context.dim() != 2
            or context.shape[0] != probe.shape[0]
        ):
            raise ValueError(
                f"the encoder must map data (B, ...) to contexts (B, C); it returned "
                f"{tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__}"
                f" for data of shape {tuple(probe.shape)}"
            )
        context_size = context.shape[-1]
        if (
            isinstance(self._flow_spec_box[0], Flow)
            and self._flow_spec_box[0].context_features != context_size
        ):
            raise ValueError(
                f"the encoder outputs {context_size} context features but the flow "
                f"takes {self._flow_spec_box[0].context_features}"
            )
        self.context_size = context_size
        with torch.device(self._device):  # built on the model's device, not torch's default
            flow = resolve_flow(
                self._flow_spec_box[0], features, context_size, **self._flow_options
            )
        self.flow = flow.to(device=self._device, dtype=self._dtype)
        self.encoder.to(device=self._device)
        # Last, so that a failed build leaves the guide unbuilt.
        self.prototype_trace = trace

    def _synced(self, name: str, prefix: str | None) -> nn.Module:
        """The module ``name``, its parameters taken from the param store while the guide
        runs (``prefix``, the guide's name there, is ``None`` outside its calls), so a loaded
        store restores it."""
        module = self._modules[name]
        if prefix is not None:
            sync_module(f"{prefix}.{name}" if prefix else name, module)
        return module

    def _posterior(self, context: Tensor, prefix: str | None) -> GuideFlowDistribution:
        flow = self._synced("flow", prefix)
        shape = context.shape[:1] + (1,) * (-self._plate_dim - 1)
        context = context.reshape(shape + context.shape[-1:])
        stl = (flow, context) if self._stl else None
        return GuideFlowDistribution(flow.base(shape), flow.transform(context), stl=stl)

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Sample the local latent sites of the data points in this call's (sub)sample of the
        data plate, given the model's ``*args, **kwargs`` (discrete latent sites must be
        enumerated, as for :class:`~pyroflows.infer.AutoFlow`)."""
        self.setup(*args, **kwargs)
        plates = guide_plates(self, self._frames, args, kwargs, self._device)
        prefix = pyro_prefix(self, "flow")
        encoder = self._synced("encoder", prefix)
        result = {}
        with ExitStack() as stack:
            idx = stack.enter_context(plates[self._plate_name])
            data = self._data_fn(*args, **kwargs)
            context = encoder(data.index_select(0, idx.to(data.device)).to(self._device))
            latent = pyro.sample(
                f"_{prefix or type(self).__name__}_latent",
                self._posterior(context, prefix),
                infer={"is_auxiliary": True},
            )
            for name, site, event_shape, pos, size in self._site_info:
                u = latent[..., pos : pos + size].reshape(latent.shape[:-1] + event_shape)
                result[name] = sample_delta(
                    name, biject_to(site["fn"].support), u, site["fn"].event_dim
                )
        return result

    @torch.no_grad()
    def posterior(self, data: Tensor) -> GuideFlowDistribution:
        """:math:`q(\\cdot \\mid x)` for a batch of data (B, ...): a distribution of batch shape
        (B,) over the concatenated unconstrained local latents."""
        context = self.encoder(data.to(self._device))
        flow = self._modules["flow"]
        return GuideFlowDistribution(flow.base(context.shape[:1]), flow.transform(context))

    @torch.no_grad()
    def sample_posterior(self, data: Tensor, num_samples: int = 1000) -> dict[str, Tensor]:
        """Samples of every local site given a batch of data: ``name -> (num_samples, B, *event)``,
        in the constrained space."""
        latent = self.posterior(data).sample((num_samples,))
        out = {}
        for name, site, event_shape, pos, size in self._site_info:
            u = latent[..., pos : pos + size].reshape(latent.shape[:-1] + event_shape)
            out[name] = biject_to(site["fn"].support)(u)
        return out

    def median(self, data: Tensor, num_samples: int = 4000) -> dict[str, Tensor]:
        """Posterior marginal medians of each local site for a batch of data (Monte Carlo)."""
        return {k: v.median(0).values for k, v in self.sample_posterior(data, num_samples).items()}
