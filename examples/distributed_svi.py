"""Data-parallel SVI: a Bayesian logistic regression with a subsampled data plate, fitted by
``fit_guide`` with an ``AutoFlow`` guide on one process or several.

Run it with::

    .venv/bin/python examples/distributed_svi.py                        # one process
    OMP_NUM_THREADS=1 .venv/bin/torchrun --nproc_per_node 2 examples/distributed_svi.py

Every process builds the same data set (the full one) and calls ``fit_guide`` exactly as a
single process would. Inside the process group ``fit_guide`` builds the guide on every rank
before the optimizer exists and copies rank 0's parameters to the others, reseeds each rank so
that its ``pyro.plate(..., subsample_size=...)`` draws its own rows, and averages the ELBO
gradients over the ranks at every step: two processes see twice the subsample per step, and
every rank ends with the same guide. Rank 0 prints the posterior summary next to the true
coefficients.
"""

from __future__ import annotations

import argparse
import os
import time

import pyro
import pyro.distributions as dist
import torch
import torch.distributed as torch_dist

from pyroflows.infer import AutoFlow, fit_guide

TRUE_WEIGHTS = torch.tensor([1.5, -2.0, 0.5], dtype=torch.float64)
TRUE_BIAS = -0.5


def make_data(rows: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The full data set (the same on every process: a fixed generator)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, len(TRUE_WEIGHTS), generator=g, dtype=torch.float64)
    p = torch.sigmoid(x @ TRUE_WEIGHTS + TRUE_BIAS)
    return x, torch.bernoulli(p, generator=g)


def model(x: torch.Tensor, y: torch.Tensor, subsample_size: int | None = None) -> None:
    zero = torch.zeros((), dtype=x.dtype)
    weights = pyro.sample("weights", dist.Normal(zero, 2.0).expand([x.shape[1]]).to_event(1))
    bias = pyro.sample("bias", dist.Normal(zero, 2.0))
    with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
        pyro.sample("y", dist.Bernoulli(logits=x[idx] @ weights + bias), obs=y[idx])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--subsample", type=int, default=100, help="rows per process per step")
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()

    if "RANK" in os.environ:  # started by torchrun
        torch_dist.init_process_group("gloo")
    rank = torch_dist.get_rank() if torch_dist.is_initialized() else 0
    world = torch_dist.get_world_size() if torch_dist.is_initialized() else 1
    torch.set_num_threads(1)
    pyro.set_rng_seed(0)  # the same everywhere: fit_guide decorrelates the ranks itself

    x, y = make_data(args.rows)
    guide = AutoFlow(model, init="loc", transforms=1, hidden=(16,))
    start = time.perf_counter()
    result = fit_guide(
        model,
        guide,
        x,
        y,
        subsample_size=args.subsample,
        lr=0.02,
        max_steps=args.steps,
        window=100,
        check_draws=0,  # a subsampled model's log-density is noisy: no importance check
        progress=False,
    )
    seconds = time.perf_counter() - start
    if rank == 0:
        print(
            f"{world} process(es), {args.subsample} rows each per step: {result.steps} steps "
            f"({result.stop_reason}) in {seconds:.1f} s, best window at step {result.best_step}"
        )
        draws = guide.sample_posterior(4000)
        truth = {"weights": TRUE_WEIGHTS, "bias": torch.tensor([TRUE_BIAS])}
        print(f"{'site':<12} {'mean':>8} {'sd':>8} {'true':>8}")
        for name, value in draws.items():
            value = value.reshape(value.shape[0], -1)
            for j in range(value.shape[1]):
                label = f"{name}[{j}]" if value.shape[1] > 1 else name
                mean, sd = float(value[:, j].mean()), float(value[:, j].std())
                print(f"{label:<12} {mean:8.3f} {sd:8.3f} {float(truth[name][j]):8.3f}")
    if torch_dist.is_initialized():
        torch_dist.destroy_process_group()


if __name__ == "__main__":
    main()
