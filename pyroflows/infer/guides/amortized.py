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
the plate jointly from one flow over their concatenated unconstrained values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.util import sum_rightmost
from pyro.infer.autoguide import AutoGuide
from torch import Tensor, nn
from torch.distributions import biject_to

from ...core import Flow
from .guide_support import GuideFlowDistribution, _bindable, continuous_latent_hide_fn
from .variational_flows import resolve_flow

__all__ = ["AutoAmortizedFlow"]


def _first_arg(*args: Any, **kwargs: Any) -> Tensor:
    if not args or not isinstance(args[0], Tensor):
        raise ValueError("AutoAmortizedFlow's default data_fn takes the model's first positional "
                         "argument as the data; pass data_fn=... for other signatures")
    return args[0]


class AutoAmortizedFlow(AutoGuide):
    r"""Amortized conditional-flow guide for the local latent sites of one plate.

    Args:
        model: a Pyro model whose continuous latent sites all lie in the plate ``plate``.
        encoder: an ``nn.Module`` mapping the data of a batch of points, shape (B, ...), to
            their contexts, shape (B, C).
        flow: a registry name (default ``"nsf"``, the sampling-fast spline flow of
            :mod:`pyroflows.infer.guides.variational_flows`), a conditional :class:`~pyroflows.Flow` with
            ``C`` context features, or a factory ``(features, context) -> Flow``.
        plate: name of the data plate (default: the only plate of the latent sites).
        data_fn: ``(*args, **kwargs) -> Tensor`` giving the full data, indexed along its first
            dim by the plate's (subsample) indices; default: the model's first argument.
        model_args: the model's arguments, to build the guide at construction (otherwise
            at the first call).
        model_kwargs: the model's keyword arguments, likewise.
        stl: use the "sticking the landing" gradient (see :class:`~pyroflows.infer.AutoFlow`).
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
        flow: Any = "nsf",
        *,
        plate: str | None = None,
        data_fn: Callable[..., Tensor] = _first_arg,
        model_args: tuple | None = None,
        model_kwargs: dict | None = None,
        stl: bool = False,
        **flow_options: Any,
    ) -> None:
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be an nn.Module, got {type(encoder).__name__}")
        if isinstance(flow, str):
            from ...flows import available

            if flow != "nsf" and flow not in available("vector"):
                raise ValueError(f"unknown flow {flow!r}; available: {', '.join(available('vector'))}")
        super().__init__(model)
        self.encoder = encoder
        self._flow_spec_box = (flow,)
        self._flow_options = dict(flow_options)
        self._plate_name = plate
        self._data_fn = data_fn
        self._stl = bool(stl)
        args = () if model_args is None else tuple(model_args)
        kwargs = {} if model_kwargs is None else dict(model_kwargs)
        if model_args is not None or model_kwargs is not None or _bindable(model, (), {}):
            self._setup_prototype(*args, **kwargs)

    _prototype_hide_fn = staticmethod(continuous_latent_hide_fn)

    def _setup_prototype(self, *args: Any, **kwargs: Any) -> None:
        super()._setup_prototype(*args, **kwargs)
        sites = list(self.prototype_trace.iter_stochastic_nodes())
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
                "AutoGuideList with AutoFlow(poutine.block(model, hide=[...]))")
        frame = self._prototype_frames[name]
        self._plate_dim = frame.dim
        self._site_info = []
        features = 0
        for site_name, site in sites:
            if len(site["cond_indep_stack"]) != 1:
                raise ValueError(f"site {site_name!r} is in nested plates; only one data plate is supported")
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
        if not isinstance(context, Tensor) or context.dim() != 2 or context.shape[0] != probe.shape[0]:
            raise ValueError(f"the encoder must map data (B, ...) to contexts (B, C); it returned "
                             f"{tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__}"
                             f" for data of shape {tuple(probe.shape)}")
        context_size = context.shape[-1]
        if isinstance(self._flow_spec_box[0], Flow) and self._flow_spec_box[0].context_features != context_size:
            raise ValueError(f"the encoder outputs {context_size} context features but the flow "
                             f"takes {self._flow_spec_box[0].context_features}")
        self.context_size = context_size
        self.flow = resolve_flow(self._flow_spec_box[0], features, context_size, **self._flow_options).to(
            device=self._device, dtype=self._dtype)
        self.encoder.to(device=self._device)

    def _synced(self, name: str) -> nn.Module:
        module = self._modules[name]
        if self._pyro_context.active:
            pyro.module(self._pyro_get_fullname(name), module, update_module_params=True)
        return module

    def _posterior(self, context: Tensor) -> GuideFlowDistribution:
        flow = self._synced("flow")
        shape = context.shape[:1] + (1,) * (-self._plate_dim - 1)
        context = context.reshape(shape + context.shape[-1:])
        posterior = GuideFlowDistribution(flow.base(shape), flow.transform(context))
        if self._stl:
            posterior._stl_flow = flow
        return posterior

    def forward(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        if self.prototype_trace is None:
            self._setup_prototype(*args, **kwargs)
        plates = self._create_plates(*args, **kwargs)
        encoder = self._synced("encoder")
        result = {}
        with ExitStack() as stack:
            idx = stack.enter_context(plates[self._plate_name])
            data = self._data_fn(*args, **kwargs)
            context = encoder(data.index_select(0, idx.to(data.device)).to(self._device))
            latent = pyro.sample(f"_{self._pyro_name}_latent", self._posterior(context),
                                 infer={"is_auxiliary": True})
            for name, site, event_shape, pos, size in self._site_info:
                u = latent[..., pos : pos + size].reshape(latent.shape[:-1] + event_shape)
                transform = biject_to(site["fn"].support)
                value = transform(u)
                event_dim = site["fn"].event_dim
                log_density = transform.inv.log_abs_det_jacobian(value, u)
                log_density = sum_rightmost(log_density, log_density.dim() - value.dim() + event_dim)
                result[name] = pyro.sample(name, dist.Delta(value, log_density=log_density, event_dim=event_dim))
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
