"""Flow policy vs tanh-Gaussian policy in the same soft actor-critic, and a multimodal bandit.

1. **Pendulum-v1**: :class:`pyroflows.rl.sac.SAC` for ``--steps`` environment steps (default
   20,000) per seed, with the flow policy (``FlowPolicy(flow="nsf")``: a conditional neural
   spline flow, then the conditional affine layer and the tanh squash) and with the
   tanh-Gaussian policy (``FlowPolicy(flow=None)``: the same embedding, affine layer and
   squash without the flow), everything else equal (critics, hyper-parameters, seeds). The
   score is the mean undiscounted return of 10 evaluation episodes of the deterministic policy
   at the end of training. Acceptance: the flow policy's mean over seeds is better than -250
   (the SB3 zoo SAC reaches about -157 +- 89 at 20k steps).
2. **Bandit**: one step, one constant observation, actions in ``[-1, 1]``, reward with two
   equal, separated optima :math:`r(a) = e^{-(a-0.5)^2/0.02} + e^{-(a+0.5)^2/0.02}`, temperature 0.2. Each
   policy is trained by SAC's actor objective with the exact critic, :math:`\\min
   \\mathbb{E}_{a\\sim\\pi}[\\alpha\\log\\pi(a) - r(a)]`, whose optimum is
   :math:`\\pi^*\\propto e^{r/\\alpha}` (bimodal). Reported: the fraction of policy mass
   within 0.2 of each optimum, for 3 seeds
   (the flow uses 16 spline bins here).

Usage::

    nice python benchmarks/rl_pendulum.py                     # full: bandit + 3 seeds x 20k
    python benchmarks/rl_pendulum.py --quick                  # smoke: 1 seed x 1,500 steps
    python benchmarks/rl_pendulum.py --only bandit

Results: ``benchmarks/results/rl_pendulum.json`` (rewritten after every run, so a partial run
keeps what finished), ``rl_bandit.png`` and the learning curves under
``benchmarks/results/rl_pendulum/`` (CSV + PNG per run).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, count_parameters, machine_info, print_table, save_json, set_threads  # noqa: E402

from pyroflows.rl import FlowPolicy  # noqa: E402

OPTIMA = (-0.5, 0.5)
WIDTH = 0.1  # standard deviation of each reward bump
NEAR = 0.2  # "near an optimum": within this distance


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20_000, help="environment steps per run")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    parser.add_argument(
        "--hidden",
        type=int,
        default=128,
        help="width of the two hidden layers of embedding and critics",
    )
    parser.add_argument("--only", choices=["all", "bandit", "pendulum"], default="all")
    parser.add_argument("--quick", action="store_true", help="1 seed x 1,500 steps, short bandit")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "rl_pendulum.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.seeds = 1_500, 1
    return args


POLICIES: dict[str, dict[str, Any]] = {
    "flow (nsf)": {"flow": "nsf"},
    "tanh-Gaussian": {"flow": None},
}
ALPHA = 0.2  # bandit temperature
BANDIT_SEEDS = 3
BANDIT_OPTIONS: dict[str, dict[str, Any]] = {
    "flow (nsf)": {"flow_options": {"transforms": 2, "hidden": (64, 64), "bins": 16}},
    "tanh-Gaussian": {},
}


# -- the bandit -----------------------------------------------------------------------------


def reward(a: torch.Tensor) -> torch.Tensor:
    return sum(torch.exp(-0.5 * ((a[..., 0] - m) / WIDTH) ** 2) for m in OPTIMA)


def bandit(args: argparse.Namespace) -> dict[str, Any]:
    alpha, steps, batch = ALPHA, 300 if args.quick else 1500, 256
    obs = torch.zeros(1, 1)
    grid = torch.linspace(-1, 1, 2001)[1:-1].unsqueeze(-1)
    target = torch.exp(reward(grid) / alpha)
    target = target / torch.trapezoid(target, grid[:, 0])
    results: dict[str, Any] = {}
    densities, samples, rows = {}, {}, []
    for name, kwargs in POLICIES.items():
        per_seed = []
        for seed in range(BANDIT_SEEDS):
            torch.manual_seed(seed)
            policy = FlowPolicy(1, 1, -1.0, 1.0, hidden=(64, 64), **kwargs, **BANDIT_OPTIONS[name])
            optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
            start = time.perf_counter()
            for _ in range(steps):
                a, lp = policy(obs).rsample_and_log_prob(torch.Size([batch]))
                loss = (alpha * lp - reward(a)).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                d = policy(obs)
                x = d.sample(torch.Size([20_000]))[:, 0, 0]
                if seed == 0:
                    densities[name], samples[name] = d.log_prob(grid.unsqueeze(1))[:, 0].exp(), x
            near = [float(((x - m).abs() < NEAR).float().mean()) for m in OPTIMA]
            per_seed.append(
                {
                    "seed": seed,
                    "mass_near_minus": near[0],
                    "mass_near_plus": near[1],
                    "expected_reward": float(reward(x.unsqueeze(-1)).mean()),
                    "seconds": time.perf_counter() - start,
                }
            )
            rows.append([name, seed, near[0], near[1], min(near), per_seed[-1]["expected_reward"]])
        results[name] = per_seed
    target_near = [
        float(torch.trapezoid(torch.where((grid[:, 0] - m).abs() < NEAR, target, 0), grid[:, 0]))
        for m in OPTIMA
    ]
    results["target"] = {"mass_near_minus": target_near[0], "mass_near_plus": target_near[1]}
    rows.append(
        ["optimum exp(r/alpha)", "-", target_near[0], target_near[1], min(target_near), math.nan]
    )
    print(
        f"\nBandit: mass within {NEAR} of each optimum (a = {OPTIMA[0]}, {OPTIMA[1]}), "
        f"alpha = {alpha}, {steps} steps, {BANDIT_SEEDS} seeds"
    )
    table = print_table(
        ["policy", "seed", "mass near -0.5", "mass near +0.5", "min of the two", "E[r]"], rows
    )
    _plot_bandit(grid[:, 0], target, densities, samples, RESULTS_DIR / "rl_bandit.png")
    return {
        "alpha": alpha,
        "steps": steps,
        "near": NEAR,
        "optima": OPTIMA,
        "results": results,
        "table": table,
        "plot": "rl_bandit.png",
    }


def _plot_bandit(grid, target, densities, samples, path: Path) -> None:  # noqa: ANN001
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(densities), figsize=(10, 3.5), sharey=True)
    for ax, (name, density) in zip(axes, densities.items()):
        ax.hist(
            samples[name].numpy(), bins=100, range=(-1, 1), density=True, alpha=0.4, label="samples"
        )
        ax.plot(grid, density, label="policy exp(log_prob)")
        ax.plot(grid, target, "k--", lw=1, label="optimum ∝ exp(r/α)")
        ax.set(title=name, xlabel="action")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- Pendulum -------------------------------------------------------------------------------


def pendulum(args: argparse.Namespace, payload: dict[str, Any]) -> None:
    from pyroflows.rl.sac import SAC, SACConfig

    runs = payload.setdefault("pendulum_runs", [])
    hidden = (args.hidden, args.hidden)
    for seed in range(args.seeds):
        for name, kwargs in POLICIES.items():
            config = SACConfig(
                total_steps=args.steps,
                seed=seed,
                critic_hidden=hidden,
                eval_every=2_000,
                progress=False,
            )
            agent = SAC("Pendulum-v1", config=config, policy_kwargs={"hidden": hidden, **kwargs})
            tag = f"{'flow' if kwargs['flow'] else 'gaussian'}_seed{seed}"
            result = agent.train(RESULTS_DIR / "rl_pendulum", name=tag)
            runs.append(
                {
                    "policy": name,
                    "seed": seed,
                    "final_return_mean": result.final_mean,
                    "final_returns": result.final_returns,
                    "wall_time_s": result.wall_time,
                    "actor_parameters": count_parameters(agent.policy),
                    "curve": result.curve,
                }
            )
            print(
                f"{name:14s} seed {seed}: return {result.final_mean:8.1f} "
                f"({result.wall_time:.0f} s)",
                flush=True,
            )
            save_json(args.out, payload)
    rows = []
    for name in POLICIES:
        mine = [r for r in runs if r["policy"] == name]
        finals = [r["final_return_mean"] for r in mine]
        rows.append(
            [
                name,
                len(mine),
                statistics.mean(finals),
                statistics.stdev(finals) if len(finals) > 1 else math.nan,
                " ".join(f"{v:.0f}" for v in finals),
                statistics.mean(r["wall_time_s"] for r in mine),
                mine[0]["actor_parameters"],
            ]
        )
    print(f"\nPendulum-v1, {args.steps} steps, mean return of 10 deterministic episodes")
    payload["pendulum_table"] = print_table(
        [
            "policy",
            "seeds",
            "mean return",
            "sd over seeds",
            "per seed",
            "wall s / run",
            "actor params",
        ],
        rows,
        floatfmt=".1f",
    )
    flow_mean = rows[0][2]
    payload["acceptance"] = {
        "flow_mean_return": flow_mean,
        "threshold": -250.0,
        "passed": flow_mean > -250.0,
    }
    print(f"acceptance (flow mean > -250): {'PASS' if flow_mean > -250 else 'FAIL'}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    set_threads(1)
    start = time.perf_counter()
    payload: dict[str, Any] = {
        "benchmark": "rl_pendulum",
        "machine": machine_info(),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    if args.only in ("all", "bandit"):
        payload["bandit"] = bandit(args)
        save_json(args.out, payload)
    if args.only in ("all", "pendulum"):
        pendulum(args, payload)
    payload["total_wall_time_s"] = time.perf_counter() - start
    save_json(args.out, payload)
    print(f"total wall time {payload['total_wall_time_s']:.0f} s; results in {args.out}")


if __name__ == "__main__":
    main()
