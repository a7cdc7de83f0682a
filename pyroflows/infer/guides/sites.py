r"""Which sites a flow guide models, its prototype trace and its plates, with Pyro's public API.

A guide learns the structure of its model from one run of it, the *prototype trace*, which
keeps only the sites the guide models; each call then enters the plates of those sites. Inside
a Pyro ``AutoGuideList`` the list (the guide's ``master``) creates the plates once for all its
parts, and the parts enter the list's.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions.util import sum_rightmost
from pyro.infer.autoguide import AutoGuide
from pyro.infer.autoguide.utils import helpful_support_errors
from pyro.poutine.indep_messenger import CondIndepStackFrame
from pyro.poutine.util import site_is_subsample
from torch import Tensor
from torch.distributions import Transform, biject_to

from ..model_density import LatentLayout, trace_plate_nesting

__all__ = [
    "bindable",
    "discrete_message",
    "continuous_latent_hide_fn",
    "plate_nesting_and_discrete",
    "guide_plates",
    "prototype_trace",
    "sample_delta",
    "unpack_latent",
]


def _plain_discrete(msg: dict) -> bool:
    """A discrete latent sample site that is not enumerated: no flow guide can model it."""
    if msg["type"] != "sample" or msg["is_observed"] or site_is_subsample(msg):
        return False
    if msg["infer"].get("enumerate") or msg["infer"].get("is_auxiliary"):
        return False
    support = getattr(msg["fn"], "support", None)
    return bool(support is not None and support.is_discrete)


def continuous_latent_hide_fn(msg: dict) -> bool:
    """Prototype filter: ``True`` (hide) for every site but the continuous, non-enumerated,
    non-auxiliary latent sample sites, which are those a flow guide models."""
    if msg["type"] != "sample" or msg["is_observed"] or site_is_subsample(msg):
        return True
    if msg["infer"].get("enumerate") or msg["infer"].get("is_auxiliary"):
        return True
    support = getattr(msg["fn"], "support", None)
    return bool(support is not None and support.is_discrete)


def plate_nesting_and_discrete(model: Callable, args: tuple, kwargs: dict) -> tuple[int, bool]:
    """A model's plate nesting, and whether it has latent sites a flow does not model
    (discrete ones, left to enumeration), from one trace of it."""
    with poutine.block():
        trace = poutine.trace(model).get_trace(*args, **kwargs)
    discrete = any(
        site["type"] == "sample"
        and not site["is_observed"]
        and continuous_latent_hide_fn(site)
        and not site_is_subsample(site)
        for site in trace.nodes.values()
    )
    return trace_plate_nesting(trace), discrete


def bindable(fn: Callable, args: tuple, kwargs: dict) -> bool:
    """Whether ``fn(*args, **kwargs)`` matches ``fn``'s signature."""
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return False
    return True


def prototype_trace(
    model: Callable, args: tuple, kwargs: dict
) -> tuple[poutine.Trace, dict[str, CondIndepStackFrame], list[str]]:
    """One run of ``model``, hidden from every outer handler, recording only the continuous
    latent sites (:func:`continuous_latent_hide_fn`), the plate frames of those sites by
    name, and the names of the discrete latent sites not marked for enumeration, which a
    flow guide refuses (:func:`discrete_message` says why and what to do), as Pyro's
    autoguides do.

    Raises:
        NotImplementedError: a site lies in a sequential plate, which a guide that samples all
            its sites at once cannot follow (as Pyro's autoguides), or has a support without
            a bijection to the reals (with Pyro's advice on what to do).
    """

    def hide(msg: dict) -> bool:
        return continuous_latent_hide_fn(msg) and not _plain_discrete(msg)

    with poutine.block():
        trace = poutine.trace(poutine.block(model, hide_fn=hide)).get_trace(*args, **kwargs)
    discrete = [name for name, site in trace.nodes.items() if _plain_discrete(site)]
    for name in discrete:
        trace.remove_node(name)
    frames = {}
    for name, site in trace.iter_stochastic_nodes():
        with helpful_support_errors(site):
            biject_to(site["fn"].support)
        for frame in site["cond_indep_stack"]:
            if not frame.vectorized:
                raise NotImplementedError(
                    f"site {name!r} is in the sequential plate {frame.name!r}; "
                    "flow guides support vectorized pyro.plate only"
                )
            frames[frame.name] = frame
    return trace, frames, discrete


