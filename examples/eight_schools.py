"""Eight schools with AutoFlow: a hierarchical posterior, checked against the reference draws.

Run it with::

    .venv/bin/python examples/eight_schools.py            # about a minute on two CPU cores
    .venv/bin/python examples/eight_schools.py --steps 500 --root /path/to/posteriordb

The non-centred model (Rubin 1981; posteriordb ``eight_schools_noncentered``):
``mu ~ N(0, 5)``, ``tau ~ HalfCauchy(5)``, ``theta_j = mu + tau * eta_j`` with
``eta_j ~ N(0, 1)``, ``y_j ~ N(theta_j, sigma_j)``. ``AutoFlow`` with its defaults (a
sampling-fast neural spline flow started at a Laplace approximation) is trained with
``ClippedAdam``; the script then prints the posterior mean and standard deviation of every
parameter next to the long-MCMC reference draws when they are available (``../shared/data``),
the PSIS k-hat of the guide as an importance proposal, and an ArviZ summary.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import ClippedAdam

from pyroflows.infer import AutoFlow, to_inference_data

Y = torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0], dtype=torch.float64)
SIGMA = torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0], dtype=torch.float64)


def model(y: torch.Tensor = Y, sigma: torch.Tensor = SIGMA) -> None:
    mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=y.dtype), 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(torch.tensor(5.0, dtype=y.dtype)))
    with pyro.plate("schools", len(y)):
        eta = pyro.sample("eta", dist.Normal(torch.zeros((), dtype=y.dtype), 1.0))
        theta = pyro.deterministic("theta", mu + tau * eta)
        pyro.sample("y", dist.Normal(theta, sigma), obs=y)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument(
        "--root", default=None, help="posteriordb folder (default ../shared/data/posteriordb)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    pyro.set_rng_seed(args.seed)

    guide = AutoFlow(model)
    print(f"AutoFlow over {guide.latent_dim} unconstrained dims, start: {guide.init_choice}")
    svi = SVI(model, guide, ClippedAdam({"lr": 5e-3, "lrd": 0.9995}), Trace_ELBO())
    for step in range(1, args.steps + 1):
        loss = svi.step()
        if step % 500 == 0:
            print(f"step {step:5d}  -ELBO {loss:8.3f}")

    samples = guide.sample_posterior(args.samples)
    theta = samples["mu"][:, None] + samples["tau"][:, None] * samples["eta"]
    ours = torch.cat([theta, samples["mu"][:, None], samples["tau"][:, None]], dim=1).numpy()
    names = [f"theta[{j + 1}]" for j in range(8)] + ["mu", "tau"]

    reference = None
    try:
        from pyroflows.data.posteriordb import load_posterior

        reference = load_posterior("eight_schools-eight_schools_noncentered", args.root)
    except FileNotFoundError as error:
        print(f"(no reference draws: {error})")
    print(
        f"\n{'param':10s} {'mean':>8s} {'sd':>8s}"
        + ("   ref mean   ref sd   err/sd  sd ratio" if reference else "")
    )
    for i, name in enumerate(names):
        line = f"{name:10s} {ours[:, i].mean():8.3f} {ours[:, i].std():8.3f}"
        if reference is not None:
            m, s = reference.reference_mean_sd()
            j = reference.param_names.index(name)
            line += (
                f"   {m[j]:8.3f} {s[j]:8.3f} {(ours[:, i].mean() - m[j]) / s[j]:8.3f}"
                f" {ours[:, i].std() / s[j]:8.3f}"
            )
        print(line)

    idata = to_inference_data(guide, model, args.samples)
    print(
        f"\nPSIS k-hat of the guide as a proposal: {idata.attrs['psis_khat']:.2f} (< 0.7 is reliable)"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz as az

        print(az.summary(idata, var_names=["mu", "tau"], kind="stats"))
    assert np.isfinite(ours).all()


if __name__ == "__main__":
    main()
