"""Cost per SVI step and build time of the flow guides next to Pyro's, on issue 13's two models.

Models: Neal's funnel in 10 dimensions, and a Bayesian logistic regression with 100
coefficients on 1,000 rows (standard-normal covariates, float32). For each guide: the time to
build it (construction and one call, ``init="auto"`` included; a torch optimizer is created
first, untimed, because the first one of a process imports ``torch._dynamo``, about 4 s, which
any SVI run pays once), then ``SVI(model, guide, Adam(1e-3), Trace_ELBO())``: 10 untimed steps
and ``--steps`` timed ones, one particle, one torch thread.

Usage::

    python benchmarks/guide_step.py                      # -> results/guide_step.json
    python benchmarks/guide_step.py --guides AutoIAFNormal AutoFlow --steps 100
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoMultivariateNormal
from pyro.optim import Adam

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, machine_info, print_table, save_json, set_threads  # noqa: E402

from pyroflows.infer import AutoFlow  # noqa: E402


def funnel() -> None:
    v = pyro.sample("v", dist.Normal(0.0, 3.0))
    scale = torch.exp(v / 2).unsqueeze(-1).expand(v.shape + (9,))
    pyro.sample("x", dist.Normal(torch.zeros_like(scale), scale).to_event(1))


def logistic_regression() -> Callable[[], None]:
    g = torch.Generator().manual_seed(0)
    X = torch.randn(1000, 100, generator=g)
    y = torch.bernoulli(torch.sigmoid(X @ (0.3 * torch.randn(100, generator=g))), generator=g)

    def model() -> None:
        b = pyro.sample("b", dist.Normal(torch.zeros(100), 1.0).to_event(1))
        with pyro.plate("rows", 1000):
            pyro.sample("y", dist.Bernoulli(logits=X @ b), obs=y)

    return model


GUIDES: dict[str, Callable] = {
    "AutoMultivariateNormal": AutoMultivariateNormal,
    "AutoIAFNormal": AutoIAFNormal,
    "AutoFlow": AutoFlow,
    "AutoFlow(stl=False)": lambda model: AutoFlow(model, stl=False),
}


def measure(model: Callable, make: Callable, steps: int) -> tuple[float, float]:
    """(build seconds, milliseconds per SVI step)."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    start = time.perf_counter()
    guide = make(model)
    guide()
    build = time.perf_counter() - start
    svi = SVI(model, guide, Adam({"lr": 1e-3}), Trace_ELBO())
    for _ in range(10):
        svi.step()
    start = time.perf_counter()
    for _ in range(steps):
        svi.step()
    return build, 1000 * (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guides", nargs="+", default=list(GUIDES), choices=list(GUIDES))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "guide_step.json")
    args = parser.parse_args(argv)
    set_threads(1)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # torch._dynamo's import, untimed
    models = {"funnel 10-D": funnel, "logistic 100-D x 1000": logistic_regression()}
    rows, records = [], []
    for guide in args.guides:
        row: list = [guide]
        for target, model in models.items():
            build, ms = measure(model, GUIDES[guide], args.steps)
            records.append({"guide": guide, "model": target, "build_s": build, "ms_per_step": ms})
            row += [build, ms]
            print(f"{target}, {guide}: build {build:.2f} s, {ms:.2f} ms/step", flush=True)
        rows.append(row)
    header = ["guide", "funnel build s", "funnel ms/step", "logistic build s", "logistic ms/step"]
    table = print_table(header, rows, floatfmt=".2f")
    save_json(args.out, {"settings": vars(args) | {"out": str(args.out)}, "machine": machine_info(),
                         "runs": records, "table": table})  # fmt: skip


if __name__ == "__main__":
    main()
