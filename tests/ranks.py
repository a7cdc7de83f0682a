"""Run a test scenario on a real two-process gloo group on the CPU.

:func:`run_on_ranks` spawns the processes (a TCP rendezvous on a free port, a 60 s collective
timeout), has each play the scenario and save what it returns, runs the same scenario in one
process meanwhile, and waits a bounded time, terminating the children on any failure, so a hang
cannot block the suite.
"""

from __future__ import annotations

import datetime
import socket
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2

gloo = pytest.mark.skipif(
    sys.platform == "win32" or not dist.is_available() or not dist.is_gloo_available(),
    reason="needs torch.distributed with gloo (not on Windows)",
)


def _worker(rank: int, port: int, out: Path, play: Callable[[int, Path], Any]) -> None:
    torch.set_num_threads(1)
    try:
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=WORLD,
            timeout=datetime.timedelta(seconds=60),
        )
        try:
            outcome = play(rank, out)
        finally:
            dist.destroy_process_group()
        torch.save(outcome, out / f"result{rank}.pt")
    except BaseException:
        (out / f"error{rank}.txt").write_text(traceback.format_exc())
        raise


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_on_ranks(
    play: Callable[[int, Path], Any],
    out: Path,
    meanwhile: Callable[[], Any] = lambda: None,
    timeout: float = 240.0,
) -> tuple[Any, list[Any]]:
    """``(meanwhile(), [play(0, out), play(1, out)])``: ``play`` (a module-level function, so
    the spawned processes can import it) on each rank of a two-process group, ``meanwhile``
    in this process while they run."""
    context = mp.get_context("spawn")
    port = _free_port()
    procs = [
        context.Process(target=_worker, args=(r, port, out, play), daemon=True)
        for r in range(WORLD)
    ]
    for p in procs:
        p.start()
    try:
        alone = meanwhile()
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        errors = [f.read_text() for f in sorted(out.glob("error*.txt"))]
        assert not errors, "a rank failed:\n" + "\n".join(errors)
        assert not any(p.is_alive() for p in procs), "the two-process run hung"
        assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
            if p.is_alive():
                p.kill()
    results = [torch.load(out / f"result{r}.pt", weights_only=False) for r in range(WORLD)]
    return alone, results
