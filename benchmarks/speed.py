"""Speed of pyroflows' autoregressive flows next to Pyro's own transforms of the same size.

Compares, on one CPU thread, in one run with the implementations interleaved:

* a training step: ``log_prob`` of a batch of 512, backward, Adam step;
* ``log_prob`` of a batch of 512 without gradients (forward only);
* ``sample((512,))`` without gradients;

for pyroflows' ``maf`` (5 layers) and ``nsf`` (3 layers, 8 bins, bound 5) at 6 and 21
dimensions, both with MADE conditioners of hidden widths (64, 64), against Pyro's
``AffineAutoregressive`` / ``SplineAutoregressive(order="quadratic")`` layers built on
``pyro.nn.AutoRegressiveNN`` with the same hidden widths, bins, bound and the same
autoregressive orderings (natural and reversed alternately, passed as the ``permutation`` of
each ``AutoRegressiveNN``, so no ``Permute`` layers are needed), composed in a
``pyro.distributions.TransformedDistribution`` over a standard normal.

Orientation. pyroflows' ``maf``/``nsf`` evaluate the density in one pass per layer and
sample in ``d`` passes. Pyro's autoregressive transforms are the other way round (one pass
forward = sampling, ``d`` passes for the inverse), so the like-for-like Pyro model uses the
inverted transforms, ``TransformedDistribution(base, [t.inv for t in layers])`` — the Pyro
way of writing a MAF. This is the column the ratios use. For information the script also
times Pyro's transforms in their default orientation (IAF-style, what you get by composing
``spline_autoregressive(...)`` in a ``TransformedDistribution`` directly), whose ``log_prob``
of data takes ``d`` passes per layer.

Caching. Pyro's autoregressive transforms hard-wire ``cache_size=1`` (their constructors
take no ``cache_size`` and ``with_cache(0)`` raises), so the main Pyro column uses
``cache_size=1``, as any Pyro user gets: ``log_prob`` then runs the network once per layer
(``log_abs_det_jacobian`` reuses the cached pass). The ``pyro cache=0`` column forces
``_cache_size = 0``, where ``log_abs_det_jacobian`` recomputes the pass (two per layer).
Every timed call gets a batch tensor different from the previous call's, so Pyro's
identity-based cache can never return a stale result.

Usage::

    python benchmarks/speed.py                  # full run, writes benchmarks/results/speed.json
    python benchmarks/speed.py --repeats 10     # quicker
    python benchmarks/speed.py --profile        # also profile pyroflows' steps (torch.profiler)
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import AffineAutoregressive, SplineAutoregressive
from pyro.nn import AutoRegressiveNN

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    RESULTS_DIR,
    count_parameters,
    interleaved_timings_with_cpu,
    load_average,
    machine_info,
    paired_ratios,
    print_table,
    save_json,
    set_threads,
    summarize,
)

import pyroflows  # noqa: E402

BATCH = 512
CONFIGS: dict[str, dict] = {
    "maf": {"transforms": 5, "hidden": (64, 64)},
    "nsf": {"transforms": 3, "hidden": (64, 64), "bins": 8, "bound": 5.0},
}
OPS = ["train step", "log_prob", "sample"]
IMPLS = ["pyroflows", "pf reused", "pyro", "pyro cache=0", "pyro IAF-orient"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flows", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--dims", nargs="+", type=int, default=[6, 21])
    parser.add_argument("--repeats", type=int, default=50, help="timed rounds per operation")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--profile",
        action="store_true",
        help="print torch.profiler tables of pyroflows' train step and sampling",
    )
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "speed.json")
    return parser.parse_args(argv)


def build_pyroflows(name: str, d: int) -> pyroflows.Flow:
    return pyroflows.flows.build(name, d, **CONFIGS[name])


def build_pyro_layers(name: str, d: int, orders: list[torch.Tensor]) -> torch.nn.ModuleList:
    """Pyro layers of the same size as pyroflows' preset, with the same orderings."""
    cfg = CONFIGS[name]
    layers = []
    for order in orders:
        # pyroflows' order[i] is the position of feature i; Pyro's permutation[k] is the
        # feature at position k.
        permutation = torch.argsort(order)
        if name == "maf":
            arn = AutoRegressiveNN(
                d, list(cfg["hidden"]), param_dims=[1, 1], permutation=permutation
            )
            layers.append(AffineAutoregressive(arn))
        else:
            k = cfg["bins"]
            arn = AutoRegressiveNN(
                d, list(cfg["hidden"]), param_dims=[k, k, k - 1], permutation=permutation
            )
            layers.append(
                SplineAutoregressive(d, arn, count_bins=k, bound=cfg["bound"], order="quadratic")
            )
    return torch.nn.ModuleList(layers)


