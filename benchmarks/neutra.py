"""Flow-preconditioned NUTS (NeuTra, ``pyroflows.infer.sampling.neutra.neutra_mcmc``) next to
Pyro's plain NUTS on two posteriors with bad geometry.

Posteriors (float64):

* ``funnel-10d``: Neal's funnel of ``vi_targets.py``, v ~ N(0, 3^2), x_i | v ~ N(0, exp(v)),
  i = 1..9. Reference from its closed form: every mean 0, sd(v) = 3, sd(x_i) = exp(9/4).
* ``eight_schools_centered``: the centred eight schools of ``posteriordb_models.py``; posteriordb
  has no draws for it, so (as its ``info.json`` says) the reference is the non-centred
  posterior's draws, the same posterior of (theta, mu, tau).

Per posterior: plain NUTS on the model, then an ``AutoFlow`` (defaults) fitted by
``pyroflows.infer.fit_guide`` (its pilot runs choose the step size, then at most
``--fit-steps`` = 1000 SVI steps: a fixed amount of work rather than a time budget, so that the
fit does not depend on the machine's load; its time, the guide's construction included, is
reported apart) and NUTS in the flow's base space. Both NUTS runs: one
chain, ``--warmup`` + ``--samples`` iterations (400 + 400),
target acceptance 0.8, tree depth <= 10, diagonal mass matrix adaptation. Reported: sampling
time (wall clock and CPU time of the process, warm-up included; on a shared machine the CPU
time is the steadier one), gradient evaluations (model evaluations counted by
a wrapper, the same way for both samplers, warm-up included), the minimum bulk ESS over the
model's parameters (ArviZ), ESS per second and per 1000 gradient evaluations, divergences
(after warm-up), and the largest |mean error| in reference standard deviations.

Usage::

    python benchmarks/neutra.py            # ~6 min of CPU on 1 thread -> results/neutra.json
    python benchmarks/neutra.py --quick    # smoke run: 50 + 50 draws, 100-step fits
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro.infer import MCMC, NUTS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, machine_info, print_table, save_json, set_threads  # noqa: E402
from posteriordb_models import MODELS  # noqa: E402
from vi_targets import funnel  # noqa: E402

from pyroflows.data.posteriordb import load_posterior  # noqa: E402
from pyroflows.infer import AutoFlow, fit_guide  # noqa: E402
from pyroflows.infer.sampling.neutra import neutra_mcmc  # noqa: E402

EIGHT = "eight_schools-eight_schools_centered"


def funnel_problem(root: str | None) -> dict:
    model = funnel(10)

    def columns(s: dict) -> np.ndarray:
        return torch.cat([s["v"][:, None], s["x"]], 1).double().cpu().numpy()

    sd = np.array([3.0] + [math.exp(9 / 4)] * 9)
    names = ["v"] + [f"x[{i}]" for i in range(1, 10)]
    return {"model": model, "columns": columns, "names": names, "mean": np.zeros(10), "sd": sd}


def eight_schools_problem(root: str | None) -> dict:
    post = load_posterior(EIGHT, root)
    if post.draws is None:  # the same posterior as the non-centred model's, which has draws
        reference = load_posterior(post.info["posterior"]["reference_posterior_name"], root)
        post.draws, post.param_names = reference.draws, reference.param_names
    model, columns = MODELS[EIGHT](post.data, torch.float64)
    mean, sd = post.reference_mean_sd()
    return {"model": model, "columns": columns, "names": post.param_names, "mean": mean, "sd": sd}


PROBLEMS = {"funnel-10d": funnel_problem, "eight_schools_centered": eight_schools_problem}


def counting(model: Callable) -> tuple[Callable, list[int]]:
    """The model, counting its calls (one per gradient evaluation of either sampler)."""
    calls = [0]

    def counted(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        calls[0] += 1
        return model(*args, **kwargs)

    return counted, calls


def min_bulk_ess(x: np.ndarray) -> float:
    import arviz as az

    ess = az.ess(az.convert_to_dataset(x[None]), method="bulk")
    return float(np.min(ess["x"].values))


def timed(fn: Callable) -> tuple[object, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def measure(problem: dict, mcmc: MCMC, calls: int, wall: float, cpu: float) -> dict:
    x = problem["columns"](mcmc.get_samples())
    err = (x.mean(0) - problem["mean"]) / problem["sd"]
    ess = min_bulk_ess(x)
    divergences = sum(len(v) for v in mcmc.diagnostics()["divergences"].values())
    return {
        "seconds": wall,
        "cpu_seconds": cpu,
        "gradient_evaluations": calls,
        "min_bulk_ess": ess,
        "ess_per_second": ess / wall,
        "ess_per_cpu_second": ess / cpu,
        "ess_per_1k_gradients": 1000 * ess / calls,
        "divergences": divergences,
        "max_abs_mean_error_sd": float(np.max(np.abs(err))),
        "mean_error_sd": err.tolist(),
        "sd_ratio": (x.std(0, ddof=1) / problem["sd"]).tolist(),
        "params": problem["names"],
    }


def run_problem(name: str, args: argparse.Namespace) -> list[dict]:
    problem = PROBLEMS[name](args.root)
    model = problem["model"]
    out = []
    # Plain NUTS on the model.
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    counted, calls = counting(model)
    kernel = NUTS(counted, target_accept_prob=0.8, max_tree_depth=10)
    mcmc = MCMC(kernel, args.samples, args.warmup, disable_progbar=True)
    _, wall, cpu = timed(mcmc.run)
    out.append(
        {"posterior": name, "sampler": "NUTS", **measure(problem, mcmc, calls[0], wall, cpu)}
    )
    # NeuTra: fit an AutoFlow, then NUTS in its base space.
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)

    def fit() -> tuple[AutoFlow, object]:  # the guide's construction (its Laplace start) too
        guide = AutoFlow(model)
        return guide, fit_guide(
            model, guide, max_steps=args.fit_steps, progress=False, check_draws=1000
        )

    (guide, fit), fit_wall, _ = timed(fit)
    counted, calls = counting(model)
    before = calls[0]
    mcmc, wall, cpu = timed(
        lambda: neutra_mcmc(counted, guide, args.samples, args.warmup, seed=args.seed)
    )
    row = measure(problem, mcmc, calls[0] - before, wall, cpu)
    row.update(
        fit_seconds=fit_wall,
        fit_steps=fit.steps,
        fit_stop_reason=fit.stop_reason,
        fit_khat=fit.khat,
        neutra_gradient_evaluations=mcmc.gradient_evaluations,
        ess_per_second_with_fit=row["min_bulk_ess"] / (wall + fit_wall),
    )
    out.append({"posterior": name, "sampler": "NeuTra (AutoFlow)", **row})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--posteriors", nargs="+", default=list(PROBLEMS), choices=list(PROBLEMS))
    parser.add_argument("--warmup", type=int, default=400)
    parser.add_argument("--samples", type=int, default=400)
    parser.add_argument(
        "--fit-steps", type=int, default=1000, help="fit_guide's max_steps (after its pilots)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 50 + 50 draws, 100-step fits"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--root", default=None, help="posteriordb folder")
    parser.add_argument("--out", default=str(RESULTS_DIR / "neutra.json"))
    args = parser.parse_args()
    if args.quick:
        args.warmup, args.samples, args.fit_steps = 50, 50, 100
    set_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    info = machine_info()
    runs = []
    for name in args.posteriors:
        for r in run_problem(name, args):
            runs.append(r)
            print(
                f"{name} {r['sampler']}: {r['seconds']:.1f} s, {r['gradient_evaluations']} "
                f"gradients, min ESS {r['min_bulk_ess']:.0f}, {r['divergences']} divergences",
                flush=True,
            )
    print()
    header = [
        "posterior",
        "sampler",
        "fit s",
        "sampling s",
        "CPU s",
        "gradients",
        "min bulk ESS",
        "ESS/s",
        "ESS/CPU s",
        "ESS/1k grads",
        "divergences",
        "max |mean err| (sd)",
    ]
    rows = [
        [
            r["posterior"],
            r["sampler"],
            r.get("fit_seconds", 0.0),
            r["seconds"],
            r["cpu_seconds"],
            r["gradient_evaluations"],
            r["min_bulk_ess"],
            r["ess_per_second"],
            r["ess_per_cpu_second"],
            r["ess_per_1k_gradients"],
            r["divergences"],
            r["max_abs_mean_error_sd"],
        ]
        for r in runs
    ]
    table = print_table(header, rows, floatfmt=".2f")
    command = "python benchmarks/neutra.py " + " ".join(sys.argv[1:])
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    path = save_json(
        args.out,
        {
            "machine": info,
            "command": command.strip(),
            "settings": settings,
            "runs": runs,
            "table": table,
        },
    )
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
