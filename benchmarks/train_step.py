"""Time of one maximum-likelihood training step, pyroflows next to zuko, eager and compiled.

One step is ``loss = -flow().log_prob(x).mean()``, ``loss.backward()`` and an Adam step, on a
batch of ``--batch`` rows of standard-normal data in ``--features`` dimensions, for the
presets ``maf`` (affine autoregressive) and ``nsf`` (rational-quadratic spline autoregressive),
3 transforms with MADE widths ``--hidden``, in the density direction (one pass). Each
configuration is timed with and without ``torch.compile`` (the whole step function, default
mode); zuko's ``MAF`` / ``NSF`` with the same sizes run beside them when zuko is installed
(a benchmark-only dependency: ``pip install zuko``). The configurations are interleaved
round by round (``--rounds`` rounds of ``--steps`` steps after ``--warmup`` untimed steps,
CUDA synchronised), so a noisy machine hurts them alike; the table reports the median
milliseconds per step, the ratio to pyroflows eager, and the compile time.

Usage::

    python benchmarks/train_step.py                          # CPU, batch 8192
    python benchmarks/train_step.py --device cuda            # the GPU numbers of issue 14
    python benchmarks/train_step.py --batch 512 --no-compile
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS_DIR, machine_info, print_table, save_json, set_threads  # noqa: E402

import pyroflows  # noqa: E402


def _pyroflows(name: str, features: int, hidden: tuple[int, ...]) -> Callable[[], torch.nn.Module]:
    def make() -> torch.nn.Module:
        return pyroflows.flows.build(name, features, transforms=3, hidden=hidden)

    return make


def _zuko(
    name: str, features: int, hidden: tuple[int, ...]
) -> Callable[[], torch.nn.Module] | None:
    try:
        import zuko
    except ImportError:
        return None
    cls = {"maf": zuko.flows.MAF, "nsf": zuko.flows.NSF}[name]

    def make() -> torch.nn.Module:
        return cls(features, transforms=3, hidden_features=hidden)

    return make


def _step_fn(flow: torch.nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-4)

    def loss() -> torch.Tensor:
        return -flow().log_prob(x).mean()

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        value = loss()
        value.backward()
        optimizer.step()
        return value.detach()

    return step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--hidden", type=int, nargs="+", default=[256, 256])
    parser.add_argument("--flows", nargs="+", default=["maf", "nsf"], choices=["maf", "nsf"])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "train_step.json")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    device = torch.device(args.device)
    hidden = tuple(args.hidden)
    x = torch.randn(args.batch, args.features, generator=torch.Generator().manual_seed(0))
    x = x.to(device)
    steps: dict[str, Callable[[], torch.Tensor]] = {}
    compile_s: dict[str, float] = {}
    for name in args.flows:
        libraries = {"pyroflows": _pyroflows(name, args.features, hidden)}
        zuko_make = _zuko(name, args.features, hidden)
        if zuko_make is not None:
            libraries["zuko"] = zuko_make
        for library, make in libraries.items():
            modes = ["eager"] if args.no_compile else ["eager", "compiled"]
            for mode in modes:
                torch.manual_seed(0)
                step = _step_fn(make().to(device), x)
                label = f"{name} {library} {mode}"
                if mode == "compiled":
                    step = torch.compile(step)
                start = time.perf_counter()
                try:
                    for _ in range(args.warmup):
                        step()
                    _sync(device)
                except Exception as error:  # noqa: BLE001 (no compiler on this machine, say)
                    print(f"{label}: skipped ({type(error).__name__}: {str(error)[:120]})")
                    continue
                compile_s[label] = time.perf_counter() - start
                steps[label] = step
    times: dict[str, list[float]] = {label: [] for label in steps}
    for _ in range(args.rounds):
        for label, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            _sync(device)
            times[label].append(1000 * (time.perf_counter() - start) / args.steps)
    rows, records = [], []
    for label, values in times.items():
        name = label.split()[0]
        base = statistics.median(times[f"{name} pyroflows eager"])
        median = statistics.median(values)
        records.append({"config": label, "ms_per_step": median, "rounds": values,
                        "ratio_to_pyroflows_eager": median / base,
                        "warmup_and_compile_s": compile_s[label]})  # fmt: skip
        rows.append([label, median, median / base, compile_s[label]])
    print(f"\none training step, batch {args.batch} x {args.features}, 3 transforms, hidden "
          f"{hidden}, {device}, {args.threads} thread(s)")  # fmt: skip
    table = print_table(["flow library mode", "ms/step", "ratio", "warm-up s"], rows)
    path = save_json(args.out, {"settings": {**vars(args), "out": str(args.out)},
                                "machine": machine_info(), "runs": records, "table": table})  # fmt: skip
    print(f"wrote {path}")
    return {"runs": records}


if __name__ == "__main__":
    main()
