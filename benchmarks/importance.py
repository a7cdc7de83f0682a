"""Importance sampling: pyroflows' ``importance`` next to Pyro's, and PSIS diagnostics of AutoFlow.

Part 1 (speed): Bayesian linear regression (N = 200 points, 5 coefficients and a positive noise
scale), the same trained guide for every method, wall time for 10^5 weighted samples of

* ``pyroflows.infer.importance`` (vectorised, chunks of 8192),
* ``pyro.infer.importance.vectorized_importance_weights`` (one particle plate of 10^5),
* ``pyro.infer.Importance(...).run`` (a Python loop over samples: timed on ``--pyro-loop-samples``
  draws and extrapolated linearly to 10^5, as the table says).

Guides: ``AutoMultivariateNormal`` (pyroflows uses its ``get_posterior()`` in the unconstrained
space) and ``AutoNormal`` (a generic guide: pyroflows traces guide and model in a particle
plate). Timings interleave the methods (``common.interleaved_timings_with_cpu``); medians of
wall-clock and thread CPU time are reported.

Part 2 (quality): Neal's funnel (10-D) and the banana (2-D) of ``benchmarks/vi_targets.py``
(normalised, so the true log Z is 0). ``AutoFlow`` (defaults) is trained with
``SVI(Trace_ELBO, Adam(5e-3))`` for ``--steps`` steps, then ``importance`` with ``--samples``
draws reports k-hat, ESS and log Z +- SE; ``AutoMultivariateNormal`` trained the same way is
the baseline. A third row refits the trained AutoFlow's flow with ``adaptive_importance``
(``--adaptive-rounds`` weighted-MLE refits of 5 epochs on ``--adaptive-samples`` draws; the
round with the smallest k-hat is kept) and evaluates it again with ``--samples`` draws; a
fourth uses that proposal in a defensive mixture (10 % of the draws from a wide Student-t).

Usage::

    nice python benchmarks/importance.py                       # -> results/importance.json
    nice python benchmarks/importance.py --steps 300 --repeats 2   # quick
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Importance, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal, AutoNormal
from pyro.infer.importance import vectorized_importance_weights
from pyro.optim import Adam

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
from vi_targets import banana, funnel  # noqa: E402

from pyroflows.infer.guides.autoguide import AutoFlow  # noqa: E402
from pyroflows.infer.sampling.adaptive import adaptive_importance  # noqa: E402
from pyroflows.infer.sampling.importance import importance  # noqa: E402


def regression_data(n: int = 200, p: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=generator)
    beta = torch.linspace(-1.0, 1.0, p)
    y = x @ beta + 0.5 * torch.randn(n, generator=generator)
    return x, y


def regression(x: torch.Tensor, y: torch.Tensor) -> None:
    p = x.shape[-1]
    beta = pyro.sample("beta", dist.Normal(torch.zeros(p), 1.0).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(1.0))
    with pyro.plate("data", x.shape[0]):
        # beta has batch shape () alone and (S, 1) under a particle plate at dim -2.
        pyro.sample("y", dist.Normal((x * beta).sum(-1), sigma), obs=y)


def train(model, guide, steps: int, *args) -> float:  # noqa: ANN001
    svi = SVI(model, guide, Adam({"lr": 5e-3 if steps > 500 else 2e-2}), Trace_ELBO())
    start = time.perf_counter()
    for _ in range(steps):
        svi.step(*args)
    return time.perf_counter() - start


def speed(args: argparse.Namespace) -> tuple[list, list]:
    x, y = regression_data()
    S, loop_n = args.num_samples, args.pyro_loop_samples
    rows, records = [], []
    for guide_name, make in (
        ("AutoMultivariateNormal", AutoMultivariateNormal),
        ("AutoNormal", AutoNormal),
    ):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = make(regression)
        train(regression, guide, args.train_steps, x, y)

        def ours(i: int, guide=guide) -> float:  # noqa: ANN001
            return importance(
                regression, guide, S, model_args=(x, y), seed=i, warn=False
            ).log_evidence

        def pyro_vectorized(i: int, guide=guide) -> float:  # noqa: ANN001
            log_w, _, _ = vectorized_importance_weights(
                regression, guide, x, y, num_samples=S, max_plate_nesting=1
            )
            return float(torch.logsumexp(log_w, 0) - math.log(S))

        def pyro_loop(i: int, guide=guide) -> float:  # noqa: ANN001
            posterior = Importance(regression, guide, num_samples=loop_n).run(x, y)
            log_w = torch.stack([torch.as_tensor(w) for w in posterior.log_weights])
            return float(torch.logsumexp(log_w, 0) - math.log(loop_n))

        with torch.no_grad():
            times = interleaved_timings_with_cpu(
                {
                    "pyroflows importance": ours,
                    "pyro vectorized_importance_weights": pyro_vectorized,
                },
                repeats=args.repeats,
                warmup=1,
            )
            loop = interleaved_timings_with_cpu(
                {"pyro Importance": pyro_loop}, repeats=max(1, args.repeats // 2), warmup=0
            )
            estimates = {
                "pyroflows importance": ours(99),
                "pyro vectorized_importance_weights": pyro_vectorized(99),
            }
        summaries = {
            k: {"wall": summarize(v["wall"]), "cpu": summarize(v["cpu"])}
            for k, v in {**times, **loop}.items()
        }
        base = summaries["pyroflows importance"]["wall"]["median"]
        for name, summary in summaries.items():
            extrapolated = name == "pyro Importance"
            factor = S / loop_n if extrapolated else 1.0
            wall, cpu = summary["wall"]["median"] * factor, summary["cpu"]["median"] * factor
            note = f"timed on {loop_n}, x{S // loop_n} linear" if extrapolated else "measured"
            rows.append(
                [guide_name, name, wall, cpu, wall / base, note, estimates.get(name, math.nan)]
            )
            records.append(
                {
                    "guide": guide_name,
                    "method": name,
                    "wall_seconds_for_S": wall,
                    "cpu_seconds_for_S": cpu,
                    "relative_to_pyroflows": wall / base,
                    "extrapolated": extrapolated,
                    "timed_samples": loop_n if extrapolated else S,
                    "raw": summary,
                    "log_evidence": estimates.get(name),
                }
            )
    header = ["guide", "method", f"wall s for S={S:.0e}", "CPU s", "x pyroflows", "how", "log Z"]
    return print_table(header, rows), records


def quality(args: argparse.Namespace) -> tuple[str, list]:
    rows, records = [], []

    def record(target: str, name: str, result, total_seconds: float, is_seconds: float, **extra):  # noqa: ANN001, ANN003, ANN202
        """One table row and one JSON record for an importance-sampling result."""
        d = result.diagnostics()
        rows.append(
            [
                target,
                name,
                d["khat"],
                d["ess"],
                d["ess"] / args.samples,
                d["log_evidence"],
                d["log_evidence_se"],
                total_seconds,
                is_seconds,
            ]
        )
        records.append(
            {
                "target": target,
                "guide": name,
                "train_steps": args.steps,
                "importance_seconds": is_seconds,
                **extra,
                **d,
            }
        )
        print(f"{target} {name}: {result}", flush=True)

    for target_name, make_model in (("funnel", funnel), ("banana", banana)):
        model = make_model()
        for guide_name in ("AutoFlow", "AutoMultivariateNormal"):
            pyro.clear_param_store()
            pyro.set_rng_seed(0)
            guide = AutoFlow(model) if guide_name == "AutoFlow" else AutoMultivariateNormal(model)
            seconds = train(model, guide, args.steps)
            start = time.perf_counter()
            result = importance(model, guide, args.samples, seed=1, warn=False)
            is_seconds = time.perf_counter() - start
            record(target_name, guide_name, result, seconds, is_seconds, train_seconds=seconds)
            if guide_name != "AutoFlow" or args.adaptive_rounds == 0:
                continue
            # Then refit the AutoFlow's flow to its weighted draws (adaptive importance sampling).
            start = time.perf_counter()
            out = adaptive_importance(
                model,
                guide,
                args.adaptive_samples,
                rounds=args.adaptive_rounds,
                fit_options={"epochs": 5, "batch_size": 1024},
                seed=2,
            )
            adapt_seconds = time.perf_counter() - start
            start = time.perf_counter()
            result = importance(model, guide, args.samples, seed=1, warn=False)
            is_seconds = time.perf_counter() - start
            name = f"AutoFlow + adaptive ({len(out.history) - 1} refits)"
            common = {
                "train_seconds": seconds,
                "adaptive_seconds": adapt_seconds,
                "adaptive_history": out.history,
            }
            record(target_name, name, result, seconds + adapt_seconds, is_seconds, **common)
            # The same proposal as a defensive mixture with a wide Student-t (10 % of draws).
            start = time.perf_counter()
            result = importance(model, guide, args.samples, seed=1, warn=False, defensive=0.1)
            mix_seconds = time.perf_counter() - start
            name += " + defensive 0.1"
            record(
                target_name,
                name,
                result,
                seconds + adapt_seconds,
                mix_seconds,
                defensive=0.1,
                **common,
            )
    header = [
        "target",
        "proposal",
        "k-hat",
        "ESS",
        "ESS/S",
        "log Z (true 0)",
        "SE",
        "train+refit s",
        "IS s",
    ]
    return print_table(header, rows), records


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-samples", type=int, default=100_000)
    parser.add_argument("--pyro-loop-samples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=500)
    parser.add_argument("--steps", type=int, default=2000, help="SVI steps of the quality part")
    parser.add_argument("--samples", type=int, default=100_000, help="IS draws of the quality part")
    parser.add_argument(
        "--adaptive-rounds", type=int, default=3, help="refits of AutoFlow (0: none)"
    )
    parser.add_argument(
        "--adaptive-samples", type=int, default=20_000, help="draws per refit round"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--out", default=str(RESULTS_DIR / "importance.json"))
    args = parser.parse_args()
    set_threads(args.threads)
    info = machine_info()
    start = time.perf_counter()
    speed_table, speed_records = speed(args)
    print()
    quality_table, quality_records = ("", []) if args.skip_quality else quality(args)
    total = time.perf_counter() - start
    print(f"\ntotal wall time {total:.1f} s")
    save_json(
        args.out,
        {
            "benchmark": "importance",
            "machine": info,
            "config": vars(args),
            "speed": speed_records,
            "speed_table": speed_table,
            "quality": quality_records,
            "quality_table": quality_table,
            "wall_seconds": total,
        },
    )


if __name__ == "__main__":
    main()
