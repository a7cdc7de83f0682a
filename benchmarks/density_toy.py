"""Density estimation on 2-D toy sets: every registered flow preset against a Gaussian.

For each toy set (``moons``, ``8gaussians``, ``checkerboard``, ``pinwheel``) the script draws a
training sample and an independent test sample (different seeds), fits every preset of
``pyroflows.flows.available("vector")`` (its default options) with ``pyroflows.infer.fit``, and reports
the mean test log-likelihood in nats per point, next to a full-covariance Gaussian fitted by
maximum likelihood in closed form. Fit time and parameter counts are recorded too.

Usage::

    python benchmarks/density_toy.py                 # full run (all presets, 4 sets)
    python benchmarks/density_toy.py --quick         # smoke run (small data, few epochs)
    python benchmarks/density_toy.py --flows nsf maf --epochs 50 --plot

Results: ``benchmarks/results/density_toy.json`` (rewritten after every fit, so a partial run
keeps what finished) and, with ``--plot``, ``benchmarks/results/density_toy.png``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    RESULTS_DIR,
    count_parameters,
    load_average,
    machine_info,
    print_table,
    save_json,
    set_threads,
)

import pyroflows  # noqa: E402
from pyroflows.data import TOY_DATASETS, toy  # noqa: E402

DATASETS = ["moons", "8gaussians", "checkerboard", "pinwheel"]
# Known exact test log-likelihoods (nats per point) where the density is simple.
REFERENCES = {"checkerboard": math.log(1 / 32)}
PLOT_LIMIT = 4.5  # half-width of the square shown by --plot


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--flows",
        nargs="+",
        default=None,
        help="presets to fit (default: all of pyroflows.flows.available('vector'))",
    )
    parser.add_argument(
        "--datasets",
        nargs="+",
        default=DATASETS,
        choices=sorted(TOY_DATASETS),
        help="toy sets (default: %(default)s)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 2,000/2,000 points, 10 epochs (unless given explicitly)",
    )
    parser.add_argument("--train", type=int, default=None, help="training points (default 20000)")
    parser.add_argument("--test", type=int, default=None, help="test points (default 10000)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="epoch budget per fit (default 200)"
    )
    parser.add_argument(
        "--patience", type=int, default=None, help="early-stopping patience (default 20)"
    )
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--validation", type=float, default=0.1)
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the training data and the fits; the test data use seed + 1000",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument(
        "--plot", action="store_true", help="also write a PNG grid of the densities"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "density_toy.json")
    args = parser.parse_args(argv)
    quick = {"train": 2000, "test": 2000, "epochs": 10, "patience": 5}
    full = {"train": 20000, "test": 10000, "epochs": 200, "patience": 20}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    known = pyroflows.flows.available("vector")
    args.flows = known if args.flows is None else args.flows
    unknown = [f for f in args.flows if f not in known]
    if unknown:
        parser.error(f"unknown flows {unknown}; available: {known}")
    return args


@torch.no_grad()
def test_loglik(log_prob, x: torch.Tensor, chunk: int = 4096) -> tuple[float, float]:
    """Mean and standard error of ``log_prob`` over the rows of ``x``."""
    values = torch.cat([log_prob(part) for part in x.split(chunk)]).double()
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


def gaussian_mle(train: torch.Tensor) -> torch.distributions.MultivariateNormal:
    """Full-covariance Gaussian fitted by maximum likelihood (mean, covariance with 1/n)."""
    x = train.double()
    mean = x.mean(0)
    centered = x - mean
    cov = centered.T @ centered / len(x)
    return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)


def grid(points: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    axis = torch.linspace(-PLOT_LIMIT, PLOT_LIMIT, points)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    return axis, torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)


def plot_densities(
    path: Path, datasets: list[str], columns: list[str], samples: dict, densities: dict
) -> None:
    """Rows: data sets; columns: a histogram of the test data, then each model's density."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncols = 1 + len(columns)
    fig, axes = plt.subplots(
        len(datasets), ncols, figsize=(2.2 * ncols, 2.2 * len(datasets)), squeeze=False
    )
    extent = (-PLOT_LIMIT, PLOT_LIMIT, -PLOT_LIMIT, PLOT_LIMIT)
    for r, name in enumerate(datasets):
        x = samples[name].numpy()
        axes[r, 0].hist2d(
            x[:, 0], x[:, 1], bins=100, range=[extent[:2], extent[2:]], cmap="viridis"
        )
        axes[r, 0].set_ylabel(name)
        for c, model in enumerate(columns, start=1):
            logp = densities.get((name, model))
            if logp is not None:
                axes[r, c].imshow(logp.exp().numpy(), origin="lower", extent=extent, cmap="viridis")
        for c, title in enumerate(["test data", *columns]):
            if r == 0:
                axes[r, c].set_title(title, fontsize=9)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    settings = {
        "datasets": args.datasets,
        "flows": args.flows,
        "train_points": args.train,
        "test_points": args.test,
        "train_seed": args.seed,
        "test_seed": args.seed + 1000,
        "epochs": args.epochs,
        "patience": args.patience,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "validation": args.validation,
        "threads": threads,
        "quick": args.quick,
        "dtype": str(torch.get_default_dtype()),
        "preset_options": "defaults of each preset",
        "optimizer": "Adam, constant lr, grad-norm clip 5 (pyroflows.infer.fit defaults)",
    }
    payload = {
        "benchmark": "density_toy",
        "settings": settings,
        "machine": machine_info(),
        "references": REFERENCES,
        "results": {},
    }
    print(
        f"density_toy: {len(args.datasets)} sets x {len(args.flows)} flows, "
        f"{args.train}/{args.test} points, <= {args.epochs} epochs, {threads} thread(s)",
        flush=True,
    )
    started = time.perf_counter()
    densities: dict = {}
    test_samples: dict = {}
    _, grid_points = grid()
    for name in args.datasets:
        train = toy(name, args.train, args.seed)
        test = toy(name, args.test, args.seed + 1000)
        test_samples[name] = test
        row: dict = {}
        gaussian = gaussian_mle(train)
        mean, sem = test_loglik(lambda x, g=gaussian: g.log_prob(x.double()), test)
        row["gaussian"] = {
            "test_loglik": mean,
            "test_loglik_sem": sem,
            "params": 5,
            "fit_seconds": 0.0,
        }
        if args.plot:
            densities[(name, "gaussian")] = (
                gaussian.log_prob(grid_points.double()).float().reshape(200, 200)
            )
        print(f"[{name}] gaussian: test {mean:.4f}", flush=True)
        payload["results"][name] = row
        for flow_name in args.flows:
            torch.manual_seed(args.seed)
            flow = pyroflows.flows.build(flow_name, 2)
            start = time.perf_counter()
            try:
                fit = pyroflows.infer.fit(
                    flow,
                    train,
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    lr=args.lr,
                    validation=args.validation,
                    patience=args.patience,
                    seed=args.seed,
                    progress=False,
                )
                error = None
            except (FloatingPointError, RuntimeError, ValueError) as exc:  # report, keep going
                fit, error = None, f"{type(exc).__name__}: {exc}"
            seconds = time.perf_counter() - start
            flow.eval()
            mean, sem = test_loglik(lambda x, f=flow: f().log_prob(x), test)
            row[flow_name] = {
                "test_loglik": mean,
                "test_loglik_sem": sem,
                "params": count_parameters(flow),
                "fit_seconds": seconds,
                "error": error,
                "epochs_run": len(fit.history) if fit else None,
                "best_epoch": fit.best_epoch if fit else None,
                "best_val_loglik": fit.best_val_loglik if fit else None,
                "stopped_early": fit.stopped_early if fit else None,
                "seconds_per_epoch": seconds / len(fit.history) if fit and fit.history else None,
            }
            if args.plot:
                with torch.no_grad():
                    densities[(name, flow_name)] = flow().log_prob(grid_points).reshape(200, 200)
            status = (
                f"error {error}"
                if error
                else (
                    f"{len(fit.history)} epochs (best {fit.best_epoch}{', early stop' if fit.stopped_early else ''})"
                )
            )
            print(f"[{name}] {flow_name}: test {mean:.4f}, {seconds:.1f} s, {status}", flush=True)
            payload["total_seconds"] = time.perf_counter() - started
            save_json(args.out, payload)

    columns = ["gaussian", *args.flows]
    header = ["data set", *columns] + (
        ["reference"] if any(n in REFERENCES for n in args.datasets) else []
    )
    rows = []
    for name in args.datasets:
        row = [name, *(payload["results"][name][c]["test_loglik"] for c in columns)]
        if len(header) > len(columns) + 1:
            row.append(REFERENCES.get(name, ""))
        rows.append(row)
    print("\nTest log-likelihood (mean nats per point, higher is better)")
    table = print_table(header, rows)
    time_rows = [
        [name, *(payload["results"][name][c]["fit_seconds"] for c in columns)]
        for name in args.datasets
    ]
    print("\nFit time (seconds)")
    time_table = print_table(["data set", *columns], time_rows, floatfmt=".1f")
    param_row = [
        ["parameters", *(payload["results"][args.datasets[0]][c]["params"] for c in columns)]
    ]
    print()
    param_table = print_table(["", *columns], param_row)
    acceptance = None
    if "nsf" in args.flows:
        wins = {
            n: payload["results"][n]["nsf"]["test_loglik"]
            > payload["results"][n]["gaussian"]["test_loglik"]
            for n in args.datasets
        }
        acceptance = {"nsf_beats_gaussian": wins, "passed": all(wins.values())}
        print(
            f"\nAcceptance (nsf beats the Gaussian on every set): {'PASS' if acceptance['passed'] else 'FAIL'} {wins}"
        )
    payload["acceptance"] = acceptance
    payload["tables"] = {"test_loglik": table, "fit_seconds": time_table, "parameters": param_table}
    payload["total_seconds"] = time.perf_counter() - started
    payload["machine"]["load_average_at_end"] = load_average()
    if args.plot:
        png = args.out.with_suffix(".png")
        plot_densities(png, args.datasets, columns, test_samples, densities)
        payload["plot"] = str(png)
        print(f"plot: {png}")
    save_json(args.out, payload)
    print(f"results: {args.out} (total {payload['total_seconds']:.0f} s)", flush=True)
    return payload


if __name__ == "__main__":
    main()
