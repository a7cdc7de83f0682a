"""``pyroflows demo``: fit a flow to a 2-D toy data set, compare its test log-likelihood with a
full-covariance Gaussian's, and draw data, density and samples side by side."""

from __future__ import annotations

import argparse
import contextlib
import math
import time
from collections.abc import Iterator

import numpy as np
import torch

from ..core import Flow
from ..data.toy import toy
from ..plots.evaluate import seeded
from .models import build_flow, check_flow_name, check_output, fit_flow, log_prob

__all__ = ["demo_command", "gaussian_loglik"]

_FIGURE_EXTENSIONS = (".png", ".pdf", ".svg", ".jpg")
_GAUSSIAN = "Gaussian (full covariance)"


def gaussian_loglik(train: np.ndarray, *others: np.ndarray) -> list[float]:
    r"""Mean log-likelihood of ``train`` and of each of ``others`` (each (n, d)) under the
    full-covariance Gaussian MLE of ``train``, :math:`\mathcal N(\bar x, \hat\Sigma)`.

    Example:
        >>> x = np.array([[0.0, 1.0], [2.0, 0.0], [1.0, 2.0]])
        >>> round(gaussian_loglik(x)[0], 4)
        -2.2886
    """
    mean = train.mean(0)
    cov = np.atleast_2d(np.cov(train, rowvar=False, bias=True))
    chol = np.linalg.cholesky(cov)
    half_logdet = np.log(np.diag(chol)).sum()
    d = train.shape[1]
    results = []
    for x in (train, *others):
        z = np.linalg.solve(chol, (x - mean).T)
        results.append(
            float(np.mean(-0.5 * (z**2).sum(0)) - half_logdet - 0.5 * d * math.log(2 * math.pi))
        )
    return results


@contextlib.contextmanager
def _threads(count: int | None) -> Iterator[None]:
    """Use ``count`` torch CPU threads inside the block (small networks run fastest on one)."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def demo_command(args: argparse.Namespace) -> int:
    """Run the demo with the parsed arguments; prints the log-likelihood table, writes the figure."""
    check_flow_name(args.flow)
    check_output(args.out, _FIGURE_EXTENSIONS)
    start = time.perf_counter()
    dtype = getattr(torch, args.dtype)
    with _threads(args.threads), seeded(args.seed, args.device):
        train = toy(args.dataset, args.n_train, seed=args.seed).double()
        test = toy(args.dataset, args.n_test, seed=args.seed + 10**6).double()
        print(
            f"pyroflows demo: {args.flow} flow on {args.dataset} "
            f"({args.n_train} train / {args.n_test} test points, seed {args.seed})"
        )
        flow = build_flow(args.flow, 2, None, {}).to(args.device, dtype)
        parameters = sum(p.numel() for p in flow.parameters())
        print(f"fitting {parameters:,} parameters for at most {args.epochs} epochs ...")
        result = fit_flow(flow, train, args, progress=not args.quiet)
        flow.eval()
        train_ll = float(np.mean(log_prob(flow, train.numpy())))
        test_ll = float(np.mean(log_prob(flow, test.numpy())))
        gauss_train, gauss_test = gaussian_loglik(train.numpy(), test.numpy())
        label = f"{args.flow} flow"
        width = max(len(label), len(_GAUSSIAN))
        print(
            f"log-likelihood, nats per point (higher is better), best epoch "
            f"{result.best_epoch} of {len(result.history)}:"
        )
        print(f"  {'':<{width}}  {'train':>8}  {'test':>8}")
        print(f"  {label:<{width}}  {train_ll:8.3f}  {test_ll:8.3f}")
        print(f"  {_GAUSSIAN:<{width}}  {gauss_train:8.3f}  {gauss_test:8.3f}")
        _figure(flow, test.numpy(), args, test_ll, gauss_test)
    print(
        f"wrote {args.out} (data, flow density, flow samples) in {time.perf_counter() - start:.1f} s"
    )
    return 0


def _figure(
    flow: Flow, test: np.ndarray, args: argparse.Namespace, test_ll: float, gauss_ll: float
) -> None:
    from matplotlib.figure import Figure  # no pyplot: no backend, no global state

    from ..plots import plot_density, plot_samples
    from ..plots.layout import axis_limits, scatter

    limits = axis_limits(test, pad=0.08)
    ratio = (limits[1][1] - limits[1][0]) / (limits[0][1] - limits[0][0])
    fig = Figure(figsize=(12, min(max(4 * ratio, 2.0), 6.0) + 1.0), layout="constrained")
    axes = fig.subplots(1, 3)
    shown = test[: min(len(test), 5000)]
    scatter(axes[0], shown, (0, 1), s=1.5)
    axes[0].set_title(f"{args.dataset}: test data")
    plot_density(flow, bounds=(*limits[0], *limits[1]), resolution=200, ax=axes[1])
    axes[1].set_title(f"{args.flow} density (test log-lik {test_ll:.3f})")
    plot_samples(flow, n=len(shown), ax=axes[2], seed=args.seed)
    axes[2].set_title(f"{args.flow} samples")
    for ax in axes:
        ax.set_xlim(*limits[0])
        ax.set_ylim(*limits[1])
        ax.set_aspect("equal", adjustable="box")
    fig.suptitle(
        f"pyroflows demo: {args.flow} on {args.dataset}; test log-likelihood "
        f"{test_ll:.3f} nats vs {gauss_ll:.3f} for a Gaussian"
    )
    fig.savefig(args.out, dpi=110)
