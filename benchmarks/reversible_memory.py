"""Activation memory and time of a coupling flow's training step with and without reversible
recomputation (``reversible=True``: :class:`pyroflows.transforms.ReversibleCompose`, RevNet,
Gomez et al. 2017).

For each depth (``transforms``, default 4, 8, 16, 32) the preset (default ``nice``) is built
twice from the same seed, once plain and once reversible, and a maximum-likelihood training
step (``-log_prob(x).mean()`` of a batch, backward) is measured:

* saved activation bytes: :class:`~pyroflows.transforms.SavedTensorMeter` counts, by storage,
  the tensors autograd holds for backward (parameters excluded, they exist anyway) while the
  whole step runs; "peak" is the most held at once over forward and backward, "after forward"
  what is held when the backward pass starts;
* on CUDA (when present), ``torch.cuda.max_memory_allocated`` during the step minus the memory
  allocated before it (parameters, data), i.e. activations, gradients and temporaries;
* time per step (forward, backward and an Adam step), the two interleaved round by round;
* gradients: in float64, the reversible gradients of every parameter must equal the plain ones
  to 1e-6 (relative to the gradient's scale; asserted). The float32 difference is reported too
  (reconstruction rounding, see docs/reversible.rst), also for
  ``ReversibleCompose(checkpoint_every=K)`` (``--checkpoint-every``, default 8), which stores
  every K-th layer's input so the rounding error accumulates over at most K layers; its peak
  saved bytes are reported as well (not timed).

Usage::

    nice python benchmarks/reversible_memory.py                 # writes results/reversible_memory.json
    python benchmarks/reversible_memory.py --flow realnvp --device cuda
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    RESULTS_DIR,
    count_parameters,
    interleaved_timings_with_cpu,
    load_average,
    machine_info,
    paired_ratios,
    print_table,
    save_json,
    set_threads,
    summarize,
)

import pyroflows  # noqa: E402
from pyroflows.transforms import ReversibleCompose, SavedTensorMeter  # noqa: E402

MB = 2.0**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--flow", default="nice", choices=["nice", "realnvp", "nsf-coupling"])
    parser.add_argument("--depths", nargs="+", type=int, default=[4, 8, 16, 32])
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--hidden", nargs="+", type=int, default=[64, 64])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=30, help="timed steps per depth and variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        default=8,
        help="also measure ReversibleCompose(checkpoint_every=K) (stored input every K layers)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "reversible_memory.json")
    return parser.parse_args(argv)


def build_pair(
    args: argparse.Namespace, depth: int, dtype: torch.dtype
) -> tuple[pyroflows.Flow, pyroflows.Flow]:
    """Plain and reversible flows with the same parameters, moved off the identity initialisation."""
    flows = []
    for reversible in (False, True):
        torch.manual_seed(args.seed)
        flow = pyroflows.flows.build(
            args.flow,
            args.features,
            transforms=depth,
            hidden=tuple(args.hidden),
            reversible=reversible,
        )
        generator = torch.Generator().manual_seed(args.seed)
        with torch.no_grad():
            for p in flow.parameters():
                p.add_(
                    0.05
                    * torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype)
                )
        flows.append(flow.to(args.device, dtype))
    return flows[0], flows[1]


def data(args: argparse.Namespace, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(args.batch, args.features, generator=generator, dtype=torch.float64).to(
        args.device, dtype
    )


def loss_of(flow: pyroflows.Flow, x: torch.Tensor) -> torch.Tensor:
    return -flow().log_prob(x).mean()


def gradients(flow: pyroflows.Flow, x: torch.Tensor) -> list[torch.Tensor]:
    flow.zero_grad(set_to_none=True)
    loss_of(flow, x).backward()
    return [p.grad.detach().clone() for p in flow.parameters()]


def with_checkpoints(rev: pyroflows.Flow, every: int) -> pyroflows.Flow:
    """The same layers (shared) in a ReversibleCompose storing every ``every``-th layer's input."""
    return pyroflows.Flow(
        [ReversibleCompose(list(rev.transforms[0].parts), checkpoint_every=every)]
    )


def gradient_difference(
    args: argparse.Namespace, depth: int, dtype: torch.dtype, every: int = 0
) -> float:
    """Largest |g_rev - g_plain| / max(1, max|g_plain|) over the parameter tensors."""
    plain, rev = build_pair(args, depth, dtype)
    rev = with_checkpoints(rev, every) if every else rev
    x = data(args, dtype)
    worst = 0.0
    for a, b in zip(gradients(plain, x), gradients(rev, x)):
        worst = max(worst, ((a - b).abs().max() / a.abs().max().clamp_min(1.0)).item())
    return worst


def saved_bytes(flow: pyroflows.Flow, x: torch.Tensor) -> dict[str, int]:
    flow.zero_grad(set_to_none=True)
    with SavedTensorMeter(exclude=flow.parameters()) as meter:
        loss = loss_of(flow, x)
        after_forward = meter.current
        loss.backward()
    return {"peak": meter.peak, "after_forward": after_forward, "tensors": meter.packed}


