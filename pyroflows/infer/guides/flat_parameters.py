r"""A module's parameters held in one tensor, so that Pyro optimises a flow guide in one step.

Pyro's optimizers (``pyro.optim.Adam`` and the rest) create and step one torch optimizer per
parameter tensor: about 0.2 ms per tensor per SVI step on a CPU, whatever its size. A flow
guide has a dozen or more tensors (every layer's weights and biases), which made that
bookkeeping cost more than the flow itself on small models. :class:`FlatParameters` keeps
every parameter of a module in one flat tensor:

* the module's own ``nn.Parameter`` objects stay (so ``state_dict``, ``.parameters()``,
  ``copy.deepcopy`` and code that trains the module directly keep working), but their
  storage *is* a slice of the flat tensor, so an in-place update of either is seen by both;
* the guide registers only the flat tensor with Pyro (one ``pyro.param``, one optimizer);
* the guide's differentiable computations run through :meth:`FlatParameters.call`, which
  evaluates them with the module's parameters replaced by views of the flat tensor, so their
  gradient reaches the flat tensor (as ``torch.func.functional_call`` would, which refuses to
  run under the JIT's tracer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["FlatParameters"]


class FlatParameters:
    r"""Every parameter of ``module`` as a slice of one flat tensor ``flat`` (P,).

    Args:
        module: the module (its parameter set is fixed from now on; tied parameters are
            not supported).
        requires_grad: whether ``flat`` requires gradients (``False`` for a frozen copy).

    Raises:
        ValueError: for a module without parameters, or whose parameters differ in dtype or
            device.

    Example:
        >>> layer = torch.nn.Linear(2, 3)
        >>> flat = FlatParameters(layer)
        >>> flat.flat.shape
        torch.Size([9])
        >>> y = flat.call(layer, torch.ones(2))
        >>> y.sum().backward()
        >>> flat.flat.grad.shape, layer.weight.grad is None
        (torch.Size([9]), True)
    """

    def __init__(self, module: nn.Module, requires_grad: bool = True) -> None:
        named = list(module.named_parameters())
        if not named:
            raise ValueError("FlatParameters needs a module with parameters")
        if len({(p.dtype, p.device) for _, p in named}) > 1:
            raise ValueError("FlatParameters needs parameters of one dtype and device")
        self.module = module
        self._params = [p for _, p in named]
        self._owners = [
            (m, [(n, p) for n, p in m.named_parameters(recurse=False)])
            for m in module.modules()
            if any(True for _ in m.parameters(recurse=False))
        ]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.requires_grad = requires_grad
        self.flat = self._gather()

    def _gather(self) -> Tensor:
        """A new flat tensor holding the module's current values, which it then shares."""
        with torch.no_grad():
            flat = torch.cat([p.detach().reshape(-1) for p in self._params])
        flat.requires_grad_(self.requires_grad)
        self._bind(flat)
        return flat

    def _bind(self, flat: Tensor) -> None:
        for p, view in zip(self._params, flat.detach().split(self.sizes)):
            p.data = view.view(p.shape)

    def _shared(self) -> bool:
        storage = self.flat.untyped_storage().data_ptr()
        return all(
            p.untyped_storage().data_ptr() == storage and p.dtype == self.flat.dtype
            for p in (self._params[0], self._params[-1])
        )

    def current(self) -> Tensor:
        """The flat tensor; a new one holding the module's values when the module's parameters
        no longer share its storage (the module was moved with ``.to``, or copied)."""
        if not self._shared():
            self.flat = self._gather()
        return self.flat

    def adopt(self, tensor: Tensor) -> None:
        """Make ``tensor`` (e.g. the param store's, after a ``load``) the flat tensor: the
        module's parameters take its values and share its storage.

        Raises ValueError (nothing changed) for a tensor of another shape."""
        if tensor is self.flat:
            return
        if tensor.shape != self.flat.shape:
            raise ValueError(
                f"the stored flat parameters have shape {tuple(tensor.shape)}, this guide's "
                f"{tuple(self.flat.shape)}: they belong to another guide"
            )
        self.flat = tensor
        self._bind(tensor)

    def views(self) -> list[Tensor]:
        """Differentiable views of ``flat`` shaped as the module's parameters, in
        ``named_parameters`` order (shapes recorded at construction: reading a parameter's
        shape under the JIT's tracer would capture it as a constant)."""
        return [v.view(s) for v, s in zip(self.flat.split(self.sizes), self.shapes)]

    def call(self, fn: Callable, *args: Any) -> Any:
        """``fn(*args)`` with the module's parameters replaced by :meth:`views`, so gradients
        of the result reach ``flat`` (not the module's own parameters); they are put back
        after, also on an exception."""
        views = iter(self.views())
        saved = []
        try:
            for owner, params in self._owners:
                saved.append((owner, params))
                for n, _ in params:
                    delattr(owner, n)
                    setattr(owner, n, next(views))
            return fn(*args)
        finally:
            for owner, params in saved:
                for n, p in params:
                    if n in owner.__dict__:  # the view set above
                        delattr(owner, n)
                    if getattr(owner, n, None) is not p:
                        owner.register_parameter(n, p)
