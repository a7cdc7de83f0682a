"""Wall time of data-parallel ``pyroflows.infer.fit`` with 1 and 2 processes, side by side.

An ``nsf`` flow (3 layers, MADE conditioners of widths (64, 64), 8 bins) is fitted by
maximum likelihood to a synthetic 8-dimensional set of 1,000,000 rows (a mixture of 8
correlated Gaussians, drawn from a fixed seed, so every process makes the same rows) for one
epoch with a global batch of 4096 (the defaults), with the same seed, data and *global* batch
for every process count. One process runs ``fit`` plainly; ``P`` processes form a
``torch.distributed`` gloo group (NCCL with ``--device cuda`` and one GPU per process) and
``fit`` gives each its part of every global batch, adds the gradients over the processes and
keeps rank 0's decisions. The script starts the processes itself (spawn, one torch thread
each), so the runs see the same conditions; ``torchrun --nproc_per_node 2 your_script.py`` is
how a user launches the same thing.

After the fit, ``importance`` (``--draws``, 10^6 by default) weighs draws of the fitted flow
against the data's exact density (log Z = 0), with the draws split over the processes and one
exact global result on each; its wall time, speed-up, log Z, standard error, k-hat and ESS are
a second table.

Third (``--parts destructors``), density destructors fitted data-parallel from all-reduced
sufficient statistics: each process passes *its own* contiguous share of the rows (no process
holds the full set), and ``fit`` sums the statistics over the processes: a Gaussian-mixture
destructor (8 components, ``--em-steps`` EM steps from k-means++ seeds drawn over all rows)
and a deep destructor of ``copula`` layers (4 layers at most, depth chosen on 10 % held-out
rows). Reported: wall time of each fit, the speed-up, the mean log-likelihood on all rows,
and the largest difference of the mixture's parameters from the one-process fit.

Reported per run: wall time of the ``fit`` call, seconds per epoch (training and the
validation pass), the CPU seconds of each process, optimizer steps per second, the speed-up
over one process, the final validation log-likelihood, and the largest parameter difference
from the one-process fit. A control run (one process, initial parameters nudged by a relative
1e-7, 1e-15 in float64) shows how far *any* rounding difference carries: Adam amplifies them
over hundreds of steps (its update divides by the gradient's size), so after an epoch the
data-parallel fit is as far from the one-process fit as the nudged one is, in float32 and in
float64 alike; over a few dozen steps they agree to about 1e-10 in float64 (the tests).

Usage::

    python benchmarks/distributed.py                  # 1M rows, 1 epoch, 1 and 2 processes
    python benchmarks/distributed.py --rows 100000 --epochs 2 --processes 1 2
    python benchmarks/distributed.py --device cuda    # one GPU per process
    python benchmarks/distributed.py --rows 100000 --epochs 2 --dtype float64  # equality
    python benchmarks/distributed.py --parts destructors   # destructors only
"""

from __future__ import annotations

import argparse
import datetime
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, load_average, machine_info, print_table, save_json  # noqa: E402