def cuda_step_bytes(flow: pyroflows.Flow, x: torch.Tensor) -> int:
    flow.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    loss_of(flow, x).backward()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def train_step(
    flow: pyroflows.Flow, batches: list[torch.Tensor], cuda: bool
) -> Callable[[int], None]:
    """One timed training step (Adam, lr 1e-4) on batch ``i % len(batches)``."""
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-4)

    def run(i: int) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_of(flow, batches[i % len(batches)]).backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()

    return run


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    threads = set_threads(args.threads)
    cuda = args.device.startswith("cuda")
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings.update(
        {
            "threads": threads,
            "dtype_memory_and_time": "float32",
            "dtype_gradient_check": "float64",
            "step": "-flow().log_prob(x).mean(), backward (timed steps add an Adam step, lr 1e-4)",
            "gradient_tolerance": 1e-6,
        }
    )
    payload = {
        "benchmark": "reversible_memory",
        "settings": settings,
        "machine": machine_info(),
        "results": [],
    }
    started = time.perf_counter()
    rows = []
    for depth in args.depths:
        grad64 = gradient_difference(args, depth, torch.float64)
        if not grad64 < 1e-6:
            raise AssertionError(
                f"depth {depth}: float64 gradients differ by {grad64:.3g} (> 1e-6)"
            )
        grad32 = gradient_difference(args, depth, torch.float32)
        every = args.checkpoint_every
        grad32_ck = gradient_difference(args, depth, torch.float32, every)
        plain, rev = build_pair(args, depth, torch.float32)
        x = data(args, torch.float32)
        memory = {
            "plain": saved_bytes(plain, x),
            "reversible": saved_bytes(rev, x),
            f"reversible_checkpoint_every_{every}": saved_bytes(with_checkpoints(rev, every), x),
        }
        if cuda:
            for name, flow in (
                ("plain", plain),
                ("reversible", rev),
                (f"reversible_checkpoint_every_{every}", with_checkpoints(rev, every)),
            ):
                cuda_step_bytes(flow, x)  # warm-up (allocator, kernels)
                memory[name]["cuda_step"] = cuda_step_bytes(flow, x)
        batches = [data(args, torch.float32, seed=10 + i) for i in range(4)]
        times = interleaved_timings_with_cpu(
            {
                "plain": train_step(plain, batches, cuda),
                "reversible": train_step(rev, batches, cuda),
            },
            args.repeats,
            args.warmup,
        )
        wall = {n: summarize(t["wall"]) for n, t in times.items()}
        paired = paired_ratios(times["reversible"]["wall"], times["plain"]["wall"])
        paired_cpu = paired_ratios(times["reversible"]["cpu"], times["plain"]["cpu"])
        result = {
            "depth": depth,
            "params": count_parameters(plain),
            "saved_bytes": memory,
            "wall_seconds": wall,
            "cpu_seconds": {n: summarize(t["cpu"]) for n, t in times.items()},
            "time_ratio_reversible_over_plain": paired,
            "cpu_time_ratio_reversible_over_plain": paired_cpu,
            "grad_max_rel_diff_float64": grad64,
            "grad_max_rel_diff_float32": grad32,
            f"grad_max_rel_diff_float32_checkpoint_every_{every}": grad32_ck,
        }
        payload["results"].append(result)
        peak = {n: memory[n]["peak"] / MB for n in memory}
        ck = f"reversible_checkpoint_every_{every}"
        row = [
            depth,
            result["params"],
            peak["plain"],
            peak["reversible"],
            peak["plain"] / peak["reversible"],
            memory["plain"]["after_forward"] / MB,
            memory["reversible"]["after_forward"] / MB,
            peak[ck],
        ]
        if cuda:
            row += [memory[n]["cuda_step"] / MB for n in ("plain", "reversible", ck)]
        row += [
            1e3 * wall["plain"]["median"],
            1e3 * wall["reversible"]["median"],
            f"{paired['median']:.2f} [{paired['q25']:.2f}, {paired['q75']:.2f}]",
            f"{paired_cpu['median']:.2f} [{paired_cpu['q25']:.2f}, {paired_cpu['q75']:.2f}]",
            f"{grad64:.1e}",
            f"{grad32:.1e}",
            f"{grad32_ck:.1e}",
        ]
        rows.append(row)
        print(
            f"depth {depth}: saved peak {peak['plain']:.2f} MB plain, {peak['reversible']:.2f} MB reversible; "
            f"time ratio {paired['median']:.2f} (cpu {paired_cpu['median']:.2f}); grad diff f64 {grad64:.1e}, f32 {grad32:.1e}, "
            f"f32 ck{every} {grad32_ck:.1e}",
            flush=True,
        )
        save_json(args.out, payload)

    header = [
        "depth",
        "params",
        "peak saved MB plain",
        "peak saved MB rev",
        "memory ratio",
        "after fwd MB plain",
        "after fwd MB rev",
        f"peak saved MB rev ck{args.checkpoint_every}",
    ]
    if cuda:
        header += [
            "CUDA step MB plain",
            "CUDA step MB rev",
            f"CUDA step MB rev ck{args.checkpoint_every}",
        ]
    header += [
        "ms/step plain",
        "ms/step rev",
        "time ratio [q25, q75]",
        "cpu time ratio",
        "grad diff f64",
        "grad diff f32",
        f"grad diff f32 ck{args.checkpoint_every}",
    ]
    print(
        f"\n{args.flow}, {args.features} features, hidden {tuple(args.hidden)}, batch {args.batch}, "
        f"float32, {args.device}, {threads} thread(s); saved = bytes autograd holds for backward "
        "(parameters excluded); time ratio = paired per-step reversible / plain, median [q25, q75], "
        "wall-clock and thread CPU; ckK = ReversibleCompose(checkpoint_every=K); grad diff = max |g_rev - g_plain| / max(1, max |g_plain|)"
    )
    table = print_table(header, rows, floatfmt=".2f")
    payload["tables"] = {"memory_and_time": table}
    payload["total_seconds"] = time.perf_counter() - started
    payload["machine"]["load_average_at_end"] = load_average()
    save_json(args.out, payload)
    print(f"results: {args.out} (total {payload['total_seconds']:.0f} s)", flush=True)
    return payload


if __name__ == "__main__":
    main()
