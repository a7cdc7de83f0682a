"""Cost per SVI step and build time of the flow guides next to Pyro's, on issue 13's two models.

Models: Neal's funnel in 10 dimensions, and a Bayesian logistic regression with 100
coefficients on 1,000 rows (standard-normal covariates, float32). Guides: Pyro's
``AutoMultivariateNormal``, ``AutoIAFNormal`` (defaults), ``AutoNormalizingFlow`` with two
``affine_autoregressive`` layers, a guide on zuko's NSF through ``pyro.contrib.zuko`` (``pip
install zuko==1.6``; skipped when absent), and pyroflows' ``AutoFlow`` with its defaults (STL
on for both models) and with ``stl=False``.

For each guide: the time to build it (construction and one call, ``init="auto"`` included; a
torch optimizer is created first, untimed, because the first one of a process imports
``torch._dynamo``, about 4 s, which any SVI run pays once; the median of ``--builds``), then
``SVI(model, guide, Adam(1e-3), Trace_ELBO())``, one particle, one torch thread, warmed up,
timed in interleaved rounds of ``--steps`` steps: each round runs every guide once, rotating
the order, so a slow period of this shared machine hits them alike. Reported: the median ms
per step (CPU time of the thread, which leaves out time descheduled) and the median over
rounds of the paired ratio to ``AutoIAFNormal``.

Usage::

    python benchmarks/guide_step.py                      # -> results/guide_step.json
    python benchmarks/guide_step.py --guides AutoIAFNormal AutoFlow --rounds 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import affine_autoregressive
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import (
    AutoContinuous,
    AutoIAFNormal,
    AutoMultivariateNormal,
    AutoNormalizingFlow,
)
from pyro.optim import Adam

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    RESULTS_DIR,
    interleaved_timings_with_cpu,
    machine_info,
    paired_ratios,
    print_table,
    save_json,
    set_threads,
)

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


class AutoZukoNSF(AutoContinuous):
    """A guide on zuko's NSF (3 transforms, its defaults otherwise) over the latent vector,
    through ``pyro.contrib.zuko.ZukoToPyro``, as Pyro's documentation pairs them."""

    def get_posterior(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201, D102
        import zuko
        from pyro.contrib.zuko import ZukoToPyro

        if "nsf" not in self._modules:
            self.nsf = zuko.flows.NSF(self.latent_dim, transforms=3)
        return ZukoToPyro(self.nsf())


class AutoFlowNoSTL(AutoFlow):
    """``AutoFlow(stl=False)`` under its own name in the param store."""

    def __init__(self, model: Callable) -> None:
        super().__init__(model, stl=False)


def _zuko_available() -> bool:
    try:
        import zuko  # noqa: F401
    except ImportError:
        return False
    # Importing zuko turns torch's argument validation off for every distribution; Pyro's
    # default (on) again, so that every guide runs as it would in a Pyro program.
    pyro.enable_validation(True)
    return True


GUIDES: dict[str, Callable] = {
    "AutoMultivariateNormal": AutoMultivariateNormal,
    "AutoIAFNormal": AutoIAFNormal,
    "AutoNormalizingFlow(2 IAF)": lambda model: AutoNormalizingFlow(
        model, lambda d: pyro.distributions.transforms.iterated(2, affine_autoregressive, d)
    ),
    "zuko NSF": AutoZukoNSF,
    "AutoFlow": AutoFlow,
    "AutoFlow(stl=False)": AutoFlowNoSTL,
}


def build_seconds(model: Callable, make: Callable, builds: int) -> float:
    """Median seconds to construct the guide and call it once."""
    times = []
    for i in range(builds):
        pyro.clear_param_store()
        pyro.set_rng_seed(i)
        start = time.perf_counter()
        make(model)()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def step_timings(
    model: Callable, makes: dict[str, Callable], steps: int, rounds: int
) -> dict[str, dict[str, list[float]]]:
    """Interleaved rounds of ``steps`` SVI steps of every guide (one param store, the guides'
    names distinct): seconds per round, wall and CPU."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    svis = {}
    for name, make in makes.items():
        guide = make(model)
        svis[name] = SVI(model, guide, Adam({"lr": 1e-3}), Trace_ELBO())
        for _ in range(10):
            svis[name].step()

    def run(svi: SVI) -> Callable[[int], None]:
        return lambda _: [svi.step() for _ in range(steps)]

    return interleaved_timings_with_cpu({n: run(s) for n, s in svis.items()}, rounds, warmup=1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--guides", nargs="+", default=list(GUIDES), choices=list(GUIDES))
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--builds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "guide_step.json")
    args = parser.parse_args(argv)
    set_threads(1)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # torch._dynamo's import, untimed
    guides = [g for g in args.guides if g != "zuko NSF" or _zuko_available()]
    makes = {name: GUIDES[name] for name in guides}
    models = {"funnel 10-D": funnel, "logistic 100-D x 1000": logistic_regression()}
    rows: dict[str, list] = {name: [name] for name in guides}
    records = []
    for target, model in models.items():
        timings = step_timings(model, makes, args.steps, args.rounds)
        reference = timings.get("AutoIAFNormal")
        for name in guides:
            build = build_seconds(model, makes[name], args.builds)
            cpu = timings[name]["cpu"]
            ms = 1000 * statistics.median(cpu) / args.steps
            ratio = paired_ratios(cpu, reference["cpu"])["median"] if reference else float("nan")
            records.append({"guide": name, "model": target, "build_s": build,
                            "ms_per_step": ms, "ratio_to_iaf": ratio,
                            "round_seconds": timings[name]})  # fmt: skip
            rows[name] += [build, ms, ratio]
            print(f"{target}, {name}: build {build:.2f} s, {ms:.2f} ms/step, "
                  f"x{ratio:.2f} AutoIAFNormal", flush=True)  # fmt: skip
    header = ["guide"]
    for target in ("funnel", "logistic"):
        header += [f"{target} build s", f"{target} ms/step", f"{target} / IAF"]
    table = print_table(header, list(rows.values()), floatfmt=".2f")
    save_json(args.out, {"settings": vars(args) | {"out": str(args.out)}, "machine": machine_info(),
                         "runs": records, "table": table})  # fmt: skip


if __name__ == "__main__":
    main()
