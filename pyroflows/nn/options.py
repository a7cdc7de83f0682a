"""Keyword groups passed through: a layer that builds a network hands that network's options on
(``hidden`` and ``activation`` of a context network, say) rather than restating them, so each
option is documented once, in the class that takes it.

Example:
    >>> import inspect
    >>> from torch import nn
    >>> from pyroflows.nn import MLP
    >>> @passes_keywords_to(MLP, "hidden", "activation")
    ... class Head(nn.Module):
    ...     def __init__(self, features: int, *, scale: float = 1.0, **network: Any) -> None:
    ...         super().__init__()
    ...         self.net = MLP(features, 1, **network)
    >>> list(inspect.signature(Head).parameters)
    ['features', 'hidden', 'activation', 'scale']
    >>> Head(2, hiden=(8,))
    Traceback (most recent call last):
    ...
    TypeError: Head() got an unexpected keyword argument 'hiden'
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["passes_keywords_to"]

C = TypeVar("C", bound=type)


def passes_keywords_to(
    owner: Callable[..., Any], *names: str | Callable[..., Any]
) -> Callable[[C], C]:
    """Class decorator for a class whose ``__init__`` ends in ``**options`` that it passes to
    ``owner``'s keywords ``names`` (the class or network that takes and documents them).
    Options that go to several owners list each owner followed by its names:
    ``passes_keywords_to(GaussianizationMap, "components", AmortizedParameters, "hidden")``.

    The class's signature (``inspect.signature``, ``help``, the documentation, and so the
    presets' option checks) shows those keywords, keyword-only, with their owners' defaults,
    in place of ``**options`` and right after the class's positional parameters (put a ``*``
    where they belong). Constructing it with any other keyword raises TypeError naming the
    class and the keyword, even when the keywords are not used (a layer given a custom network).
    """
    group: list[inspect.Parameter] = []
    for item in (owner, *names):
        if callable(item):
            theirs = inspect.signature(item).parameters
        else:
            group.append(theirs[item].replace(kind=inspect.Parameter.KEYWORD_ONLY))

    def decorator(cls: C) -> C:
        own = list(inspect.signature(cls.__init__).parameters.values())[1:]  # less self
        own = [p for p in own if p.kind is not p.VAR_KEYWORD]
        at = sum(p.kind is not p.KEYWORD_ONLY for p in own)
        signature = inspect.Signature([*own[:at], *group, *own[at:]])
        init = cls.__init__

        @functools.wraps(init)
        def checked_init(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                signature.bind(*args, **kwargs)
            except TypeError as error:
                raise TypeError(f"{cls.__name__}() {error}") from None
            init(self, *args, **kwargs)

        cls.__init__ = checked_init  # type: ignore[misc]
        cls.__signature__ = signature  # type: ignore[attr-defined]
        return cls

    return decorator
