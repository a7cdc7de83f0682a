"""Argument checks shared by every layer: the one place that says what a valid count, choice,
flag, width list, event shape or context is, and words the error.

These are the ground floor of the package (they import nothing from it), so conditioners,
transforms, models and inference all validate the same way and with the same messages.

Example:
    >>> check_count("bins", 8, 2)
    8
    >>> check_choice("order", "random", ("default", "random"))
    'random'
"""

from __future__ import annotations

import functools
import inspect
import math
import operator
import os
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np
import pyro.distributions as dist
import torch
from torch import Tensor

__all__ = [
    "as_data",
    "as_sample_shape",
    "check_allocation",
    "check_batch",
    "check_choice",
    "check_context",
    "check_count",
    "check_dtype",
    "check_event",
    "check_features",
    "check_finite",
    "check_flag",
    "check_floating",
    "check_hidden",
    "check_not_nan",
    "check_options",
    "check_real",
    "check_shape",
    "validates",
]


def check_count(what: str, value: object, low: int = 1) -> int:
    """Return ``value`` as an ``int`` if it is an integer (Python or NumPy, not a bool) of at
    least ``low``; raise ValueError naming ``what`` otherwise."""
    if not _is_count(value, low):
        raise ValueError(f"{what} must be an integer >= {low}, got {value!r}")
    return operator.index(value)  # type: ignore[arg-type]


