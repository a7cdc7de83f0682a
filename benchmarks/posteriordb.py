"""Accuracy of AutoFlow (defaults) against posteriordb reference posteriors, next to Pyro's
AutoMultivariateNormal.

For every posterior in ``../shared/data/posteriordb`` (or ``--root``) with reference draws and a
model in ``posteriordb_models.py``: fit each guide with ``SVI(model, guide,
ClippedAdam(lr=5e-3, lrd=0.9995), Trace_ELBO())`` for 4000 steps (float64 models), draw 4000
samples, and report per parameter the error of the mean in reference standard deviations,
the ratio of standard deviations (guide / reference), and the PSIS k-hat of the importance
weights p/q. "within target" (issue 13): every |mean error| <= 0.1 and every sd ratio in
[0.9, 1.1]; the first targets were eight_schools_noncentered, kidiq, arK and sblrc
("targeted"). "with PSIS" judges the same draws weighted by their Pareto-smoothed importance
weights where k-hat is below the threshold for that many draws (the estimates a user of
``fit_guide`` gets from ``result.check``), the raw draws elsewhere; "log scale" names the
parameters without a variance (the Pareto k-hat of the reference's squared deviations at
least 0.7), scored as logarithms (``posteriordb_metrics.py``).

``--fit fit_guide`` fits every guide with :func:`pyroflows.infer.fit_guide` and its defaults
instead (pilot runs choose the step size among 0.1, 0.03, 0.01, 0.003; the stopping rule ends
the run; the best window's averaged parameters are kept), the one default configuration of
issue 13; the table then also counts gradient evaluations (pilots included, one particle per
step) and the wall time of the whole fit.

Usage::

    python benchmarks/posteriordb.py                      # -> results/posteriordb.json
    python benchmarks/posteriordb.py --fit fit_guide --out results/posteriordb_fit_guide.json
    python benchmarks/posteriordb.py --posteriors kidiq-kidscore_momiq --steps 1000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal
from pyro.optim import ClippedAdam

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, machine_info, print_table, save_json, set_threads  # noqa: E402
from posteriordb_metrics import (  # noqa: E402
    mean_error_and_sd_ratio,
    psis_scored,
    scoring_scale,
    within_target,
)
from posteriordb_models import MODELS  # noqa: E402

from pyroflows.data.posteriordb import list_posteriors, load_posterior  # noqa: E402
from pyroflows.infer import AutoFlow, fit_guide, guide_log_weights, khat_threshold, psis  # noqa: E402
from pyroflows.infer.model_density import safe_init  # noqa: E402
from pyroflows.infer.svi import MASS_COVERING_PARTICLES  # noqa: E402

#: fit_guide's pilot steps per candidate step size (its default), counted as gradients.
PILOT_STEPS = 100

TARGETED = [
    "eight_schools-eight_schools_noncentered",
    "kidiq-kidscore_momiq",
    "arK-arK",
    "sblrc-blr",
]
GUIDES = {
    "AutoFlow": lambda model: AutoFlow(model),
    # Pyro's init_to_median cannot sample an ImproperUniform: fall back as AutoFlow does.
    "AutoMultivariateNormal": lambda model: AutoMultivariateNormal(
        model, init_loc_fn=safe_init(pyro.infer.autoguide.init_to_median)
    ),
}


def run_one(  # noqa: PLR0913
    name: str,
    post,
    guide_name: str,
    steps: int,
    samples: int,
    seed: int,
    fit: str = "svi",  # noqa: ANN001
    max_time: float | None = None,
) -> dict:
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model, columns = MODELS[name](post.data, torch.float64)
    start = time.perf_counter()
    guide = GUIDES[guide_name](model)
    guide()  # build (Pyro's guides build lazily)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    failed, mass_covering = None, None
    if fit == "fit_guide":
        try:
            result = fit_guide(
                model, guide, pilot_steps=PILOT_STEPS, progress=False, max_time=max_time
            )
            steps = result.steps
            pilots = len(result.pilot) * PILOT_STEPS
            stop = result.stop_reason
            stage = result.mass_covering
            if stage is not None:  # its steps take MASS_COVERING_PARTICLES gradients each
                stage_grads = (
                    stage.steps + len(stage.pilot) * PILOT_STEPS
                ) * MASS_COVERING_PARTICLES
                mass_covering = {
                    "kept": result.mass_covering_kept,
                    "gradient_evaluations": stage_grads,
                    "steps": stage.steps,
                    "lr": stage.lr,
                    "stop_reason": stage.stop_reason,
                    "khat": stage.khat,
                    "first_khat": result.first_check.khat if result.first_check else None,
                    "log_evidence": stage.check.log_evidence if stage.check else None,
                    "first_log_evidence": (
                        result.first_check.log_evidence if result.first_check else None
                    ),
                }
                steps += stage_grads
        except ValueError as error:  # e.g. every pilot diverged
            failed, steps, pilots, stop = str(error)[:200], 0, 0, "failed"
    else:
        svi = SVI(model, guide, ClippedAdam({"lr": 5e-3, "lrd": 0.9995}), Trace_ELBO())
        pilots, stop = 0, "max_steps"
        for step in range(steps):
            loss = svi.step()
            if not np.isfinite(loss):
                failed = f"non-finite loss at step {step}"
                break
    seconds = time.perf_counter() - start
    log_scale = scoring_scale(post.draws)
    nan = np.full(len(post.param_names), np.nan)
    mean_err = sd_ratio = psis_mean_err = psis_sd_ratio = nan
    khat = float("nan")
    if failed is None:
        draws, logw = guide_log_weights(model, guide, samples)
        x = columns(draws)
        mean_err, sd_ratio = mean_error_and_sd_ratio(x, post.draws, log_scale)
        try:
            smoothed, khat = psis(logw.double())
        except ValueError:  # every weight zero: the model is NaN or -inf at every draw
            smoothed = None
        if smoothed is not None:
            psis_mean_err, psis_sd_ratio = mean_error_and_sd_ratio(
                x, post.draws, log_scale, smoothed.cpu().numpy()
            )
    trusted = psis_scored(khat, khat_threshold(samples))
    return {
        "posterior": name,
        "guide": guide_name,
        "seed": seed,
        "params": post.param_names,
        "mean_error_sd": mean_err.tolist(),
        "sd_ratio": sd_ratio.tolist(),
        "khat": khat,
        "max_abs_mean_error": float(np.max(np.abs(mean_err))),
        "sd_ratio_range": [float(np.min(sd_ratio)), float(np.max(sd_ratio))],
        "log_scale": [p for p, flag in zip(post.param_names, log_scale) if flag],
        # The same draws weighted by their smoothed importance weights, trusted (used by the
        # "psis" verdict) only when k-hat is below the threshold for `samples` draws.
        "psis_trusted": trusted,
        "psis_mean_error_sd": psis_mean_err.tolist(),
        "psis_sd_ratio": psis_sd_ratio.tolist(),
        "psis_max_abs_mean_error": float(np.max(np.abs(psis_mean_err))),
        "psis_sd_ratio_range": [float(np.min(psis_sd_ratio)), float(np.max(psis_sd_ratio))],
        "seconds": seconds,
        "setup_s": setup,
        "ms_per_step": 1000 * seconds / max(steps + pilots, 1),
        "gradient_evaluations": steps + pilots,
        "stop_reason": stop,
        "failed": failed,
        "init_choice": getattr(guide, "init_choice", None),
        # fit_guide's mass-covering stage (IWAE), when the first fit's check flagged it.
        "mass_covering": mass_covering,
    }


def _flow_option(text: str) -> tuple[str, object]:
    """``"name=value"`` -> ``(name, value)``, the value as a number where it reads as one."""
    name, sep, value = text.partition("=")
    if not sep:
        raise SystemExit(f"--flow-option {text!r}: expected NAME=VALUE")
    for kind in (int, float):
        try:
            return name, kind(value)
        except ValueError:
            pass
    return name, value


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root", default=None, help="posteriordb folder (default ../shared/data/posteriordb)"
    )
    parser.add_argument("--posteriors", nargs="+", default=None)
    parser.add_argument("--guides", nargs="+", default=list(GUIDES), choices=list(GUIDES))
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument(
        "--fit", default="svi", choices=["svi", "fit_guide"],
        help="svi: --steps steps of ClippedAdam(5e-3); fit_guide: pyroflows' one-call fit",
    )  # fmt: skip
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument(
        "--max-time", type=float, default=None,
        help="with --fit fit_guide: its max_time, seconds per fit (default: none)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--flow-option", action="append", default=[], metavar="NAME=VALUE",
        help="an AutoFlow flow option, e.g. tails=linear or bins=8 (repeatable; a trial, "
        "not the defaults)",
    )  # fmt: skip
    parser.add_argument("--out", default=str(RESULTS_DIR / "posteriordb.json"))
    args = parser.parse_args()
    set_threads(args.threads)
    if args.flow_option:
        options = dict(_flow_option(text) for text in args.flow_option)
        GUIDES["AutoFlow"] = lambda model: AutoFlow(model, **options)
    try:
        available = list_posteriors(args.root)
    except FileNotFoundError as error:
        print(f"skipped: {error}")
        return
    names = args.posteriors or [n for n in available if n in MODELS]
    info = machine_info()
    runs, rows, detail = [], [], []
    for name in names:
        post = load_posterior(name, args.root)
        reference = post.info.get("posterior", {}).get("reference_posterior_name")
        if post.draws is None and reference and reference != name:
            # e.g. the centred eight schools: same posterior as the non-centred one.
            ref = load_posterior(reference, args.root)
            post.draws, post.param_names = ref.draws, ref.param_names
        if post.draws is None:
            print(f"{name}: no reference draws, skipped")
            continue
        for guide in args.guides:
            r = run_one(
                name, post, guide, args.steps, args.samples, args.seed, args.fit, args.max_time
            )
            runs.append(r)
            target = "yes" if name in TARGETED else "-"
            rows.append(
                [
                    name,
                    guide,
                    r["max_abs_mean_error"],
                    r["sd_ratio_range"][0],
                    r["sd_ratio_range"][1],
                    r["khat"],
                    r["gradient_evaluations"],
                    r["seconds"],
                    "PASS" if within_target(r) else "fail",
                    "PASS" if within_target(r, weighted=True) else "fail",
                    ",".join(r["log_scale"]) or "-",
                    target,
                ]
            )
            print(
                f"{name} {guide}: max|mean err| {r['max_abs_mean_error']:.3f} sd ratio "
                f"[{r['sd_ratio_range'][0]:.3f}, {r['sd_ratio_range'][1]:.3f}] k-hat {r['khat']:.2f} "
                f"({r['seconds']:.0f} s, init {r['init_choice']}); PSIS-weighted "
                f"{'(trusted)' if r['psis_trusted'] else '(not trusted)'}: max|mean err| "
                f"{r['psis_max_abs_mean_error']:.3f} sd ratio [{r['psis_sd_ratio_range'][0]:.3f}, "
                f"{r['psis_sd_ratio_range'][1]:.3f}]; mass-covering stage: "
                f"{r['mass_covering']}",
                flush=True,
            )
            for p, e, q, we, wq in zip(
                r["params"], r["mean_error_sd"], r["sd_ratio"],
                r["psis_mean_error_sd"], r["psis_sd_ratio"],
            ):  # fmt: skip
                detail.append([name.split("-")[0], guide, p, e, q, we, wq])
    print()
    table = print_table(
        [
            "posterior",
            "guide",
            "max |mean err| (sd)",
            "min sd ratio",
            "max sd ratio",
            "k-hat",
            "gradient evals",
            "seconds",
            "within target",
            "with PSIS",
            "log scale",
            "targeted",
        ],
        rows,
    )
    print()
    detail_table = print_table(
        [
            "posterior",
            "guide",
            "parameter",
            "mean err (sd)",
            "sd ratio",
            "PSIS mean err",
            "PSIS sd ratio",
        ],
        detail,
    )
    save_json(
        args.out,
        {
            "benchmark": "posteriordb",
            "machine": info,
            "config": vars(args),
            "runs": runs,
            "table": table,
            "detail": detail_table,
        },
    )


if __name__ == "__main__":
    main()