def pyro_distribution(
    layers: torch.nn.ModuleList, d: int, inverted: bool
) -> dist.TransformedDistribution:
    base = dist.Normal(torch.zeros(d), torch.ones(d)).to_event(1)
    transforms = [t.inv for t in layers] if inverted else list(layers)
    return dist.TransformedDistribution(base, transforms)


def make_batches(d: int, pool: int = 8) -> dict[str, list[torch.Tensor]]:
    """Distinct standard-normal batches, one pool per operation."""
    return {op: [torch.randn(BATCH, d) for _ in range(pool)] for op in ("train step", "log_prob")}


def make_ops(
    get_dist: Callable[[], dist.Distribution], params, batches: dict[str, list[torch.Tensor]]
) -> dict:
    """The three timed operations of one implementation, each taking the round index.

    ``batches`` holds one pool of distinct tensors per operation, so no call ever sees the
    tensor of the previous call (Pyro's cache compares tensors by identity).
    """
    optimizer = torch.optim.Adam(params, lr=1e-4)

    def train(i: int) -> None:
        x = batches["train step"][i % len(batches["train step"])]
        optimizer.zero_grad(set_to_none=True)
        loss = -get_dist().log_prob(x).mean()
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def log_prob(i: int) -> None:
        get_dist().log_prob(batches["log_prob"][i % len(batches["log_prob"])])

    @torch.no_grad()
    def sample(i: int) -> None:
        get_dist().sample((BATCH,))

    return {"train step": train, "log_prob": log_prob, "sample": sample}


