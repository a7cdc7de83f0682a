"""Plain importance sampling next to annealed importance sampling / SMC from the same proposal.

For each target an ``AutoFlow`` (defaults) is fitted once with ``pyroflows.infer.fit_guide``;
then, from that same proposal and for each seed:

* ``annealed_importance`` (SMC: adaptive temperatures at conditional ESS 0.9, 5 HMC moves of
  5 leapfrog steps per temperature, resampling below ESS N/2; and again from a start twice as
  wide in the flow's base space, ``widen=2``) with N particles; it reports its gradient
  evaluations G per particle, so its budget is N * G target gradients;
* ``importance`` with S = N * G draws: the same number of target evaluations (a gradient
  costs more than an evaluation, so this favours plain importance sampling).

Reported: the error of log Z (mean absolute over seeds, and the mean of the reported standard
errors), the ESS and Pareto k-hat of the final weights, and the largest error of a posterior
mean in posterior standard deviations. Known answers:

* ``funnel``: Neal's funnel in 10-d, v ~ N(0, 3^2), x_i | v ~ N(0, e^v); log Z = 0, means 0,
  sd(v) = 3, sd(x_i) = e^{9/4}.
* ``banana``: x1 ~ N(0, 2^2), x2 | x1 ~ N(x1^2/4, 0.5^2); log Z = 0, means (0, 1), sds (2, 1.5).
* ``eight_schools_centered`` (posteriordb): log Z by quadrature (theta integrated out in
  closed form, (mu, tau) on a 2-d grid); means and sds from the posteriordb reference draws.

Then the refit study (issue 15, item 3): ``adaptive_importance`` from each fitted guide for
``--refit-rounds`` rounds of weighted maximum likelihood, once on the proposal's own weighted
draws and once on the weighted particles of ``annealed_importance`` (as flow annealed
importance sampling bootstrap does, with the forward KL); the plain importance-sampling k-hat
of the refitted flow after each round.

Usage::

    python benchmarks/annealed.py                 # -> results/annealed.json
    python benchmarks/annealed.py --quick         # a smoke run
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pyro
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, machine_info, print_table, save_json, set_threads  # noqa: E402
from posteriordb_models import MODELS  # noqa: E402
from vi_targets import banana, funnel  # noqa: E402

from pyroflows.data.posteriordb import load_posterior  # noqa: E402
from pyroflows.infer import (  # noqa: E402
    AutoFlow,
    adaptive_importance,
    annealed_importance,
    fit_guide,
    importance,
)

EIGHT = "eight_schools-eight_schools_centered"
#: The SMC runs: the defaults, and a start twice as wide as the flow in its base space.
SMC = {"SMC": {}, "SMC (widen 2)": {"widen": 2.0}}


def eight_schools_log_z(data: dict, grid: int = 2000) -> float:
    """log p(y) of eight schools: y_j ~ N(mu, tau^2 + sigma_j^2) after integrating theta out;
    mu ~ N(0, 5^2) on [-40, 40], tau = 5 tan(phi) with phi uniform on (0, pi/2) (the
    half-Cauchy's quantile map), trapezoid rule in float64."""
    y = torch.tensor(data["y"], dtype=torch.float64)
    sigma = torch.tensor(data["sigma"], dtype=torch.float64)
    mu = torch.linspace(-40, 40, grid, dtype=torch.float64)
    phi = torch.linspace(0, math.pi / 2, grid + 1, dtype=torch.float64)[:-1] + math.pi / 4 / grid
    tau = 5 * torch.tan(phi)
    scale = (tau[:, None] ** 2 + sigma**2).sqrt()  # (T, J)
    log_lik = torch.distributions.Normal(mu[None, :, None], scale[:, None, :]).log_prob(y)
    log_f = log_lik.sum(-1) + torch.distributions.Normal(0, 5).log_prob(mu)[None]  # (T, M)
    dmu, dphi = float(mu[1] - mu[0]), math.pi / 2 / grid
    # phi's density is 2/pi; midpoints in phi, trapezoid in mu
    log_w_mu = torch.full((grid,), math.log(dmu), dtype=torch.float64)
    log_w_mu[[0, -1]] += math.log(0.5)
    total = torch.logsumexp(log_f + log_w_mu[None], dim=(0, 1))
    return float(total + math.log(2 / math.pi * dphi))


def targets(root: str | None) -> dict:
    """name -> (model, log Z, reference means, reference sds, columns of a sample dict)."""
    e = math.exp(9 / 4)
    out = {
        "funnel": (
            funnel(10),
            0.0,
            np.zeros(10),
            np.array([3.0] + [e] * 9),
            lambda s: np.concatenate([s["v"][:, None], s["x"]], 1),
        ),
        "banana": (
            banana(),
            0.0,
            np.array([0.0, 1.0]),
            np.array([2.0, 1.5]),
            lambda s: np.stack([s["x1"], s["x2"]], 1),
        ),
    }
    post = load_posterior(EIGHT, root)
    reference = load_posterior(post.info["posterior"]["reference_posterior_name"], root)
    model, columns = MODELS[EIGHT](post.data, torch.float64)
    mean, sd = reference.reference_mean_sd()
    to_np = lambda s: columns({k: torch.as_tensor(v) for k, v in s.items()})  # noqa: E731
    out["eight_schools_centered"] = (model, eight_schools_log_z(post.data), mean, sd, to_np)
    return out


def max_mean_error(result, columns, mean: np.ndarray, sd: np.ndarray) -> float:  # noqa: ANN001
    values = columns({k: v.double().numpy() for k, v in result.site_samples.items()})
    w = result.pareto_weights.double().numpy()
    estimate = (w[:, None] * values).sum(0)
    return float(np.max(np.abs(estimate - mean) / sd))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--targets", nargs="+", default=["funnel", "banana", "eight_schools_centered"]
    )
    parser.add_argument("--particles", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--fit-time", type=float, default=120.0, help="fit_guide's max_time")
    parser.add_argument("--root", default=None, help="posteriordb folder")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--refit-rounds", type=int, default=3, help="rounds of the refit study (0: none)"
    )
    parser.add_argument("--quick", action="store_true", help="500 particles, 2 seeds, 20 s fits")
    parser.add_argument("--out", default=str(RESULTS_DIR / "annealed.json"))
    args = parser.parse_args()
    if args.quick:
        args.particles, args.seeds, args.fit_time = 500, 2, 20.0
    set_threads(args.threads)
    warnings.simplefilter("ignore")  # k-hat warnings are what this measures
    all_targets = targets(args.root)
    rows, runs, fitted = [], [], {}
    for name in args.targets:
        model, log_z, mean, sd, columns = all_targets[name]
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoFlow(model)
        started = time.perf_counter()
        fit = fit_guide(model, guide, max_time=args.fit_time, check_draws=0, progress=False)
        fit_seconds = time.perf_counter() - started
        guide.eval()
        fitted[name] = (guide, copy.deepcopy(guide.state_dict()))
        for seed in range(args.seeds):
            for smc_name, options in SMC.items():
                started = time.perf_counter()
                smc = annealed_importance(
                    model, guide, args.particles, seed=seed, progress=False, **options
                )
                smc_seconds = time.perf_counter() - started
                grads = smc.info["gradient_evaluations"]
                started = time.perf_counter()
                plain = importance(model, guide, args.particles * grads, seed=seed)
                plain_seconds = time.perf_counter() - started
                for method, r, seconds in (
                    (f"IS (budget of {smc_name})", plain, plain_seconds),
                    (smc_name, smc, smc_seconds),
                ):
                    runs.append(
                        {
                            "target": name,
                            "method": method,
                            "seed": seed,
                            "log_z_error": r.log_evidence - log_z,
                            "log_z_se": r.log_evidence_se,
                            "ess": r.ess,
                            "khat": r.khat,
                            "max_mean_error_sd": max_mean_error(r, columns, mean, sd),
                            "draws": r.num_samples,
                            "target_gradients": args.particles * grads if r is smc else 0,
                            "seconds": seconds,
                        }
                    )
        for method in dict.fromkeys(r["method"] for r in runs if r["target"] == name):
            mine = [r for r in runs if r["target"] == name and r["method"] == method]
            rows.append(
                [
                    name,
                    method,
                    np.mean([r["draws"] for r in mine]),
                    np.mean([r["target_gradients"] / r["draws"] for r in mine]),
                    np.mean([abs(r["log_z_error"]) for r in mine]),
                    np.mean([r["log_z_se"] for r in mine]),
                    np.mean([r["ess"] for r in mine]),
                    np.mean([r["khat"] for r in mine]),
                    np.mean([r["max_mean_error_sd"] for r in mine]),
                    np.mean([r["seconds"] for r in mine]),
                ]
            )
        print(f"{name}: fit {fit_seconds:.0f} s, {fit.steps} steps ({fit.stop_reason})", flush=True)
    header = [
        "target",
        "method",
        "draws",
        "gradients/draw",
        "|log Z err|",
        "reported se",
        "ESS",
        "k-hat",
        "max mean err (sd)",
        "seconds",
    ]
    table = print_table(header, rows)
    refits, refit_table = refit_study(args, all_targets, fitted) if args.refit_rounds else ([], "")
    save_json(
        args.out,
        {
            "machine": machine_info(),
            "particles": args.particles,
            "seeds": args.seeds,
            "runs": runs,
            "table": table,
            "refits": refits,
            "refit_table": refit_table,
        },
    )


