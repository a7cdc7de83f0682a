r"""Keeping a flow guide's modules in Pyro's param store, through Pyro's public API only.

Trainable parameters go through ``pyro.param`` (the flow guides' one flat tensor, see
:mod:`.flat_parameters`) or ``pyro.module(name, module, update_module_params=True)``, so a store
loaded from disk replaces them. Tensors that must be saved and loaded with the store
but never optimised (a flow's fixed whitening buffers, its parameter average) are put in the
store as they are with ``ParamStoreDict.set_state``, which neither copies them nor makes them
require gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import pyro
import pyro.poutine as poutine
import torch
from pyro.nn import PyroModule
from pyro.params.param_store import module_from_param_with_module_name
from torch import Tensor, nn

from ...core import Flow
from .averaging import ParameterAverage

__all__ = [
    "param_tensors",
    "pyro_fullname",
    "pyro_prefix",
    "store_tensor",
    "store_guide_tensors",
    "sync_module",
]


def param_tensors(fn: Callable, args: tuple, kwargs: dict) -> dict[str, Tensor]:
    """The unconstrained tensors of every ``pyro.param`` that ``fn(*args, **kwargs)`` (a model
    or a guide, built by this call if lazy) uses, by name: what an optimizer of it updates.
    One run, hidden from outer handlers."""
    with poutine.block(), poutine.trace(param_only=True) as capture:
        fn(*args, **kwargs)
    return {name: site["value"].unconstrained() for name, site in capture.trace.nodes.items()}


def pyro_fullname(owner: PyroModule, attr: str) -> str | None:
    """The name under which the running PyroModule ``owner`` registers its plain ``nn.Module``
    attribute ``attr`` with ``pyro.module`` (``"AutoFlow.flow"``, or ``"AutoGuideList.0.flow"``
    inside a guide list); ``None`` outside a call of ``owner`` (or for a module without
    trainable parameters).

    PyroModule registers such an attribute when it is read during its call; the registration
    is recorded here, hidden from every other handler.
    """
    with poutine.block(), poutine.trace(param_only=True) as capture:
        getattr(owner, attr)
    for name in capture.trace.nodes:
        return module_from_param_with_module_name(name)
    return None


def pyro_prefix(owner: PyroModule, attr: str) -> str | None:
    """The name of the running guide ``owner`` in the param store (``"AutoFlow"``, or
    ``"AutoGuideList.0"`` inside a guide list), found from where its attribute ``attr``
    registers (:func:`pyro_fullname`); ``None`` outside its calls."""
    name = pyro_fullname(owner, attr)
    return None if name is None else name[: -len(attr)].rstrip(".")


def store_tensor(key: str, tensor: Tensor) -> None:
    """Keep ``tensor`` in the param store under ``key``, without a ``pyro.param`` statement:
    saved and loaded with the store, never optimised. When the store already holds another
    tensor of the same shape there (e.g. after ``load``), its values are copied into
    ``tensor`` first; one of another shape belongs to an earlier guide of the same name (a
    new model in the same session), not to a saved state of this one, and is replaced."""
    store = pyro.get_param_store()
    if key in store:
        stored = store[key].unconstrained()
        if stored is tensor:
            return
        if stored.shape == tensor.shape:
            with torch.no_grad():
                tensor.copy_(stored.to(tensor))
        del store[key]
    store.set_state(
        {"params": {key: tensor}, "constraints": {key: torch.distributions.constraints.real}}
    )


def sync_module(name: str, module: nn.Module) -> bool:
    """``pyro.module(name, module, update_module_params=True)``; whether any parameter of
    ``module`` was replaced by the store's (a loaded state)."""
    before = list(module.parameters())
    pyro.module(name, module, update_module_params=True)
    return any(a is not b for a, b in zip(before, module.parameters()))


def store_guide_tensors(
    name: str, flow: Flow, average: ParameterAverage | None = None, loaded: bool = False
) -> None:
    """Keep ``flow``'s fixed whitening buffers and its parameter average (one flat tensor) in
    the param store under ``name``, beside the guide's trainable parameters. ``loaded``: the
    trainable parameters were just taken from the store (a loaded state); an average the
    store lacks then restarts there, one it holds is taken as a full average."""
    for buffer_name, buffer in flow.transforms[-1].named_buffers():
        if buffer.is_floating_point() and not buffer_name.endswith("mask"):
            store_tensor(f"{name}$$$whitening.{buffer_name}", buffer)
    if average is None:
        return
    key = f"{name}$$$average"
    if loaded and key not in pyro.get_param_store():
        average.reset(flow)  # loaded parameters without an average: start it there
    elif loaded:
        average.steps = max(average.steps, int(1 / average.rate))
    store_tensor(key, average.values.current())
