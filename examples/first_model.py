"""From your Pyro model to a flow posterior: the walk-through of docs/first_model.rst as a script.

Run it with::

    .venv/bin/python examples/first_model.py
    .venv/bin/python examples/first_model.py --steps 100 --draws 200 --arviz-draws 100   # quick

The model is a Bayesian logistic regression written the usual way (20 coefficients and an
intercept, ``X @ w`` inside a plate over 500 rows of synthetic data drawn from known
coefficients). The script

1. builds ``AutoFlow(model)``, a normalizing-flow guide over all latent sites;
2. fits it by SVI (``Trace_ELBO``);
3. checks the fit by importance sampling: PSIS k-hat below 0.7 (a little lower for fewer than
   about 2,000 draws: the printed threshold) means the guide is a reliable proposal; the ESS
   says how many independent draws the weighted draws are worth; ``log_evidence`` estimates
   log p(y);
4. summarises the posterior with ArviZ (``to_inference_data`` and ``az.summary``; the draws
   form one chain, so ArviZ logs that it wants two and leaves r_hat empty);
5. compares the posterior means with the true coefficients.

Each stage prints its result and its wall time in seconds.
"""

from __future__ import annotations

import argparse
import time

import arviz as az
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam

from pyroflows.infer import AutoFlow, importance, to_inference_data


def make_data(n: int = 500, p: int = 20) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Covariates X (n, p), labels y (n,) and the true coefficients (w, then b) (p + 1,)."""
    X = torch.randn(n, p)
    w_true = torch.randn(p)
    b_true = torch.tensor(-0.5)
    y = torch.bernoulli(torch.sigmoid(X @ w_true + b_true))
    return X, y, torch.cat([w_true, b_true[None]])


def model(X: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # noqa: N803
    """Bayesian logistic regression, written as usual: no particle dimension in mind."""
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([X.shape[1]]).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 5.0))
    with pyro.plate("rows", X.shape[0]):
        return pyro.sample("y", dist.Bernoulli(logits=X @ w + b), obs=y)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500, help="SVI steps (default: %(default)s)")
    parser.add_argument(
        "--draws",
        type=int,
        default=10_000,
        help="importance-sampling draws for the check (default: %(default)s)",
    )
    parser.add_argument(
        "--arviz-draws",
        type=int,
        default=1000,
        help="posterior draws for the ArviZ summary (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default: %(default)s, fastest for this small model)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pyro.set_rng_seed(args.seed)
    total = time.perf_counter()

    X, y, truth = make_data()
    print(f"data: {X.shape[0]} rows, {X.shape[1]} covariates, {int(y.sum())} positive labels")

    # 1. The guide. model_args builds it now, so its time is measured apart; AutoFlow(model)
    # alone builds it at the first SVI step.
    start = time.perf_counter()
    pyro.clear_param_store()
    guide = AutoFlow(model, model_args=(X, y))
    print(
        f"\n[1] AutoFlow over {guide.latent_dim} latent dimensions, started from "
        f"{guide.init_choice!r}: {time.perf_counter() - start:.1f} s"
    )

    # 2. SVI.
    start = time.perf_counter()
    svi = SVI(model, guide, Adam({"lr": 5e-3}), Trace_ELBO())
    losses = []
    for step in range(args.steps):
        losses.append(svi.step(X, y))
        if step % max(1, args.steps // 5) == 0:
            print(f"    step {step:5d}  loss {losses[-1]:.2f}")
    last = losses[-min(50, len(losses)) :]
    print(
        f"[2] SVI, {args.steps} steps, mean loss of the last {len(last)} "
        f"{sum(last) / len(last):.2f}: {time.perf_counter() - start:.1f} s"
    )

    # 3. Importance sampling: is the guide a reliable proposal?
    start = time.perf_counter()
    result = importance(model, guide, args.draws, model_args=(X, y), seed=args.seed)
    elapsed = time.perf_counter() - start
    print(f"\n[3] importance, {args.draws} draws: {elapsed:.1f} s\n    {result}")
    print(
        f"    k-hat {result.khat:.3f} (reliable below {result.khat_threshold:.3f}): "
        f"{'reliable' if result.reliable else 'NOT reliable'}; "
        f"ESS {result.ess:.0f} of {result.num_samples}; "
        f"log p(y) = {result.log_evidence:.3f} +- {result.log_evidence_se:.3f}"
    )
    if not result.reliable:
        print(
            "    k-hat is high: train longer (--steps), use a larger flow "
            "(AutoFlow(model, transforms=4, hidden=(64, 64))) or refit with "
            "pyroflows.infer.adaptive_importance"
        )

    # 4. ArviZ.
    start = time.perf_counter()
    idata = to_inference_data(guide, model, args.arviz_draws, X, y)
    summary = az.summary(idata)
    elapsed = time.perf_counter() - start
    print(f"\n[4] to_inference_data + az.summary, {args.arviz_draws} draws: {elapsed:.1f} s")
    print(summary[["mean", "sd", "hdi_3%", "hdi_97%", "ess_bulk"]].to_string())

    # 5. Against the truth.
    start = time.perf_counter()
    mean = torch.cat(
        [
            torch.as_tensor(idata.posterior[name].mean(("chain", "draw")).values).reshape(-1)
            for name in ("w", "b")
        ]
    ).to(truth.dtype)
    rows = summary.loc[[f"w[{i}]" for i in range(X.shape[1])] + ["b"]]  # in truth's order
    inside = int(((rows["hdi_3%"] <= truth.numpy()) & (truth.numpy() <= rows["hdi_97%"])).sum())
    error = (mean - truth).abs()
    weighted, mcse = result.expectation(lambda s: s["w"])
    print(
        f"\n[5] posterior mean against the true coefficients: {time.perf_counter() - start:.1f} s"
    )
    print("    true w          ", [round(v, 2) for v in truth[:-1].tolist()])
    print("    posterior mean w", [round(v, 2) for v in mean[:-1].tolist()])
    print(
        "    importance-weighted mean w",
        [round(v, 2) for v in weighted.tolist()],
        f"(MCSE at most {float(mcse.max()):.3f})",
    )
    print(
        f"    largest |mean - truth| {float(error.max()):.3f}, mean {float(error.mean()):.3f}; "
        f"{inside} of {len(truth)} true values in their 94% interval"
    )
    print(f"\ntotal: {time.perf_counter() - total:.1f} s")


if __name__ == "__main__":
    main()
