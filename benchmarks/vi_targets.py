"""Variational inference on two standard hard targets: AutoFlow next to Pyro's autoguides.

Targets (normalised densities, so log Z = 0 and KL(q || p) = -ELBO):

* Neal's funnel in 10 dimensions: v ~ N(0, 3), x_i | v ~ N(0, exp(v / 2)), i = 1..9
  (standard deviations 3 and exp(v / 2));
* the 2-D banana: x1 ~ N(0, 2), x2 | x1 ~ N(x1^2 / 4, 0.5) (standard deviations).

Each guide is trained with ``SVI(model, guide, Adam(lr=5e-3), Trace_ELBO())`` for 2000 steps
(3 seeds); then KL(q || p) is estimated with 4000 samples, the PSIS k-hat of the importance
weights p/q is computed (ArviZ), and the time per step is measured. Guides: pyroflows'
``AutoFlow`` with its defaults, Pyro's ``AutoIAFNormal`` (defaults), ``AutoNormalizingFlow``
with two ``affine_autoregressive`` layers, and ``AutoMultivariateNormal``, side by side.

Usage::

    python benchmarks/vi_targets.py                      # full run -> results/vi_targets.json
    python benchmarks/vi_targets.py --steps 500 --seeds 1 --guides AutoFlow
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import affine_autoregressive, iterated
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoMultivariateNormal, AutoNormalizingFlow
from pyro.optim import Adam

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, machine_info, print_table, save_json, set_threads  # noqa: E402

from pyroflows.infer import AutoFlow, guide_log_weights  # noqa: E402


def funnel(dim: int = 10):  # noqa: ANN201
    """Neal's funnel: v ~ N(0, 3), x | v ~ N(0, exp(v/2)) in ``dim - 1`` dimensions."""

    def model() -> None:
        v = pyro.sample("v", dist.Normal(0.0, 3.0))
        scale = torch.exp(v / 2).unsqueeze(-1).expand(v.shape + (dim - 1,))
        pyro.sample("x", dist.Normal(torch.zeros_like(scale), scale).to_event(1))

    return model


def banana():  # noqa: ANN201
    """x1 ~ N(0, 2), x2 | x1 ~ N(x1^2 / 4, 0.5)."""

    def model() -> None:
        x1 = pyro.sample("x1", dist.Normal(0.0, 2.0))
        pyro.sample("x2", dist.Normal(x1**2 / 4, 0.5))

    return model


TARGETS = {"funnel": funnel, "banana": banana}
GUIDES = {
    "AutoFlow": lambda model: AutoFlow(model),
    "AutoIAFNormal": lambda model: AutoIAFNormal(model),
    "AutoNormalizingFlow(2 x IAF)": lambda model: AutoNormalizingFlow(
        model, functools.partial(iterated, 2, affine_autoregressive)
    ),
    "AutoMultivariateNormal": lambda model: AutoMultivariateNormal(model),
    # Not in the default run (pass --guides): AutoFlow with affine IAF layers instead of splines.
    "AutoFlow(maf 3x32)": lambda model: AutoFlow(
        model, flow="maf", transforms=3, hidden=(32, 32), log_scale_bound=6.0
    ),
    "AutoFlow(nsf 3x32)": lambda model: AutoFlow(model, transforms=3, hidden=(32, 32)),
    "AutoFlow(linear tails)": lambda model: AutoFlow(model, tails="linear"),
}
DEFAULT_GUIDES = list(GUIDES)[:4]


def psis_khat(log_weights: torch.Tensor) -> float:
    import arviz as az

    _, khat = az.psislw(log_weights.double().cpu().numpy())
    return float(khat)


def run_one(target: str, guide_name: str, seed: int, steps: int, samples: int) -> dict:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = TARGETS[target]()
    start = time.perf_counter()
    guide = GUIDES[guide_name](model)
    svi = SVI(model, guide, Adam({"lr": 5e-3}), Trace_ELBO())
    setup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        svi.step()
    seconds = time.perf_counter() - start
    _, logw = guide_log_weights(model, guide, samples, max_plate_nesting=0)
    kl = float(-logw.mean())
    return {
        "target": target,
        "guide": guide_name,
        "seed": seed,
        "kl": kl,
        "kl_se": float(logw.std() / math.sqrt(samples)),
        "khat": psis_khat(logw),
        "ms_per_step": 1000 * seconds / steps,
        "setup_s": setup,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--targets", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--guides", nargs="+", default=DEFAULT_GUIDES, choices=list(GUIDES))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS_DIR / "vi_targets.json"))
    args = parser.parse_args()
    set_threads(args.threads)
    info = machine_info()
    runs = []
    for target in args.targets:
        for seed in range(args.seeds):
            for guide in args.guides:
                result = run_one(target, guide, seed, args.steps, args.samples)
                runs.append(result)
                print(
                    f"{target:7s} {guide:30s} seed {seed}: KL {result['kl']:.3f} "
                    f"k-hat {result['khat']:.2f} {result['ms_per_step']:.1f} ms/step",
                    flush=True,
                )
    rows = []
    for target in args.targets:
        for guide in args.guides:
            rs = [r for r in runs if r["target"] == target and r["guide"] == guide]
            kls = [r["kl"] for r in rs]
            rows.append(
                [
                    target,
                    guide,
                    sum(kls) / len(kls),
                    min(kls),
                    max(kls),
                    sum(r["khat"] for r in rs) / len(rs),
                    sum(r["ms_per_step"] for r in rs) / len(rs),
                ]
            )
    print()
    table = print_table(
        ["target", "guide", "KL mean", "KL min", "KL max", "k-hat", "ms/step"], rows
    )
    save_json(
        args.out,
        {
            "benchmark": "vi_targets",
            "machine": info,
            "config": vars(args),
            "runs": runs,
            "table": table,
        },
    )


if __name__ == "__main__":
    main()
