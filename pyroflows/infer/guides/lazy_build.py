"""When a flow guide is built: from one run of its model, at construction when the model's
arguments are known (or it needs none), otherwise at the guide's first call, as Pyro's
autoguides are."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Self

from ..model_density import check_model_arguments
from .sites import bindable

__all__ = ["LazyBuild"]


class LazyBuild:
    """Mixin of the flow guides: :meth:`setup` builds the guide once (its ``_build``)."""

    prototype_trace: Any

    def setup(self, *args: Any, **kwargs: Any) -> Self:
        """Build the guide now from one run of the model on ``*args, **kwargs`` (idempotent)."""
        if self.prototype_trace is None:
            self._build(args, kwargs)
        return self

    def _build(self, args: tuple, kwargs: dict) -> None:
        raise NotImplementedError

    def _build_if_known(
        self, model: Callable, model_args: tuple | None, model_kwargs: dict | None
    ) -> None:
        """Build now when ``model_args``/``model_kwargs`` are given or the model takes no
        required arguments; raise TypeError when they are not a tuple and a dict or do not fit
        the model's signature."""
        args, kwargs = check_model_arguments(model_args, model_kwargs)
        if model_args is not None or model_kwargs is not None or bindable(model, (), {}):
            if not bindable(model, args, kwargs):
                raise TypeError("model_args/model_kwargs do not match the model's signature")
            self.setup(*args, **kwargs)
