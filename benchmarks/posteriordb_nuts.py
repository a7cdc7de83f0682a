"""Check the Pyro models of ``posteriordb_models.py`` against the reference draws with NUTS.

For each posterior (``--posteriors``, default: all with a model), Pyro's NUTS (float64, one
chain, ``--warmup`` and ``--draws`` iterations, target acceptance 0.8) samples the model; per
reference parameter the table shows the largest |mean error| in reference standard deviations,
the sd ratios' range (NUTS / reference), the largest quantile error (for q = 0.05, 0.25, 0.5,
0.75, 0.95, the reference's CDF at NUTS's q-quantile minus q: a probability, which heavy tails
cannot inflate as they inflate a mean or a standard deviation), the effective sample size's
minimum, the number of gradient evaluations and the wall time. A model agrees with its
reference when every quantile error is below 0.1 (3 Monte Carlo standard errors of a median
from 200 effective draws); the script exits non-zero otherwise. Means and sds are reported,
not judged: a Cauchy-tailed parameter's sample sd can double from one draw (parameters without a
variance are compared as logarithms, as in ``posteriordb.py``).

Usage::

    python benchmarks/posteriordb_nuts.py                       # -> results/posteriordb_nuts.json
    python benchmarks/posteriordb_nuts.py --posteriors earnings-earn_height --warmup 300
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro.infer import MCMC, NUTS

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, machine_info, print_table, save_json, set_threads  # noqa: E402
from posteriordb_metrics import mean_error_and_sd_ratio, scoring_scale  # noqa: E402
from posteriordb_models import MODELS  # noqa: E402

from pyroflows.data.posteriordb import list_posteriors, load_posterior  # noqa: E402
from pyroflows.infer.model_density import safe_init  # noqa: E402

QUANTILES, QUANTILE_TOL = (0.05, 0.25, 0.5, 0.75, 0.95), 0.1


def _counted(model):  # noqa: ANN001, ANN202
    """The model, counting its calls (NUTS runs it once per gradient evaluation)."""
    calls = [0]

    def counted() -> None:
        calls[0] += 1
        model()

    return counted, calls


def check(name: str, warmup: int, draws: int, seed: int) -> dict:
    """NUTS on posterior ``name``; its summary against the reference draws."""
    import arviz as az

    posterior = load_posterior(name)
    reference = posterior.info.get("posterior", {}).get("reference_posterior_name")
    if posterior.draws is None and reference and reference != name:
        # The centred eight schools: the same posterior as the non-centred one's draws.
        other = load_posterior(reference)
        posterior.draws, posterior.param_names = other.draws, other.param_names
    model, columns = MODELS[name](posterior.data, torch.float64)
    model, calls = _counted(model)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    init = safe_init(pyro.infer.autoguide.init_to_median)
    # max_plate_nesting given: guessing it would sample the model plainly (no ImproperUniform).
    kernel = NUTS(model, target_accept_prob=0.8, init_strategy=init, max_plate_nesting=2)
    mcmc = MCMC(kernel, num_samples=draws, warmup_steps=warmup, disable_progbar=True)
    start = time.perf_counter()
    # Pyro's validation raises at a proposal where the model gives NaN (an ODE solve that gives
    # up at a wild warm-up point), and NUTS does not catch it: off, the NaN is a divergence,
    # rejected as Stan rejects a failed solve.
    with pyro.validation_enabled(False):
        mcmc.run()
    seconds = time.perf_counter() - start
    got = columns({k: v.detach() for k, v in mcmc.get_samples().items()})
    log_scale = scoring_scale(posterior.draws)  # as the guides are scored
    mean_err, sd_ratio = mean_error_and_sd_ratio(got, posterior.draws, log_scale)
    reference = posterior.flat_draws
    quantiles = np.quantile(got, QUANTILES, axis=0)  # (Q, P)
    below = (reference[None, :, :] <= quantiles[:, None, :]).mean(1)  # reference CDF, (Q, P)
    quantile_err = np.abs(below - np.array(QUANTILES)[:, None]).max(0)
    ess = az.ess(az.convert_to_dataset(got[None]))
    return {
        "posterior": name,
        "max_abs_mean_error": float(np.abs(mean_err).max()),
        "sd_ratio_min": float(sd_ratio.min()),
        "sd_ratio_max": float(sd_ratio.max()),
        "max_quantile_error": float(quantile_err.max()),
        "ess_min": float(np.min(ess.to_array().values)),
        "gradient_evaluations": calls[0],
        "seconds": seconds,
        "agrees": bool(quantile_err.max() < QUANTILE_TOL),
        "param_names": list(posterior.param_names),
        "log_scale": [p for p, flag in zip(posterior.param_names, log_scale) if flag],
        "mean_error": mean_err.tolist(),
        "sd_ratio": sd_ratio.tolist(),
        "quantile_error": quantile_err.tolist(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posteriors", nargs="+", default=None)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "posteriordb_nuts.json")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    names = args.posteriors or [n for n in list_posteriors(with_draws=True) if n in MODELS]
    results, info = [], machine_info()
    for name in names:
        try:
            result = check(name, args.warmup, args.draws, args.seed)
        except Exception as error:  # noqa: BLE001 (a failed run is a row of the table)
            result = {"posterior": name, "failed": f"{type(error).__name__}: {error}"[:300]}
            print(f"{name}: failed: {result['failed']}", flush=True)
            results.append(result)
            continue
        results.append(result)
        print(f"{name}: max |mean err| {result['max_abs_mean_error']:.3f} sd, sd ratio "
              f"[{result['sd_ratio_min']:.3f}, {result['sd_ratio_max']:.3f}], quantile error "
              f"{result['max_quantile_error']:.3f}, {result['seconds']:.0f} s", flush=True)  # fmt: skip
        save_json(args.out, {"settings": vars(args), "machine": info, "results": results})
    done = [r for r in results if "failed" not in r]
    table = print_table(
        ["posterior", "max |mean err| (sd)", "sd ratio min", "sd ratio max", "max quantile err",
         "min ESS", "gradient evals", "seconds", "agrees"],
        [[r["posterior"], r["max_abs_mean_error"], r["sd_ratio_min"], r["sd_ratio_max"],
          r["max_quantile_error"], r["ess_min"], r["gradient_evaluations"], r["seconds"],
          r["agrees"]] for r in done],
    )  # fmt: skip
    save_json(args.out, {"settings": vars(args), "machine": info, "results": results,
                         "table": table})  # fmt: skip
    return 0 if all(r.get("agrees") for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
