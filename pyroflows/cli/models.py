"""What the commands do with flows and files: check a flow name and an output path before any
work, build, train or load a flow, score rows in chunks and write a table in the model's
precision."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import flows
from ..core import Flow
from ..data.files import save_array
from ..infer import FitResult, fit
from ..plots.evaluate import log_prob_in_chunks
from .errors import CommandError

__all__ = [
    "CHUNK",
    "OUTPUT_EXTENSIONS",
    "build_flow",
    "check_flow_name",
    "check_output",
    "dtype_of",
    "fit_flow",
    "load_model",
    "log_prob",
    "write_table",
]

OUTPUT_EXTENSIONS = (".npy", ".csv", ".tsv", ".txt")
CHUNK = 65536


def check_flow_name(name: str) -> None:
    """Raise CommandError unless ``name`` is a registered flow for vector (tabular) data."""
    vector = ", ".join(flows.available("vector"))
    if name in flows.available("image"):
        raise CommandError(
            f"{name!r} is an image flow (features=(C, H, W)); the CLI fits tabular "
            f"data: use one of {vector}"
        )
    if name not in flows.available("vector"):
        raise CommandError(f"unknown flow {name!r}; available: {vector}")


def check_output(path: str, extensions: Sequence[str] | None = None) -> None:
    """Fail before any work when the output could not be written."""
    p = Path(path)
    if extensions is not None and p.suffix.lower() not in extensions:
        raise CommandError(
            f"{path}: cannot write {p.suffix or 'a file without extension'}; "
            f"use one of {', '.join(extensions)}"
        )
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise CommandError(f"{path}: the folder {os.fspath(parent)!r} does not exist")
    if p.is_dir():
        raise CommandError(f"{path}: is a directory")


def build_flow(name: str, features: int, data: np.ndarray | None, options: dict) -> Flow:
    """``flows.build`` with a first layer standardising ``data`` (none when ``None``); a preset's
    unknown options become a CommandError."""
    try:
        return flows.build(name, features, standardize=data, **options)
    except TypeError as error:  # unknown options for this preset
        raise CommandError(str(error)) from None


def fit_flow(flow: Flow, data: Any, args: argparse.Namespace, **options: Any) -> FitResult:
    """Fit ``flow`` to ``data`` with a training command's ``--epochs``, ``--batch-size``,
    ``--lr``, ``--max-time`` and ``--seed``; ``options`` go to :func:`pyroflows.infer.fit` as
    well."""
    return fit(
        flow,
        data,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        max_time=args.max_time,
        seed=args.seed,
        **options,
    )


def load_model(path: str, device: torch.device) -> Flow:
    """The unconditional flow saved at ``path``, on ``device``, in eval mode."""
    if not Path(path).is_file():
        raise CommandError(f"{path}: no such model file")
    try:
        flow = flows.load(path, map_location=device)
    except ValueError as error:
        message = str(error).splitlines()[0]
        if "Weights only load failed" in message:  # torch's long advice does not apply here
            message = message.split(": Weights only")[0] + ": not a file written by pyroflows"
        raise CommandError(message) from None
    if flow.context_features:
        raise CommandError(
            f"{path}: a conditional flow (context of {flow.context_features}); "
            "the command line handles unconditional flows only"
        )
    return flow.to(device).eval()


def dtype_of(flow: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point tensor."""
    return next(p for p in flow.state_dict().values() if p.is_floating_point()).dtype


def log_prob(flow: Flow, x: np.ndarray, batch_size: int = CHUNK) -> np.ndarray:
    """Log-density (n,) of the rows of ``x`` (n, features) as float64, ``batch_size`` at a time."""
    device = next(iter(flow.state_dict().values())).device
    tensor = torch.as_tensor(x, dtype=dtype_of(flow))
    return log_prob_in_chunks(flow(), tensor, batch_size, device).numpy()


def write_table(array: np.ndarray, out: str | None, dtype: torch.dtype) -> None:
    """Write ``array`` with the precision of the model's ``dtype`` to ``out`` or stdout (CSV)."""
    if dtype != torch.float64:
        array = array.astype(np.float32)
    if out is not None:
        save_array(out, array)
        return
    fmt = "%.17g" if dtype == torch.float64 else "%.9g"
    np.savetxt(sys.stdout, array, fmt=fmt, delimiter=",")
