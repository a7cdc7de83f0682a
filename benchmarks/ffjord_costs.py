"""Costs of the ``ffjord`` continuous normalizing flow: NFE, time and memory, side by side.

Three tables, each on a block moved off its identity initialisation (every parameter + 0.1 N(0, 1),
seed 0), a batch of standard normal data and one torch thread:

* **trace**: for each ``--features`` d, exact trace (d VJPs per evaluation) vs Hutchinson
  (1 VJP) in float32: NFE of one density solve, time of a density evaluation (no grad) and
  of a training step (``-log_prob(x).mean()``, backward), interleaved round by round;
* **adjoint**: direct backpropagation through the solver vs ``adjoint=True`` (float32):
  peak bytes autograd saves for backward over the whole step
  (:class:`~pyroflows.transforms.SavedTensorMeter`, parameters excluded), time per step, and
  the float64 gradient difference (relative to each gradient's scale). This table uses
  softplus fields: the meter never sees the release of tensors that an op saves as its own
  *output* (tanh, exp), so with tanh the adjoint's forward solve would look as if it kept
  every evaluation's activations;
* **tolerance**: the dtype-aware defaults (float64 1e-10, float32 1e-5): NFE and round-trip
  error of a forward then inverse solve.

Usage::

    nice python benchmarks/ffjord_costs.py            # writes results/ffjord_costs.json
    python benchmarks/ffjord_costs.py --features 2 16 --device cuda
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    RESULTS_DIR,
    interleaved_timings_with_cpu,
    machine_info,
    paired_ratios,
    print_table,
    save_json,
    set_threads,
    summarize,
)

from pyroflows.transforms import SavedTensorMeter  # noqa: E402
from pyroflows.transforms.continuous import ContinuousFlow  # noqa: E402

KB = 2.0**10


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", nargs="+", type=int, default=[2, 8, 32])
    parser.add_argument("--hidden", nargs="+", type=int, default=[64, 64])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "ffjord_costs.json")
    return parser.parse_args(argv)


def block(args: argparse.Namespace, features: int, dtype: torch.dtype, **options) -> ContinuousFlow:  # noqa: ANN003
    torch.manual_seed(0)
    flow = ContinuousFlow(features, hidden=tuple(args.hidden), **options)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype))
    return flow.to(args.device, dtype)


def data(
    args: argparse.Namespace, features: int, dtype: torch.dtype, seed: int = 1
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(args.batch, features, generator=generator, dtype=torch.float64).to(
        args.device, dtype
    )


def loss_of(t: ContinuousFlow, x: torch.Tensor) -> torch.Tensor:
    z, ladj = t.inverse_and_ladj(x)
    return (0.5 * z.square().sum(-1) - ladj).mean()


def sync(args: argparse.Namespace) -> None:
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def trace_table(args: argparse.Namespace) -> tuple[list, list]:
    rows, results = [], []
    for d in args.features:
        x = data(args, d, torch.float32)
        variants = {
            name: block(args, d, torch.float32, trace=name) for name in ("exact", "hutchinson")
        }
        nfe = {}
        for name, t in variants.items():
            with torch.no_grad():
                t.inverse_and_ladj(x)
            nfe[name] = t.last_nfe

        def density(t: ContinuousFlow, x: torch.Tensor = x):  # noqa: ANN202
            def run(i: int) -> None:
                with torch.no_grad():
                    t.inverse_and_ladj(x)
                sync(args)

            return run

        def step(t: ContinuousFlow, x: torch.Tensor = x):  # noqa: ANN202
            def run(i: int) -> None:
                t.zero_grad(set_to_none=True)
                loss_of(t, x).backward()
                sync(args)

            return run

        dens = interleaved_timings_with_cpu(
            {n: density(t) for n, t in variants.items()}, args.repeats, args.warmup
        )
        steps = interleaved_timings_with_cpu(
            {n: step(t) for n, t in variants.items()}, args.repeats, args.warmup
        )
        ratio = paired_ratios(steps["exact"]["cpu"], steps["hutchinson"]["cpu"])
        results.append(
            {
                "features": d,
                "nfe": nfe,
                "density_seconds": {n: summarize(t["wall"]) for n, t in dens.items()},
                "density_cpu_seconds": {n: summarize(t["cpu"]) for n, t in dens.items()},
                "step_seconds": {n: summarize(t["wall"]) for n, t in steps.items()},
                "step_cpu_seconds": {n: summarize(t["cpu"]) for n, t in steps.items()},
                "step_cpu_ratio_exact_over_hutchinson": ratio,
            }
        )
        med = {n: 1e3 * summarize(dens[n]["cpu"])["median"] for n in variants}
        smed = {n: 1e3 * summarize(steps[n]["cpu"])["median"] for n in variants}
        rows.append(
            [
                d,
                nfe["exact"],
                nfe["hutchinson"],
                med["exact"],
                med["hutchinson"],
                smed["exact"],
                smed["hutchinson"],
                f"{ratio['median']:.2f}",
            ]
        )
        print(f"trace d={d}: nfe {nfe}, step cpu ms {smed}", flush=True)
    return rows, results


def adjoint_table(args: argparse.Namespace) -> tuple[list, list]:
    rows, results = [], []
    d = args.features[0]
    # Gradient agreement in float64 at the default (tight) tolerances.
    x64 = data(args, d, torch.float64)
    grads = []
    for adjoint in (False, True):
        t = block(args, d, torch.float64, adjoint=adjoint)
        grads.append(torch.autograd.grad(loss_of(t, x64), list(t.parameters())))
    diff = max(((a - b).abs().max() / a.abs().max().clamp_min(1.0)).item() for a, b in zip(*grads))
    x = data(args, d, torch.float32)
    variants = {
        "direct": block(args, d, torch.float32, activation="softplus"),
        "adjoint": block(args, d, torch.float32, adjoint=True, activation="softplus"),
    }
    memory = {}
    for name, t in variants.items():
        with SavedTensorMeter(exclude=t.parameters()) as meter:
            loss = loss_of(t, x)
            after_forward = meter.current
            loss.backward()
        memory[name] = {"peak": meter.peak, "after_forward": after_forward}

    def step(t: ContinuousFlow):  # noqa: ANN202
        def run(i: int) -> None:
            t.zero_grad(set_to_none=True)
            loss_of(t, x).backward()
            sync(args)

        return run

    times = interleaved_timings_with_cpu(
        {n: step(t) for n, t in variants.items()}, args.repeats, args.warmup
    )
    ratio = paired_ratios(times["adjoint"]["cpu"], times["direct"]["cpu"])
    results.append(
        {
            "features": d,
            "saved_bytes": memory,
            "grad_max_rel_diff_float64": diff,
            "step_seconds": {n: summarize(t["wall"]) for n, t in times.items()},
            "step_cpu_seconds": {n: summarize(t["cpu"]) for n, t in times.items()},
            "step_cpu_ratio_adjoint_over_direct": ratio,
        }
    )
    rows.append(
        [
            d,
            memory["direct"]["peak"] / KB,
            memory["adjoint"]["peak"] / KB,
            1e3 * summarize(times["direct"]["cpu"])["median"],
            1e3 * summarize(times["adjoint"]["cpu"])["median"],
            f"{ratio['median']:.2f}",
            f"{diff:.1e}",
        ]
    )
    print(f"adjoint d={d}: saved KB {memory}, grad diff {diff:.1e}", flush=True)
    return rows, results


def tolerance_table(args: argparse.Namespace) -> tuple[list, list]:
    rows, results = [], []
    for d in args.features:
        for dtype in (torch.float64, torch.float32):
            t = block(args, d, dtype)
            z = data(args, d, dtype)
            with torch.no_grad():
                x, _ = t.call_and_ladj(z)
                nfe_forward = t.last_nfe
                z_back, _ = t.inverse_and_ladj(x)
                nfe_inverse = t.last_nfe
            error = (z_back - z).abs().max().item()
            name = str(dtype).removeprefix("torch.")
            results.append(
                {
                    "features": d,
                    "dtype": name,
                    "nfe_forward": nfe_forward,
                    "nfe_inverse": nfe_inverse,
                    "round_trip_max_error": error,
                }
            )
            rows.append([d, name, nfe_forward, nfe_inverse, f"{error:.1e}"])
    return rows, results


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings["threads"] = threads
    payload: dict = {"benchmark": "ffjord_costs", "settings": settings, "machine": machine_info()}
    started = time.perf_counter()
    rows, payload["trace"] = trace_table(args)
    print_table(
        [
            "d",
            "NFE exact",
            "NFE hutch",
            "density ms exact",
            "density ms hutch",
            "step ms exact",
            "step ms hutch",
            "step ratio exact/hutch",
        ],
        rows,
        ".1f",
    )
    rows, payload["adjoint"] = adjoint_table(args)
    print_table(
        [
            "d",
            "saved KB direct",
            "saved KB adjoint",
            "step ms direct",
            "step ms adjoint",
            "step ratio adjoint/direct",
            "grad diff f64",
        ],
        rows,
        ".1f",
    )
    rows, payload["tolerance"] = tolerance_table(args)
    print_table(["d", "dtype", "NFE forward", "NFE inverse", "round trip error"], rows)
    payload["seconds"] = time.perf_counter() - started
    save_json(args.out, payload)
    print(f"wrote {args.out} ({payload['seconds']:.0f} s)")
    return payload


if __name__ == "__main__":
    main()
