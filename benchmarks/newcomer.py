"""A new user's first hour, timed: a Bayesian logistic regression written the usual way.

The model (20 coefficients and an intercept, 500 rows) is written as users write it, with
``X @ w`` inside a ``pyro.plate`` over the rows and no particle dimension in mind. Timed, each
in seconds: building ``AutoFlow`` (its first call, including the default ``init="auto"``), 2000
SVI steps, ``importance`` with 10^4 draws, ``Predictive`` with 1000 draws, and
``to_inference_data`` with 1000 draws (and ``posterior_predictive`` with 1000 draws, where the
installed pyroflows has it). Next to it, Pyro's ``AutoMultivariateNormal`` for the
build and the SVI steps.

A phase that would take minutes is timed on a small number of draws first and extrapolated
linearly when that alone takes more than ``--probe-seconds`` (marked "extrapolated").

Usage::

    python benchmarks/newcomer.py                 # the full protocol, results/newcomer.json
    python benchmarks/newcomer.py --steps 200     # quicker
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import pyro
import pyro.distributions as dist
import torch
from common import RESULTS_DIR, machine_info, print_table, save_json, set_threads
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal
from pyro.optim import Adam

from pyroflows.infer import AutoFlow, importance, to_inference_data

try:
    from pyroflows.infer import posterior_predictive
except ImportError:  # before pyroflows had it
    posterior_predictive = None


def logistic_data(n: int = 500, p: int = 20, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g)
    w = torch.randn(p, generator=g) / p**0.5
    y = torch.bernoulli(torch.sigmoid(x @ w + 0.5), generator=g)
    return x, y


def model(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """As a user writes it: no thought of a particle dimension."""
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1]), 1.0).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 5.0))
    with pyro.plate("rows", x.shape[0]):
        pyro.sample("y", dist.Bernoulli(logits=x @ w + b), obs=y)


def timed(call: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = call()
    return time.perf_counter() - start, out


def timed_draws(
    call: Callable[[int], object], draws: int, probe: int, probe_seconds: float
) -> tuple[float, str]:
    """Seconds for ``call(draws)``; measured on ``probe`` draws and scaled linearly when the
    probe alone takes more than ``probe_seconds``."""
    seconds, _ = timed(lambda: call(probe))
    if seconds > probe_seconds:
        return seconds * draws / probe, f"extrapolated from {probe} draws"
    seconds, _ = timed(lambda: call(draws))
    return seconds, "measured"


def run(args: argparse.Namespace) -> list[dict]:
    x, y = logistic_data()
    records = []
    for name, make in (
        ("AutoFlow", lambda: AutoFlow(model)),
        ("AutoMultivariateNormal", lambda: AutoMultivariateNormal(model)),
    ):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = make()
        build, _ = timed(lambda guide=guide: guide(x, y))
        svi = SVI(model, guide, Adam({"lr": 5e-3}), Trace_ELBO())
        steps, _ = timed(lambda svi=svi: [svi.step(x, y) for _ in range(args.steps)])
        row = {"guide": name, "build_s": build, "svi_s": steps, "svi_steps": args.steps}
        if name == "AutoFlow":
            row["importance_s"], row["importance_how"] = timed_draws(
                lambda n, guide=guide: importance(
                    model, guide, n, model_args=(x, y), seed=1, warn=False
                ),
                args.draws,
                100,
                args.probe_seconds,
            )
            row["predictive_s"], row["predictive_how"] = timed_draws(
                lambda n, guide=guide: Predictive(model, guide=guide, num_samples=n)(x),
                args.posterior_draws,
                50,
                args.probe_seconds,
            )
            if posterior_predictive is not None:
                row["posterior_predictive_s"], row["posterior_predictive_how"] = timed_draws(
                    lambda n, guide=guide: posterior_predictive(model, guide, n, x),
                    args.posterior_draws,
                    50,
                    args.probe_seconds,
                )
            row["arviz_s"], row["arviz_how"] = timed_draws(
                lambda n, guide=guide: to_inference_data(guide, model, n, x, y),
                args.posterior_draws,
                50,
                args.probe_seconds,
            )
        records.append(row)
        print(row, flush=True)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="SVI steps")
    parser.add_argument("--draws", type=int, default=10_000, help="importance draws")
    parser.add_argument("--posterior-draws", type=int, default=1000)
    parser.add_argument("--probe-seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS_DIR / "newcomer.json"))
    args = parser.parse_args()
    set_threads(args.threads)
    records = run(args)
    header = [
        "guide",
        "build s",
        f"{args.steps} SVI steps s",
        "IS s",
        "Pyro Predictive s",
        "posterior_predictive s",
        "ArviZ s",
    ]
    rows = [
        [
            r["guide"],
            r["build_s"],
            r["svi_s"],
            r.get("importance_s", float("nan")),
            r.get("predictive_s", float("nan")),
            r.get("posterior_predictive_s", float("nan")),
            r.get("arviz_s", float("nan")),
        ]
        for r in records
    ]
    table = print_table(header, rows)
    save_json(
        args.out,
        {
            "benchmark": "newcomer",
            "machine": machine_info(),
            "config": vars(args),
            "results": records,
            "table": table,
        },
    )


if __name__ == "__main__":
    main()