def _mixture(features: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    means = 3 * torch.randn(8, features, generator=g)
    mixes = torch.randn(8, features, features, generator=g) / features**0.5
    return means, mixes


def make_data(rows: int, features: int, seed: int = 0) -> torch.Tensor:
    """A mixture of 8 correlated Gaussians, ``(rows, features)`` float32, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    means, mixes = _mixture(features, g)
    component = torch.randint(8, (rows,), generator=g)
    noise = torch.randn(rows, features, 1, generator=g)
    return means[component] + (mixes[component] @ noise).squeeze(-1) + 0.1 * noise.squeeze(-1)


def data_density(features: int, device: torch.device, dtype: torch.dtype, seed: int = 0):  # noqa: ANN201
    """The exact density of :func:`make_data`'s rows (normalised: log Z = 0): component k is
    N(mean_k, A_k A_k^T) with A_k = mix_k + 0.1 I, equally weighted."""
    means, mixes = _mixture(features, torch.Generator().manual_seed(seed))
    scale = mixes.double() + 0.1 * torch.eye(features, dtype=torch.float64)
    tril = torch.linalg.cholesky(scale @ scale.transpose(-1, -2))
    components = torch.distributions.MultivariateNormal(means.double(), scale_tril=tril)
    weights = torch.distributions.Categorical(torch.ones(8, dtype=torch.float64))
    mixture = torch.distributions.MixtureSameFamily(weights, components)

    def log_p(x: torch.Tensor) -> torch.Tensor:
        return mixture.log_prob(x.double().cpu()).to(device=x.device, dtype=x.dtype)

    return log_p


def _worker(
    rank: int, world: int, port: int, nudge: float, args: argparse.Namespace, out: Path
) -> None:
    import pyroflows

    torch.set_num_threads(1)
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if world > 1:
        nccl = device.type == "cuda" and torch.cuda.device_count() >= world
        dist.init_process_group(
            "nccl" if nccl else "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=600),
        )
    try:
        x = make_data(args.rows, args.features, seed=0).to(device, getattr(torch, args.dtype))
        torch.manual_seed(0)
        flow = pyroflows.flows.build(
            "nsf", args.features, transforms=3, hidden=(64, 64), bins=8, standardize=x[:100_000]
        ).to(device, x.dtype)
        with torch.no_grad():  # the control: a relative nudge of the initial parameters
            for p in flow.parameters():
                p.mul_(1 + nudge * torch.randn_like(p))
        torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # its one-time imports, untimed
        if world > 1:
            dist.barrier()  # connected, and starting together
        outcome: dict[str, Any] = {}
        if "fit" in args.parts:
            start, cpu = time.perf_counter(), time.process_time()
            result = pyroflows.infer.fit(
                flow, x, epochs=args.epochs, batch_size=args.batch_size, lr=1e-3,
                validation=args.validation, patience=None, seed=0, progress=False,
            )  # fmt: skip
            outcome = {"wall": time.perf_counter() - start, "cpu": time.process_time() - cpu}
            if rank == 0:
                outcome["history"] = result.history
                outcome["params"] = torch.nn.utils.parameters_to_vector(flow.parameters()).cpu()
        if "destructors" in args.parts and nudge == 0.0:
            outcome["destructors"] = _fit_destructors(x, rank, world, args)
        if "importance" in args.parts and args.draws and nudge == 0.0:
            # The fitted flow as the proposal for the data's exact density (log Z = 0): the
            # draws split over the processes, one global result on each.
            log_p = data_density(args.features, device, x.dtype)
            if world > 1:
                dist.barrier()
            start = time.perf_counter()
            r = pyroflows.infer.importance(log_p, flow, args.draws, seed=0, warn=False)
            outcome["importance"] = {"wall": time.perf_counter() - start, **r.diagnostics()}
        torch.save(outcome, out / f"rank{rank}.pt")
    finally:
        if world > 1:
            dist.destroy_process_group()


def _fit_destructors(
    x: torch.Tensor, rank: int, world: int, args: argparse.Namespace
) -> dict[str, Any]:
    """A mixture and a deep copula destructor fitted on this rank's share of the rows."""
    from pyroflows.destructors import DeepDestructor, build

    part = x.tensor_split(world)[rank]
    fits: dict[str, Any] = {}
    for name, make in (
        ("mixture", lambda: build("mixture", x.shape[1], components=8, max_iter=args.em_steps,
                                  tol=0.0)),
        ("deep copula", lambda: DeepDestructor(x.shape[1], layer="copula", max_layers=4,
                                               validation=0.1, progress=False)),
    ):  # fmt: skip
        destructor = make().to(x.device, x.dtype)
        if world > 1:
            dist.barrier()
        start = time.perf_counter()
        destructor.fit(part)
        wall = time.perf_counter() - start
        with torch.no_grad():  # the mean log-likelihood over all rows, summed over the shares
            score = torch.stack(
                [
                    destructor.log_prob(part).double().sum(),
                    torch.tensor(float(part.shape[0]), dtype=torch.float64, device=x.device),
                ]
            )
        if world > 1:
            dist.all_reduce(score)
        fits[name] = {"wall": wall, "loglik": float(score[0] / score[1])}
        if name == "mixture":
            fits[name]["params"] = torch.cat(
                [p.detach().double().reshape(-1).cpu() for p in destructor.parameters()]
            )
        else:
            fits[name]["layers"] = len(destructor.layers)
    return fits


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(world: int, nudge: float, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Spawn ``world`` processes for one fit; rank 0's timing and parameters, and the CPU
    seconds of each process."""
    context = mp.get_context("spawn")
    port = _free_port()
    procs = [
        context.Process(target=_worker, args=(r, world, port, nudge, args, out))
        for r in range(world)
    ]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(args.timeout)
        if any(p.exitcode != 0 for p in procs):
            raise RuntimeError(f"a worker of the {world}-process run failed or hung")
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(world)]
    return {**ranks[0], "cpu": [r.get("cpu", float("nan")) for r in ranks]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4096, help="global batch")
    parser.add_argument("--validation", type=float, default=0.01)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--draws", type=int, default=1_000_000, help="importance draws after the fit (0: none)"
    )
    parser.add_argument(
        "--parts", nargs="+", default=["fit", "importance", "destructors"],
        choices=["fit", "importance", "destructors"], help="what to time",
    )  # fmt: skip
    parser.add_argument("--em-steps", type=int, default=20, help="mixture destructor EM steps")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument(
        "--no-control", action="store_true", help="skip the 1-process run from nudged parameters"
    )
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "distributed.json")
    return parser.parse_args(argv)


def _fit_table(runs: dict[str, dict[str, Any]], args: argparse.Namespace) -> tuple[list, str]:
    base = next(iter(runs.values()))
    train_rows = args.rows - round(args.validation * args.rows)
    steps = -(-train_rows // args.batch_size) * args.epochs
    header = ["processes", "fit s", "s/epoch", "CPU s/process", "steps/s", "speed-up",
              "val loglik", "max |param diff|"]  # fmt: skip
    rows, records = [], []
    for label, r in runs.items():
        per_epoch = sum(h["seconds"] for h in r["history"]) / len(r["history"])
        record = {
            "processes": label,
            "wall_s": r["wall"],
            "seconds_per_epoch": per_epoch,
            "cpu_s_per_process": r["cpu"],
            "steps_per_s": steps / r["wall"],
            "rows_per_s": train_rows * args.epochs / r["wall"],
            "speed_up": base["wall"] / r["wall"],
            "val_loglik": r["history"][-1]["val_loglik"],
            "max_param_diff": float((r["params"] - base["params"]).detach().abs().max()),
            "history": r["history"],
        }
        records.append(record)
        rows.append([label, record["wall_s"], per_epoch, " / ".join(f"{c:.1f}" for c in r["cpu"]),
                     record["steps_per_s"], record["speed_up"], record["val_loglik"],
                     f"{record['max_param_diff']:.1e}"])  # fmt: skip
    print(f"\nnsf, {args.rows} rows x {args.features}, global batch {args.batch_size}, "
          f"{args.epochs} epoch(s), {args.device}, {args.dtype}, 1 torch thread per process")  # fmt: skip
    return records, print_table(header, rows, floatfmt=".2f")


def _destructor_table(runs: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    fitted = {label: r["destructors"] for label, r in runs.items() if "destructors" in r}
    first = next(iter(fitted.values()))
    rows = []
    for label, fits in fitted.items():
        mixture, deep = fits["mixture"], fits["deep copula"]
        diff = float((mixture["params"] - first["mixture"]["params"]).abs().max())
        rows.append([label, mixture["wall"], first["mixture"]["wall"] / mixture["wall"],
                     mixture["loglik"], f"{diff:.1e}", deep["wall"],
                     first["deep copula"]["wall"] / deep["wall"], deep["loglik"],
                     deep["layers"]])  # fmt: skip
    print(
        f"\ndestructors on {args.rows} rows x {args.features} split over the processes, "
        f"{args.dtype}: a mixture (8 components, {args.em_steps} EM steps) and a deep copula "
        "destructor (<= 4 layers, 10 % held out)"
    )
    return print_table(
        ["processes", "mixture s", "speed-up", "loglik", "max |param diff|", "deep s",
         "speed-up", "loglik", "layers"],
        rows, floatfmt=".3f",
    )  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    info = machine_info()
    print(f"load average {info['load_average_at_start']}")
    nudge = 1e-7 if args.dtype == "float32" else 1e-15
    configs = [(str(world), world, 0.0) for world in args.processes]
    if not args.no_control and "fit" in args.parts:
        configs.append((f"1, start x (1 + {nudge:g} noise)", 1, nudge))
    runs: dict[str, dict[str, Any]] = {}
    for label, world, scale in configs:
        started = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            runs[label] = run(world, scale, args, Path(tmp))
        print(f"{label} process(es): {time.perf_counter() - started:.1f} s", flush=True)
    records, table = _fit_table(runs, args) if "fit" in args.parts else ([], "")
    sampled = {label: r["importance"] for label, r in runs.items() if "importance" in r}
    importance_table = ""
    if sampled:
        first = next(iter(sampled.values()))
        print(f"\nimportance, {args.draws} draws from the fitted flow, exact log Z = 0")
        importance_table = print_table(
            ["processes", "importance s", "speed-up", "log Z", "se", "k-hat", "ESS"],
            [
                [label, i["wall"], first["wall"] / i["wall"], i["log_evidence"],
                 i["log_evidence_se"], i["khat"], i["ess"]]
                for label, i in sampled.items()
            ],
            floatfmt=".4f",
        )  # fmt: skip
    destructors = {
        label: {name: {k: v for k, v in f.items() if k != "params"} for name, f in r["destructors"].items()}
        for label, r in runs.items() if "destructors" in r
    }  # fmt: skip
    destructor_table = _destructor_table(runs, args) if destructors else ""
    info["load_average_at_end"] = load_average()
    path = save_json(args.out, {"settings": vars(args), "machine": info, "runs": records,
                                "table": table, "importance": sampled,
                                "importance_table": importance_table,
                                "destructors": destructors,
                                "destructor_table": destructor_table})  # fmt: skip
    print(f"\nwrote {path}")
    return {"runs": records}


if __name__ == "__main__":
    main()
