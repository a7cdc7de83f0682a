"""Deep density destructors on the 2-D toy sets, next to the registry's ``nsf``.

For each toy set (``moons``, ``8gaussians``, ``checkerboard``, ``pinwheel``; 20,000 training
points, seed 0, and 10,000 test points, seed 1000 — the protocol of ``density_toy.py``) the
script fits a deep destructor of every layer type (greedy growth, depth picked on a 10%
validation split, then refit on all training points), one fine-tuned deep copula, a single
Gaussian destructor, and ``nsf`` from the flow registry trained with ``pyroflows.infer.fit``,
and reports the mean test log-likelihood in nats per point with fit times.

Usage::

    python benchmarks/destructors_toy.py            # full run
    python benchmarks/destructors_toy.py --quick    # smoke run: 2,000/2,000 points, small budgets
    python benchmarks/destructors_toy.py --methods copula tree nsf --datasets moons

Results: ``benchmarks/results/destructors_toy.json`` (rewritten after every fit).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, machine_info, print_table, save_json, set_threads  # noqa: E402

import pyroflows  # noqa: E402
from pyroflows.data import toy  # noqa: E402
from pyroflows.destructors import DeepDestructor, GaussianDestructor  # noqa: E402

DATASETS = ["moons", "8gaussians", "checkerboard", "pinwheel"]
REFERENCES = {"checkerboard": math.log(1 / 32)}

# Deep destructors of each layer type. Axis-aligned marginal layers get a random rotation (in
# Gaussian space) before each layer, as in RBIG; the others see the previous layer's output.
DEEP = {
    "histogram": dict(
        layer="histogram", rotation="random", layer_options={"bins": 40, "smooth": True}
    ),
    "beta": dict(layer="beta", rotation="random"),
    "normal-cdf": dict(layer="normal-cdf", rotation="random", max_layers=10),
    "gaussian": dict(layer="gaussian", max_layers=10),
    "mixture": dict(layer="mixture", layer_options={"components": 10}, max_layers=10),
    "tree": dict(layer="tree", layer_options={"max_leaves": 100, "min_leaf": 20}),
    "copula": dict(layer="copula", layer_options={"bins": 40}),
}
METHODS = ["gaussian-1", *DEEP, "copula+ft", "nsf"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=DATASETS)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2,000/2,000 points, small budgets"
    )
    parser.add_argument("--train", type=int, default=None)
    parser.add_argument("--test", type=int, default=None)
    parser.add_argument(
        "--max-layers",
        type=int,
        default=None,
        help="layer budget of the deep destructors (default 100)",
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="nsf / fine-tuning epochs (default 200 / 50)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "destructors_toy.json")
    args = parser.parse_args(argv)
    defaults = (
        {"train": 2000, "test": 2000, "max_layers": 10, "epochs": 5}
        if args.quick
        else {"train": 20000, "test": 10000, "max_layers": 100, "epochs": 200}
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


@torch.no_grad()
def test_loglik(log_prob, x: torch.Tensor) -> tuple[float, float]:  # noqa: ANN001
    values = torch.cat([log_prob(chunk) for chunk in x.split(4096)]).double()
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    payload: dict = {
        "benchmark": "destructors_toy",
        "machine": machine_info(),
        "settings": {
            "train": args.train,
            "test": args.test,
            "max_layers": args.max_layers,
            "epochs": args.epochs,
            "seed": args.seed,
            "threads": threads,
            "validation": 0.1,
            "dtype": "float64 (destructors), float32 (nsf)",
            "deep": DEEP,
        },
        "results": {},
    }
    print(
        f"destructors_toy: {len(args.datasets)} sets, {args.train}/{args.test} points, {threads} thread(s)",
        flush=True,
    )
    started = time.perf_counter()
    for name in args.datasets:
        train = toy(name, args.train, args.seed)
        test = toy(name, args.test, args.seed + 1000)
        row: dict = {}
        payload["results"][name] = row
        for method in args.methods:
            start = time.perf_counter()
            extra: dict = {}
            if method == "gaussian-1":
                model = GaussianDestructor(2).fit(train.double())
                score = lambda x, m=model: m.log_prob(x.double())  # noqa: E731
            elif method == "nsf":
                torch.manual_seed(args.seed)
                flow = pyroflows.flows.build("nsf", 2)
                fit = pyroflows.infer.fit(
                    flow,
                    train,
                    epochs=args.epochs,
                    batch_size=512,
                    lr=1e-3,
                    validation=0.1,
                    patience=20 if not args.quick else 5,
                    seed=args.seed,
                    progress=False,
                )
                flow.eval()
                score = lambda x, f=flow: f().log_prob(x)  # noqa: E731
                extra = {"epochs_run": len(fit.history), "best_epoch": fit.best_epoch}
            else:
                options = dict(DEEP["copula" if method == "copula+ft" else method])
                options["max_layers"] = min(
                    options.get("max_layers", args.max_layers), args.max_layers
                )
                model = DeepDestructor(2, seed=args.seed, progress=False, **options).fit(
                    train.double()
                )
                extra = {
                    "layers": len(model.layers) - 1,
                    "greedy_seconds": time.perf_counter() - start,
                    "history": model.history,
                }
                if method == "copula+ft":
                    greedy = test_loglik(model.log_prob, test.double())[0]
                    fit = pyroflows.infer.fine_tune(
                        model,
                        train.double(),
                        epochs=min(args.epochs, 50),
                        batch_size=512,
                        lr=1e-3,
                        validation=0.1,
                        patience=10 if not args.quick else 3,
                        seed=args.seed,
                        progress=False,
                    )
                    extra.update(
                        {
                            "greedy_test_loglik": greedy,
                            "epochs_run": len(fit.history),
                            "history": None,
                        }
                    )
                score = lambda x, m=model: m.log_prob(x.double())  # noqa: E731
            seconds = time.perf_counter() - start
            mean, sem = test_loglik(score, test)
            row[method] = {
                "test_loglik": mean,
                "test_loglik_sem": sem,
                "fit_seconds": seconds,
                **extra,
            }
            detail = f", {extra['layers']} layers" if "layers" in extra else ""
            print(
                f"[{name}] {method}: test {mean:.4f} ± {sem:.4f}, {seconds:.1f} s{detail}",
                flush=True,
            )
            payload["total_seconds"] = time.perf_counter() - started
            save_json(args.out, payload)

    header = ["data set", *args.methods] + (
        ["reference"] if any(n in REFERENCES for n in args.datasets) else []
    )
    rows = []
    for name in args.datasets:
        r = [name, *(payload["results"][name][m]["test_loglik"] for m in args.methods)]
        if len(header) > len(r):
            r.append(REFERENCES.get(name, float("nan")))
        rows.append(r)
    print("\nTest log-likelihood (nats per point, higher is better)")
    payload["table"] = print_table(header, rows)
    print("\nFit time (seconds)")
    payload["time_table"] = print_table(
        ["data set", *args.methods],
        [
            [n, *(payload["results"][n][m]["fit_seconds"] for m in args.methods)]
            for n in args.datasets
        ],
        floatfmt=".1f",
    )
    payload["total_seconds"] = time.perf_counter() - started
    path = save_json(args.out, payload)
    print(f"\nresults: {path} ({payload['total_seconds']:.0f} s)")
    return payload


if __name__ == "__main__":
    main()
