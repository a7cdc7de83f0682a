"""Helpers shared by the benchmarks: threads, machine info, timing, tables and JSON results.

Every benchmark script imports this module from its own directory (``benchmarks/`` is put on
``sys.path`` when a script runs), so a new benchmark only needs ``from common import ...``.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "RESULTS_DIR",
    "count_parameters",
    "format_table",
    "interleaved_timings",
    "interleaved_timings_with_cpu",
    "load_average",
    "machine_info",
    "paired_ratios",
    "print_table",
    "save_json",
    "set_threads",
    "summarize",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def set_threads(threads: int) -> int:
    """Fix torch's intra-op threads (and inter-op threads where still allowed); returns it."""
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # only allowed before any parallel work has started
        pass
    return torch.get_num_threads()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", ":(top)pyroflows"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (other jobs on a shared machine slow timings)."""
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """Software versions and hardware of this run (for the JSON results)."""
    import numpy
    import pyro

    try:
        import pyroflows

        pyroflows_version = pyroflows.__version__
    except ImportError:  # pragma: no cover - the benchmarks need it anyway
        pyroflows_version = None
    cuda = torch.cuda.is_available()
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "numpy": numpy.__version__,
        "pyroflows": pyroflows_version,
        "git_commit": _git_commit(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": load_average(),
        "cuda": torch.cuda.get_device_name(0) if cuda else None,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    return value


def save_json(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write ``payload`` as indented JSON (NaN as null), creating folders; atomic replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as handle:
        json.dump(_jsonable(payload), handle, indent=2)
        handle.write("\n")
    os.replace(tmp, path)
    return path


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[Any]], floatfmt: str = ".3f"
) -> str:
    """A plain-text (Markdown-compatible) table; floats formatted with ``floatfmt``."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "nan" if math.isnan(value) else format(value, floatfmt)
        return str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) for i, h in enumerate(header)]
    # Columns holding only numbers (or nothing) are right-aligned, the others left-aligned.
    numeric = [
        all(isinstance(row[i], (int, float)) or row[i] in ("", None) for row in rows)
        for i in range(len(header))
    ]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|"
        + "|".join("-" * (w + 1) + (":" if num else "-") for w, num in zip(widths, numeric))
        + "|"
    )
    return "\n".join([line([str(h) for h in header]), rule, *(line(r) for r in cells)])


def print_table(header: Sequence[str], rows: Sequence[Sequence[Any]], floatfmt: str = ".3f") -> str:
    """Print :func:`format_table` and return the text."""
    text = format_table(header, rows, floatfmt)
    print(text, flush=True)
    return text


def count_parameters(module: torch.nn.Module) -> int:
    """Number of trainable scalars."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Median, interquartile range, min and count of a list of timings (seconds)."""
    values = sorted(seconds)
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    return {
        "median": statistics.median(values),
        "q25": q[0],
        "q75": q[2],
        "min": values[0],
        "n": len(values),
    }


def interleaved_timings_with_cpu(
    functions: Mapping[str, Callable[[int], Any]], repeats: int, warmup: int = 3
) -> dict[str, dict[str, list[float]]]:
    """Time several implementations fairly on a noisy machine, in wall-clock and CPU time.

    Each round calls every function once, rotating which goes first, so that slow periods of a
    shared machine hit all implementations alike. ``functions[name](i)`` is called with the
    round index ``i`` (use it to pick fresh inputs). The first ``warmup`` rounds are not kept.
    Both wall-clock time and the calling thread's CPU time are recorded; with one torch thread
    the work runs in the calling thread, so CPU time leaves out the time the process spent
    descheduled by other jobs.

    Returns:
        ``{name: {"wall": [seconds, ...], "cpu": [seconds, ...]}}``, ``repeats`` of each, in
        round order (so ``times[a]["wall"][i] / times[b]["wall"][i]`` is a paired ratio).
    """
    names = list(functions)
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in names}
    for i in range(warmup + repeats):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            wall, cpu = time.perf_counter(), time.thread_time()
            functions[name](i)
            wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
            if i >= warmup:
                times[name]["wall"].append(wall)
                times[name]["cpu"].append(cpu)
    return times


def interleaved_timings(
    functions: Mapping[str, Callable[[int], Any]], repeats: int, warmup: int = 3
) -> dict[str, list[float]]:
    """Wall-clock timings of :func:`interleaved_timings_with_cpu`: ``{name: [seconds, ...]}``."""
    return {
        name: t["wall"]
        for name, t in interleaved_timings_with_cpu(functions, repeats, warmup).items()
    }


def paired_ratios(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, float]:
    """Summary of the per-round ratios ``numerator[i] / denominator[i]`` (see :func:`summarize`)."""
    return summarize([a / b for a, b in zip(numerator, denominator)])
