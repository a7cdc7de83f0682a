"""Costs of the ``resflow`` log-determinant estimators, side by side.

For each ``--features`` d, a ``resflow`` (``--transforms`` blocks, ``--hidden`` widths, float32,
one torch thread, parameters + 0.1 N(0, 1) with seed 0) with ``logdet`` = ``exact``,
``series`` (10 terms) and ``roulette`` (2 sure terms + geometric, mean 1) sharing one
``state_dict``; interleaved rounds time

* a training step (``-log_prob(x).mean()`` and backward; the density is the fast direction),
* a density evaluation without gradients,
* sampling (``rsample_and_log_prob``, fixed-point solves) without gradients,

and report the spread of the stochastic log-densities (standard deviation over calls of the
batch-mean log-density) and their mean error against the exact one.

Usage::

    nice python benchmarks/resflow_costs.py          # writes results/resflow_costs.json
    python benchmarks/resflow_costs.py --features 4 16 --batch 128
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    RESULTS_DIR,
    interleaved_timings_with_cpu,
    machine_info,
    print_table,
    save_json,
    set_threads,
    summarize,
)

import pyroflows  # noqa: E402

ESTIMATORS = {
    "exact": {},
    "series": {"n_terms": 10},
    "roulette": {"n_terms": 2, "extra_terms": 1.0},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--features", type=int, nargs="+", default=[4, 16, 64])
    parser.add_argument("--transforms", type=int, default=4)
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--draws", type=int, default=50, help="calls for the spread of the estimates"
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "resflow_costs.json")
    return parser.parse_args(argv)


@torch.no_grad()
def perturb(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.add_(0.1 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module


def run(args: argparse.Namespace) -> dict:
    set_threads(1)
    rows, results = [], []
    for d in args.features:
        torch.manual_seed(0)
        flows = {}
        for name, options in ESTIMATORS.items():
            flows[name] = pyroflows.flows.build(
                "resflow",
                d,
                transforms=args.transforms,
                hidden=tuple(args.hidden),
                logdet=name,
                **options,
            )
        perturb(flows["exact"])
        for flow in flows.values():
            flow.load_state_dict(flows["exact"].state_dict())
        x = torch.randn(args.batch, d)

        def train(flow, x=x):  # noqa: ANN001, ANN202
            return lambda i: (-flow().log_prob(x).mean()).backward()

        def density(flow, x=x):  # noqa: ANN001, ANN202
            return lambda i: torch.no_grad()(flow().log_prob)(x)

        def sample(flow):  # noqa: ANN001, ANN202
            return lambda i: torch.no_grad()(flow().rsample_and_log_prob)((args.batch,))

        functions = {}
        for name, flow in flows.items():
            functions[f"{name}/train"] = train(flow)
            functions[f"{name}/density"] = density(flow)
            functions[f"{name}/sample"] = sample(flow)
        times = interleaved_timings_with_cpu(functions, args.repeats, warmup=2)
        with torch.no_grad():
            exact = flows["exact"]().log_prob(x).mean().item()
        for name, flow in flows.items():
            with torch.no_grad():
                draws = [
                    flow().log_prob(x).mean().item()
                    for _ in range(args.draws if name != "exact" else 1)
                ]
            spread = statistics.stdev(draws) if len(draws) > 1 else 0.0
            entry = {
                "features": d,
                "logdet": name,
                "options": ESTIMATORS[name],
                "mean_log_density_error": statistics.mean(draws) - exact,
                "spread": spread,
                **{
                    f"{what}_cpu_s": summarize(times[f"{name}/{what}"]["cpu"])
                    for what in ("train", "density", "sample")
                },
            }
            results.append(entry)
            rows.append(
                [
                    d,
                    name,
                    1e3 * entry["train_cpu_s"]["median"],
                    1e3 * entry["density_cpu_s"]["median"],
                    1e3 * entry["sample_cpu_s"]["median"],
                    spread,
                    entry["mean_log_density_error"],
                ]
            )
    header = ["d", "logdet", "train step ms", "density ms", "sample ms", "spread", "mean error"]
    table = print_table(header, rows)
    payload = {
        "benchmark": "resflow_costs",
        "args": vars(args),
        "machine": machine_info(),
        "results": results,
        "table": table,
    }
    save_json(args.out, payload)
    return payload


if __name__ == "__main__":
    run(parse_args())