def check_choice(what: str, value: object, choices: Collection[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``; raise ValueError listing them otherwise."""
    if not isinstance(value, str | int | float | None) or value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def check_flag(what: str, value: object) -> bool:
    """Return ``value`` if it is a ``bool``; raise TypeError otherwise (``0``/``"no"`` are not
    flags: they are usually a misplaced positional argument)."""
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be True or False, got {value!r}")
    return value


def check_options(
    kind: str, name: str, factory: Callable[..., Any], options: dict[str, Any], sizes: int = 2
) -> None:
    """Raise TypeError naming the options that are not keywords of ``factory`` beyond its
    first ``sizes`` (positional size) arguments, and listing the ones it takes.

    A factory that passes ``**options`` through to the classes it builds names them in a
    ``passes_options_to`` attribute (a callable or a tuple of them); their keywords count as
    the factory's own (less those in its ``fixed_options``), so a preset documents nothing
    twice and still rejects a typo at once.
    """
    accepted = [
        n
        for n, p in list(inspect.signature(factory).parameters.items())[sizes:]
        if p.kind is not inspect.Parameter.VAR_KEYWORD
    ]
    targets = getattr(factory, "passes_options_to", ())
    # Keywords the factory sets itself (a coupling's map, a Sylvester layer's flip) are not
    # options, though its classes take them.
    fixed = tuple(getattr(factory, "fixed_options", ()))
    for target in targets if isinstance(targets, tuple) else (targets,):
        for n, p in inspect.signature(target).parameters.items():
            if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and n != "self"):
                if n not in accepted and n not in ("features", "context", "shape", *fixed):
                    accepted.append(n)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"{kind} {name!r} got unknown options {unknown}; its options are {accepted}"
        )


def check_hidden(hidden: Sequence[int], what: str = "widths") -> tuple[int, ...]:
    """Validate a non-empty sequence of positive hidden sizes (``what`` names them in the
    message: widths, channel counts); TypeError for a bare number, ValueError otherwise."""
    if isinstance(hidden, int | str) or not isinstance(hidden, Sequence):
        raise TypeError(f"hidden must be a sequence of {what}, e.g. (64, 64), got {hidden!r}")
    values = tuple(hidden)
    if not values or not all(_is_count(h, 1) for h in values):
        raise ValueError(f"hidden must be a non-empty tuple of positive {what}, got {values!r}")
    return tuple(operator.index(h) for h in values)


def check_shape(shape: Sequence[int] | int, what: str = "shape") -> tuple[int, ...]:
    """An event shape as a tuple of positive integers: an integer ``d`` gives ``(d,)``, a
    sequence such as ``(C, H, W)`` is kept. ValueError otherwise."""
    if _is_count(shape, 1):
        return (operator.index(shape),)  # type: ignore[arg-type]
    if isinstance(shape, Sequence) and shape and all(_is_count(v, 1) for v in shape):
        return tuple(operator.index(v) for v in shape)
    raise ValueError(f"{what} must be a positive integer or a tuple of them, got {shape!r}")


def _is_count(value: object, low: int) -> bool:
    # The __index__ test first: torch.compile cannot trace operator.index's TypeError on a
    # tuple (torch 2.11), and a sample shape is usually one.
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        return False
    try:
        return operator.index(value) >= low  # type: ignore[arg-type]
    except TypeError:
        return False


def check_event(x: object, shape: Sequence[int], what: str = "input") -> None:
    """Raise TypeError when ``x`` is not a tensor, ValueError when it does not end in the
    event ``shape`` (``(d,)`` for vectors, ``(C, H, W)`` for images)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    shape = tuple(shape)
    if x.dim() < len(shape) or tuple(x.shape[x.dim() - len(shape) :]) != shape:
        if len(shape) == 1:
            raise ValueError(
                f"{what} has shape {tuple(x.shape)}; expected a last dimension of {shape[0]} features"
            )
        raise ValueError(
            f"{what} has shape {tuple(x.shape)}; expected (..., {', '.join(map(str, shape))})"
        )


def check_features(x: object, features: int, what: str = "input") -> None:
    """Raise a ValueError when ``x`` is not a tensor whose last dimension is ``features``."""
    check_event(x, (features,), what)


def check_context(context: Tensor | None, context_features: int) -> None:
    """Raise a ValueError when a context is missing, unexpected or mis-shaped."""
    if context_features == 0:
        if context is not None:
            raise ValueError("this transform takes no context (it was built with context=0)")
        return
    if context is None:
        raise ValueError(
            f"this transform is conditional on a context of {context_features} features; "
            "pass one (flow(context) or transform.condition(context))"
        )
    check_features(context, context_features, "context")


def as_data(
    value: Any,
    name: str,
    event: int | Sequence[int] | None,
    rows: int | None,
    device: torch.device,
    dtype: torch.dtype,
) -> Tensor:
    """Check and convert an array-like to a ``(rows, *event)`` tensor on ``device``/``dtype``.

    ``event`` is the shape of one row: an int ``D`` (or ``(D,)``) for vectors ``(n, D)``, a
    tuple such as ``(C, H, W)`` for images, ``None`` for any. Integer data (pixel levels, say)
    become ``dtype`` values; the models of discrete data take them in that form.

    Raises ValueError naming ``name`` for a wrong shape, NaN or infinite values.

    Example:
        >>> as_data([[1, 2]], "data", 2, None, torch.device("cpu"), torch.float64).shape
        torch.Size([1, 2])
    """
    if isinstance(value, Tensor):
        tensor = value.detach()
    else:
        try:
            # Host memory: made on the CPU, whatever torch's default device, then moved.
            tensor = torch.as_tensor(np.asarray(value, dtype=np.float64), device="cpu")
        except (TypeError, ValueError) as error:
            raise TypeError(f"{name} must be a tensor or an array of numbers: {error}") from None
    if event is not None:
        event = (event,) if isinstance(event, int) else tuple(event)
        if tensor.dim() != 1 + len(event) or tuple(tensor.shape[1:]) != event:
            raise ValueError(
                f"{name} must have shape (n, {', '.join(map(str, event))}), "
                f"got {tuple(tensor.shape)}"
            )
    if rows is not None and tensor.shape[0] != rows:
        raise ValueError(f"{name} has {tensor.shape[0]} rows but the data has {rows}")
    if not tensor.is_floating_point():
        tensor = tensor.double()
    bad = ~torch.isfinite(tensor)
    if bad.any():
        where = bad.reshape(bad.shape[0], -1).any(1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"{name} has NaN or infinite values (rows {where}, ...)")
    return tensor.to(device=device, dtype=dtype)


def check_real(what: str, value: object, low: float = 0.0, high: float = float("inf")) -> float:
    """Return ``value`` as a ``float`` if it is a real number (Python or NumPy, not a bool)
    strictly between ``low`` and ``high``; raise ValueError naming ``what`` otherwise.

    Both ends are open, so the default asks for a positive finite number.

    Example:
        >>> check_real("coefficient", 0.9, 0, 1)
        0.9
    """
    real = isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
    if not real or not low < float(value) < high:  # type: ignore[arg-type]
        expected = (
            f"a number in ({low:g}, {high:g})"
            if high < float("inf")
            else "a positive finite number"
            if low == 0
            else f"a finite number > {low:g}"
        )
        raise ValueError(f"{what} must be {expected}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_dtype(x: Tensor, dtype: torch.dtype | None, what: str = "value") -> None:
    """Raise TypeError when tensor ``x`` is not of the floating ``dtype`` a model computes in
    (``None``: any), naming both dtypes and the conversion to make.

    A model's ``log_prob`` does not convert silently (a float64 value rounded to float32, or
    integer levels read as reals, are usually mistakes); :func:`~pyroflows.infer.fit` and the
    destructors' ``fit``, which take user data, convert it to the model's dtype instead.

    Example:
        >>> check_dtype(torch.zeros(2, dtype=torch.float64), torch.float32)
        Traceback (most recent call last):
        TypeError: value has dtype torch.float64 but the model computes in torch.float32; ...
    """
    if dtype is not None and x.dtype != dtype:
        move = f" or move the model (model.to({x.dtype}))" if x.is_floating_point() else ""
        raise TypeError(
            f"{what} has dtype {x.dtype} but the model computes in {dtype}; convert it "
            f"({what}.to({dtype})){move}"
        )


def check_batch(
    value_shape: Sequence[int], batch_shape: Sequence[int], what: str = "value"
) -> None:
    """Raise ValueError naming both shapes when the batch dimensions ``value_shape`` of an
    input do not broadcast with a distribution's ``batch_shape`` (the context's batch)."""
    try:
        torch.broadcast_shapes(torch.Size(value_shape), torch.Size(batch_shape))
    except RuntimeError:
        raise ValueError(
            f"{what} has batch shape {tuple(value_shape)}, which does not broadcast with the "
            f"distribution's batch shape {tuple(batch_shape)} (the context's rows)"
        ) from None


def validates(validate_args: bool | None) -> bool:
    """Whether a distribution checks its values: ``validate_args`` when given, else Pyro's
    switch (``pyro.enable_validation``, on by default).

    Pyro's switch rather than torch's class default (``Distribution._validate_args``) because
    the first ``torch.compile`` in a process turns torch's default off for good (TorchDynamo
    patches it) while Pyro still reports validation on: a distribution built after any compiled
    call would silently stop checking its values.
    """
    return dist.is_validation_enabled() if validate_args is None else bool(validate_args)


def check_not_nan(x: Tensor, what: str = "value") -> None:
    """Raise ValueError naming ``what`` when ``x`` holds NaN (a host sync: call it only under
    validation, ``pyro.enable_validation``). Skipped while ``torch.compile`` traces: a
    value-dependent branch would break the graph, and compiled code is past debugging."""
    if torch.compiler.is_compiling():
        return
    if bool(torch.isnan(x).any()):
        raise ValueError(f"{what} has NaN values (shape {tuple(x.shape)})")


def check_finite(x: Tensor, what: str = "context") -> None:
    """Raise ValueError naming ``what`` when ``x`` holds NaN or infinite values (a host sync:
    call it only under validation, ``pyro.enable_validation``). Skipped while ``torch.compile``
    traces, as :func:`check_not_nan`."""
    if torch.compiler.is_compiling():
        return
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{what} has NaN or infinite values (shape {tuple(x.shape)})")


def check_floating(x: Tensor, what: str = "input") -> None:
    """Raise TypeError naming ``what`` when tensor ``x`` is not real floating point (integer,
    bool or complex values), which a bijection cannot map."""
    if not x.is_floating_point():
        raise TypeError(
            f"{what} has dtype {x.dtype}; a transform maps real floating-point tensors "
            f"(convert it: {what}.to(torch.float32) or .to(torch.float64))"
        )


def as_sample_shape(sample_shape: object) -> torch.Size:
    """A ``sample_shape`` as a ``torch.Size``: an int ``n`` means ``(n,)``; a sequence of
    non-negative ints is kept; TypeError otherwise.

    Example:
        >>> as_sample_shape(5), as_sample_shape((2, 3))
        (torch.Size([5]), torch.Size([2, 3]))
    """
    if _is_count(sample_shape, 0):
        return torch.Size((operator.index(sample_shape),))  # type: ignore[arg-type]
    if isinstance(sample_shape, Sequence) and all(_is_count(v, 0) for v in sample_shape):
        return torch.Size(operator.index(v) for v in sample_shape)
    raise TypeError(
        "sample_shape must be a tuple of non-negative integers such as (5,) (or an int n for "
        f"(n,)), got {sample_shape!r}"
    )


@functools.cache
def _host_memory() -> int | None:
    """The machine's RAM in bytes (``None`` where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def check_allocation(
    shape: Sequence[int], dtype: torch.dtype, device: torch.device, what: str = "sample_shape"
) -> None:
    """Raise ValueError naming ``what`` when a tensor of ``shape`` and ``dtype`` could not fit in
    the memory of ``device`` at all (all of the machine's RAM, or the GPU's total memory).

    A shape-only check (no host sync): it catches a mistyped ``sample_shape`` such as
    ``(10**15,)`` with a message that says so, where the allocator would fail with its own
    byte count, or the machine would swap. Allocations that merely exceed the *free* memory
    are left to the allocator.
    """
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return  # shapes are symbolic there, and the query is not traceable
    size = math.prod(shape) * dtype.itemsize
    device = torch.device(device)
    if device.type == "cuda":
        capacity = torch.cuda.get_device_properties(device).total_memory
    elif device.type == "cpu":
        capacity = _host_memory()
    else:
        capacity = None
    if capacity is not None and size > capacity:
        raise ValueError(
            f"{what} asks for a tensor of shape {tuple(shape)} ({size / 2**30:,.0f} GiB of "
            f"{dtype}), more than the {capacity / 2**30:,.0f} GiB of memory on {device}; draw "
            "fewer samples, or in chunks"
        )