def refit_study(args: argparse.Namespace, all_targets: dict, fitted: dict) -> tuple[list, str]:
    """``adaptive_importance`` from the fitted guide: refits on its own weighted draws next to
    refits on SMC particles (FAB-style, forward KL); the plain-IS k-hat after each round."""
    rows, out = [], []
    for name, (guide, state) in fitted.items():
        model, log_z, *_ = all_targets[name]
        for draws in ("importance", "annealed"):
            guide.load_state_dict(state)
            started = time.perf_counter()
            result = adaptive_importance(
                model,
                guide,
                args.particles,
                rounds=args.refit_rounds,
                refit_draws=draws,
                fit_options={"epochs": 50, "lr": 1e-3, "batch_size": 256},
            )
            seconds = time.perf_counter() - started
            khats = [h["khat"] for h in result.history]
            out.append({"target": name, "refit_draws": draws, "history": result.history})
            rows.append(
                [
                    name,
                    draws,
                    " -> ".join(f"{k:.2f}" for k in khats),
                    result.result.khat,
                    result.result.log_evidence - log_z,
                    result.result.log_evidence_se,
                    seconds,
                ]
            )
        guide.load_state_dict(state)
    header = ["target", "refit on", "IS k-hat by round", "best k-hat", "log Z err", "se", "seconds"]
    return out, print_table(header, rows)


if __name__ == "__main__":
    main()