def discrete_message(guide: str, names: list[str]) -> str:
    """Why ``guide`` cannot model the discrete latent sites ``names``, and what to do."""
    sites = ", ".join(repr(n) for n in names)
    first = names[0]
    return (
        f"{guide} cannot guide the discrete latent site(s) {sites}: a flow models continuous "
        "latents only, and Pyro would leave the site unguided (drawn from its prior) with only "
        "a warning. Enumerate it, e.g. pyro.sample("
        f"{first!r}, ..., infer={{'enumerate': 'parallel'}}) (or config_enumerate(model)), and "
        "train with TraceEnum_ELBO; or marginalise it out of the model; or guide it with "
        f"another guide, e.g. AutoGuideList with a flow guide of poutine.block(model, "
        f"hide=[{first!r}])"
    )


def guide_plates(
    guide: AutoGuide,
    frames: dict[str, CondIndepStackFrame],
    args: tuple,
    kwargs: dict,
    device: torch.device | None = None,
) -> dict[str, pyro.plate]:
    """The plates ``guide`` enters this call, by name, also kept as ``guide.plates``.

    In an ``AutoGuideList`` they are the list's (it creates them before calling its parts, so
    all parts share one subsample). Otherwise they are those of ``guide.create_plates`` (called
    on the model's arguments, e.g. for a plate subsampled by the data loader) and, for every
    other frame of the prototype, a plate of the prototype's size and subsample size, whose
    subsample indices live on ``device`` (the model's).
    """
    if guide.master is not None:
        if guide.create_plates is not None:
            raise ValueError(
                "create_plates can only be given to the outermost guide (the AutoGuideList)"
            )
        guide.plates = guide.master().plates
        return guide.plates
    plates: dict[str, pyro.plate] = {}
    if guide.create_plates is not None:
        made = guide.create_plates(*args, **kwargs)
        made = [made] if isinstance(made, pyro.plate) else list(made)
        if not all(isinstance(p, pyro.plate) for p in made):
            raise TypeError("create_plates() must return a pyro.plate or an iterable of them")
        plates = {p.name: p for p in made}
    for name, frame in sorted(frames.items()):
        if name not in plates:
            plates[name] = pyro.plate(
                name,
                frame.full_size or frame.size,
                dim=frame.dim,
                subsample_size=frame.size,
                device=device,
            )
    guide.plates = plates
    return plates


def unpack_latent(layout: LatentLayout, latent: Tensor) -> Iterator[tuple[dict[str, Any], Tensor]]:
    """Split latents (*batch, D) into each site's unconstrained value, ``(layout site, u)`` in
    the layout's order. The batch dims (e.g. vectorized ELBO particles, to the left of the
    model's plates) are broadcast against each site's own batch dims, as Pyro's
    ``AutoContinuous`` guides do."""
    batch_shape, pos = latent.shape[:-1], 0
    for site in layout.sites:
        event_dim = len(site["shape"]) - site["batch_dims"]
        shape = torch.broadcast_shapes(site["shape"], batch_shape + (1,) * event_dim)
        yield site, latent[..., pos : pos + site["size"]].reshape(shape)
        pos += site["size"]


def sample_delta(name: str, transform: Transform, u: Tensor, event_dim: int) -> Tensor:
    r"""Record the site ``name`` at :math:`z = T(u)` with a ``Delta`` whose log-density is
    :math:`-\log|\det \partial z/\partial u|`, so the guide's log-density of :math:`z` is that
    of the auxiliary :math:`u` plus the change of variables (zero where the site is masked)."""
    value = transform(u)
    log_density: Tensor | float = 0.0
    if poutine.get_mask() is not False:
        log_density = transform.inv.log_abs_det_jacobian(value, u)
        log_density = sum_rightmost(log_density, log_density.dim() - value.dim() + event_dim)
    return pyro.sample(name, dist.Delta(value, log_density=log_density, event_dim=event_dim))
