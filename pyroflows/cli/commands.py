"""The tabular commands: ``list`` the presets, ``fit`` a flow to a data file, ``sample`` a saved
model and ``score`` the rows of a data file under it."""

from __future__ import annotations

import argparse
import math
import sys

import numpy as np
import torch

from .. import flows
from ..data.files import load_array
from ..plots.evaluate import sample_in_chunks, seeded
from .errors import CommandError
from .models import (
    CHUNK,
    OUTPUT_EXTENSIONS,
    build_flow,
    check_flow_name,
    check_output,
    dtype_of,
    fit_flow,
    load_model,
    log_prob,
    write_table,
)

__all__ = ["fit_command", "list_command", "sample_command", "score_command"]


def list_command(args: argparse.Namespace) -> int:
    """Print every registered preset with the first paragraph of its docstring."""
    names = flows.available()
    width = max(len(n) for n in names)
    for name in names:
        doc = flows.preset(name).__doc__ or ""
        summary = " ".join(doc.strip().split("\n\n")[0].split())
        if flows.kind(name) == "image":
            summary = f"[images, features=(C, H, W); not for the CLI's tabular commands] {summary}"
        print(f"{name:<{width}}  {summary}")
    return 0


def fit_command(args: argparse.Namespace) -> int:
    """Fit a flow by maximum likelihood to the rows of a data file and save it."""
    check_flow_name(args.flow)
    check_output(args.out)
    data = load_array(args.data, args.key)
    n, d = data.shape
    dtype = getattr(torch, args.dtype)
    options = {
        key: getattr(args, key)
        for key in ("transforms", "hidden", "bins", "bound")
        if getattr(args, key, None) is not None
    }
    with seeded(args.seed, args.device):
        flow = build_flow(args.flow, d, data, options).to(args.device, dtype)
        print(f"data: {args.data}, {n} rows x {d} features")
        parameters = sum(p.numel() for p in flow.parameters())
        budget = "" if args.max_time is None else f" or {args.max_time:g} s"
        print(
            f"fitting a {args.flow} flow ({parameters:,} parameters) for at most "
            f"{args.epochs} epochs{budget}"
        )
        result = fit_flow(
            flow,
            data,
            args,
            validation=args.validation,
            patience=args.patience,
            progress=None if not args.quiet else False,
        )
    best = result.history[result.best_epoch - 1]
    stop = {
        "early_stopping": ", stopped early",
        "max_time": ", stopped by --max-time",
    }.get(result.stop_reason, "")
    print(f"best epoch {result.best_epoch} of {len(result.history)}{stop}")
    print(f"train log-likelihood      {best['train_loglik']:.4f} nats/point (epoch average)")
    if args.validation > 0:
        print(f"validation log-likelihood {best['val_loglik']:.4f} nats/point")
    flows.save(flow, args.out)
    print(f"saved {args.out}")
    return 0


def sample_command(args: argparse.Namespace) -> int:
    """Draw ``-n`` samples of a saved model to a file or to stdout (CSV)."""
    if args.out is not None:
        check_output(args.out, OUTPUT_EXTENSIONS)
    flow = load_model(args.model, args.device)
    with seeded(args.seed, args.device):
        samples = sample_in_chunks(flow(), args.n, CHUNK).double().cpu().numpy()
    write_table(samples, args.out, dtype_of(flow))
    if args.out is not None:
        print(
            f"wrote {args.n} samples of {samples.shape[1]} features to {args.out}", file=sys.stderr
        )
    return 0


def score_command(args: argparse.Namespace) -> int:
    """Write the log-density of every row of a data file; the mean goes to stderr."""
    if args.out is not None:
        check_output(args.out, OUTPUT_EXTENSIONS)
    flow = load_model(args.model, args.device)
    data = load_array(args.data, args.key)
    if data.shape[1] != flow.features:
        raise CommandError(
            f"{args.data} has {data.shape[1]} columns but the model "
            f"{args.model} takes {flow.features} features"
        )
    scores = log_prob(flow, data, args.batch_size)
    write_table(scores[:, None], args.out, dtype_of(flow))
    finite = np.isfinite(scores)
    mean = float(np.mean(scores[finite])) if finite.any() else math.nan
    note = "" if finite.all() else f" ({int((~finite).sum())} rows without a finite value left out)"
    print(f"mean log-likelihood {mean:.4f} nats over {len(scores)} rows{note}", file=sys.stderr)
    return 0