def profile_pyroflows(name: str, d: int, batches: dict[str, list[torch.Tensor]]) -> dict[str, str]:
    """torch.profiler tables (top ops by self CPU time) of pyroflows' train step and sampling."""
    from torch.profiler import ProfilerActivity, profile

    flow = build_pyroflows(name, d)
    ops = make_ops(flow, flow.parameters(), batches)
    tables = {}
    for op in ("train step", "sample"):
        for i in range(3):
            ops[op](i)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(10):
                ops[op](i)
        tables[op] = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
        print(
            f"\n--- profile: pyroflows {name} d={d} {op} (10 calls) ---\n{tables[op]}", flush=True
        )
    return tables


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    torch.manual_seed(args.seed)
    settings = {
        "batch": BATCH,
        "configs": CONFIGS,
        "dims": args.dims,
        "flows": args.flows,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "threads": threads,
        "dtype": str(torch.get_default_dtype()),
        "optimizer": "Adam lr 1e-4",
        "pyro_layers": {
            "maf": "AffineAutoregressive(AutoRegressiveNN(d, hidden, param_dims=[1, 1]))",
            "nsf": "SplineAutoregressive(d, AutoRegressiveNN(d, hidden, param_dims=[K, K, K-1]), "
            "count_bins=K, bound=B, order='quadratic')",
        },
        "implementations": {
            "pyroflows": "pyroflows.flows.build(name, d, ...); flow() rebuilt every call, as fit() does",
            "pf reused": "the same pyroflows flow with its distribution flow() built once and reused",
            "pyro": "TransformedDistribution(Normal(0, I), [t.inv for t in layers]), Pyro's default cache_size=1",
            "pyro cache=0": "as 'pyro' with each layer's _cache_size forced to 0 (log-det recomputes the pass)",
            "pyro IAF-orient": "TransformedDistribution(Normal(0, I), layers): Pyro's default orientation, "
            "log_prob takes d passes per layer, sampling one",
        },
        "timing": "wall-clock and thread-CPU medians over repeats after warm-up; implementations "
        "interleaved round by round, rotating which goes first; ratio = median(pyroflows) / "
        "median(pyro); paired = per-round ratios (median [q25, q75]); verdict 'slower' if "
        "the paired q25 > 1, 'faster' if the paired q75 < 1, else 'tie'",
    }
    payload = {"benchmark": "speed", "settings": settings, "machine": machine_info(), "results": []}
    started = time.perf_counter()
    rows, param_rows = [], []
    for name in args.flows:
        for d in args.dims:
            batches = make_batches(d)
            flow = build_pyroflows(name, d)
            flow_reused = build_pyroflows(name, d)
            flow_reused.load_state_dict(flow.state_dict())
            reused_dist = flow_reused()
            orders = [layer.made.order for layer in flow.transforms]
            pyro_layers = build_pyro_layers(name, d, orders)
            pyro_layers_nocache = build_pyro_layers(name, d, orders)
            for layer in pyro_layers_nocache:
                layer._cache_size = 0
            pyro_dist = pyro_distribution(pyro_layers, d, inverted=True)
            pyro_dist_nocache = pyro_distribution(pyro_layers_nocache, d, inverted=True)
            pyro_layers_iaf = build_pyro_layers(name, d, orders)
            pyro_dist_iaf = pyro_distribution(pyro_layers_iaf, d, inverted=False)
            counts = {"pyroflows": count_parameters(flow), "pyro": count_parameters(pyro_layers)}
            param_rows.append([f"{name} d={d}", counts["pyroflows"], counts["pyro"]])
            with torch.no_grad():  # sanity: every model gives finite densities
                for model in (flow(), pyro_dist, pyro_dist_nocache, pyro_dist_iaf):
                    if not torch.isfinite(model.log_prob(torch.randn(BATCH, d))).all():
                        raise RuntimeError(f"non-finite log_prob in {name} d={d}")
            impls = {
                "pyroflows": make_ops(flow, flow.parameters(), batches),
                "pf reused": make_ops(lambda dd=reused_dist: dd, flow_reused.parameters(), batches),
                "pyro": make_ops(lambda dd=pyro_dist: dd, pyro_layers.parameters(), batches),
                "pyro cache=0": make_ops(
                    lambda dd=pyro_dist_nocache: dd, pyro_layers_nocache.parameters(), batches
                ),
                "pyro IAF-orient": make_ops(
                    lambda dd=pyro_dist_iaf: dd, pyro_layers_iaf.parameters(), batches
                ),
            }
            for op in OPS:
                names = [n for n in IMPLS if not (op == "sample" and n == "pyro cache=0")]
                times = interleaved_timings_with_cpu(
                    {n: impls[n][op] for n in names}, args.repeats, args.warmup
                )
                wall = {n: summarize(t["wall"]) for n, t in times.items()}
                cpu = {n: summarize(t["cpu"]) for n, t in times.items()}
                ratio = wall["pyroflows"]["median"] / wall["pyro"]["median"]
                cpu_ratio = cpu["pyroflows"]["median"] / cpu["pyro"]["median"]
                paired = paired_ratios(times["pyroflows"]["wall"], times["pyro"]["wall"])
                verdict = (
                    "slower" if paired["q25"] > 1 else ("faster" if paired["q75"] < 1 else "tie")
                )
                result = {
                    "flow": name,
                    "dim": d,
                    "op": op,
                    "params": counts,
                    "wall_seconds": wall,
                    "cpu_seconds": cpu,
                    "ratio_pyroflows_over_pyro": ratio,
                    "cpu_ratio": cpu_ratio,
                    "paired_ratio": paired,
                    "verdict": verdict,
                }
                payload["results"].append(result)
                ms = {n: 1e3 * st["median"] for n, st in wall.items()}
                rows.append(
                    [
                        name,
                        d,
                        op,
                        ms["pyroflows"],
                        ms["pyro"],
                        ratio,
                        f"{paired['median']:.2f} [{paired['q25']:.2f}, {paired['q75']:.2f}]",
                        cpu_ratio,
                        verdict,
                        ms["pf reused"],
                        ms.get("pyro cache=0", float("nan")),
                        ms["pyro IAF-orient"],
                    ]
                )
                print(
                    f"{name} d={d} {op}: "
                    + ", ".join(f"{n} {v:.2f} ms" for n, v in ms.items())
                    + f", ratio {ratio:.2f} (paired {paired['median']:.2f}, cpu {cpu_ratio:.2f}) {verdict}",
                    flush=True,
                )
                save_json(args.out, payload)

    print("\nParameters (trainable)")
    param_table = print_table(["model", "pyroflows", "pyro"], param_rows)
    print(
        f"\nMedian wall-clock milliseconds per call, batch {BATCH}, {threads} thread(s); ratio = "
        "pyroflows / pyro (same orientation, Pyro's default cache_size=1)"
    )
    header = [
        "flow",
        "d",
        "operation",
        "pyroflows",
        "pyro",
        "ratio",
        "paired [q25, q75]",
        "cpu ratio",
        "verdict",
        "pf reused",
        "pyro cache=0",
        "pyro IAF-orient",
    ]
    table = print_table(header, rows, floatfmt=".2f")
    slower = [r for r in payload["results"] if r["verdict"] == "slower"]
    payload["acceptance"] = {
        "pyroflows_not_slower": not slower,
        "slower_cases": [
            (r["flow"], r["dim"], r["op"], r["ratio_pyroflows_over_pyro"]) for r in slower
        ],
    }
    print(
        "\nAcceptance (pyroflows not slower than Pyro anywhere, paired q25 <= 1): "
        f"{'PASS' if not slower else 'FAIL'}"
        + ("" if not slower else f" — slower: {payload['acceptance']['slower_cases']}")
    )
    payload["tables"] = {"parameters": param_table, "times_ms": table}
    if args.profile:
        payload["profiles"] = {
            f"{n} d={d}": profile_pyroflows(n, d, make_batches(d))
            for n in args.flows
            for d in args.dims
        }
    payload["total_seconds"] = time.perf_counter() - started
    payload["machine"]["load_average_at_end"] = load_average()
    save_json(args.out, payload)
    print(f"results: {args.out} (total {payload['total_seconds']:.0f} s)", flush=True)
    return payload


if __name__ == "__main__":
    main()
