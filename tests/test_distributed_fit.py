"""Data-parallel ``fit`` on a real two-process gloo group on the CPU.

One spawned run (two processes, a TCP rendezvous on a free port, a 60 s collective timeout)
plays every scenario on both ranks while the test process runs the same scenarios in one
process; the tests then compare. The parent waits a bounded time and terminates the children
on any failure, so a hang cannot block the suite.
"""

from __future__ import annotations

import datetime
import socket
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pyroflows import Flow
from pyroflows.flows import build
from pyroflows.infer import Callback, FitState, StepBudget, fit
from pyroflows.transforms import ActNorm
from pyroflows.transforms.triangular import LowerTriangularAffine

WORLD = 2
SCENARIOS = ("weighted", "early_stopping", "step_decisions", "actnorm")

gloo = pytest.mark.skipif(
    sys.platform == "win32" or not dist.is_available() or not dist.is_gloo_available(),
    reason="needs torch.distributed with gloo (not on Windows)",
)


class StopOnRankOne(Callback):
    """Asks to stop after step 2, on rank 1 only: rank 0 decides, so nobody stops."""

    def __init__(self, rank: int | None) -> None:
        self.rank = rank

    def on_step_end(self, state: FitState) -> bool:
        return self.rank == 1 and state.step == 2


def _data(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5 + torch.eye(d)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ mix.T + 0.5


def _outcome(flow: torch.nn.Module, result: Any) -> dict[str, Any]:
    return {
        "state": {k: v.clone() for k, v in flow.state_dict().items()},
        "history": [(h["train_loglik"], h["val_loglik"]) for h in result.history],
        "best_epoch": result.best_epoch,
        "stop_reason": result.stop_reason,
    }


def scenarios(rank: int | None, out: Path) -> dict[str, Any]:
    """Every scenario, on a rank of the group (``rank``) or in one process (``None``)."""
    quiet = {"progress": False}
    results: dict[str, Any] = {}
    # Unequal parts (batches of 37 and a last one of 5), zero weights, and a different
    # initialisation on each rank: fit starts every rank from rank 0's parameters.
    torch.manual_seed(10 + (rank or 0))
    flow = build("maf", 3, transforms=2, hidden=(8, 8)).double()
    x = _data(301, 3, seed=1)
    w = torch.rand(301, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2
    w[::5] = 0.0
    result = fit(
        flow, x, weights=w, epochs=3, batch_size=37, lr=1e-2, validation=0.0, seed=3, **quiet
    )
    results["weighted"] = _outcome(flow, result)

    # Validation, early stopping and a checkpoint (rank 0 only).
    torch.manual_seed(20)
    flow = build("nsf", 2, transforms=2, hidden=(8, 8), bins=4).double()
    tag = "single" if rank is None else f"rank{rank}"
    result = fit(
        flow, _data(157, 2, seed=4), epochs=60, batch_size=25, lr=5e-2, validation=0.3,
        patience=2, seed=5, checkpoint=out / f"{tag}.pt", **quiet,
    )  # fmt: skip
    results["early_stopping"] = _outcome(flow, result)
    results["early_stopping"]["checkpoint"] = (out / f"{tag}.pt").exists()

    # Step-level callbacks: rank 0's decisions count on every rank.
    torch.manual_seed(30)
    flow = build("maf", 2, transforms=1, hidden=(8,)).double()
    callbacks = [StopOnRankOne(rank), StepBudget(5)]
    result = fit(flow, _data(101, 2, seed=6), epochs=4, batch_size=16, seed=7, callbacks=callbacks, **quiet)  # fmt: skip
    results["step_decisions"] = _outcome(flow, result)

    # A data-dependent initialisation sees the whole first batch, as in one process. (SGD:
    # right after it the gradient is zero up to rounding, which Adam would blow up to lr.)
    torch.manual_seed(40)
    flow = Flow([LowerTriangularAffine(3), ActNorm(3)]).double()
    sgd = torch.optim.SGD(flow.parameters(), lr=0.05)
    x = _data(90, 3, seed=8) * 3
    result = fit(flow, x, epochs=2, batch_size=31, optimizer=sgd, seed=9, **quiet)
    results["actnorm"] = _outcome(flow, result)
    return results


def mismatches(rank: int) -> dict[str, str]:
    """Inputs that differ between ranks: each case must fail on every rank, with a message."""
    errors = {}
    nan = _data(50, 2, seed=0)
    nan[3, 0] = float("nan") if rank == 1 else 0.0
    cases = {
        "rows": _data(50 - rank, 2, seed=0),
        "values": _data(50, 2, seed=rank),
        "order": _data(50, 2, seed=0).roll(rank, 0),  # the same rows, shuffled on rank 1
        "nan": nan,
    }
    for name, x in cases.items():
        flow = build("maf", 2, transforms=1, hidden=(4,)).double()
        try:
            fit(flow, x, epochs=1, progress=False)
            errors[name] = "no error"
        except ValueError as error:
            errors[name] = str(error)
    return errors


def _worker(rank: int, port: int, out: Path) -> None:
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
            outcome = scenarios(rank, out)
            outcome["mismatches"] = mismatches(rank)
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


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict]]:
    """The single-process outcomes and those of both ranks of a two-process run."""
    out = tmp_path_factory.mktemp("distributed")
    context = mp.get_context("spawn")
    port = _free_port()
    procs = [
        context.Process(target=_worker, args=(r, port, out), daemon=True) for r in range(WORLD)
    ]
    for p in procs:
        p.start()
    try:
        single = scenarios(None, out)  # while the children run
        deadline = time.monotonic() + 240
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        errors = [f.read_text() for f in sorted(out.glob("error*.txt"))]
        assert not errors, "a rank failed:\n" + "\n".join(errors)
        assert not any(p.is_alive() for p in procs), "the two-process fit hung"
        assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(5)
            if p.is_alive():
                p.kill()
    return single, [torch.load(out / f"result{r}.pt", weights_only=False) for r in range(WORLD)]


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if a[key].is_floating_point():
            torch.testing.assert_close(a[key], b[key], rtol=1e-10, atol=1e-12, msg=key)
        else:
            assert torch.equal(a[key], b[key]), key


@gloo
@pytest.mark.slow
@pytest.mark.parametrize("name", SCENARIOS)
def test_two_ranks_match_one_process(runs, name):
    single, ranks = runs
    for outcome in ranks:
        _close(outcome[name]["state"], single[name]["state"])
        assert outcome[name]["best_epoch"] == single[name]["best_epoch"]
        assert outcome[name]["stop_reason"] == single[name]["stop_reason"]
        torch.testing.assert_close(
            torch.tensor(outcome[name]["history"]),
            torch.tensor(single[name]["history"]),
            rtol=1e-10,
            atol=1e-12,
            equal_nan=True,
        )


@gloo
@pytest.mark.slow
def test_ranks_hold_identical_parameters(runs):
    _, (zero, one) = runs
    for name in SCENARIOS:
        for key, value in zero[name]["state"].items():
            assert torch.equal(value, one[name]["state"][key]), (name, key)
        history = [torch.tensor(outcome[name]["history"]) for outcome in (zero, one)]
        torch.testing.assert_close(*history, rtol=0, atol=0, equal_nan=True, msg=name)


@gloo
@pytest.mark.slow
def test_stopping_decisions_are_global(runs):
    single, (zero, one) = runs
    # Early stopping on the global validation score, the same epoch everywhere.
    assert single["early_stopping"]["stop_reason"] == "early_stopping"
    assert zero["early_stopping"]["best_epoch"] == one["early_stopping"]["best_epoch"]
    # Rank 1's own stop request is overruled by rank 0; the step budget stops both.
    assert zero["step_decisions"]["stop_reason"] == one["step_decisions"]["stop_reason"]
    assert one["step_decisions"]["stop_reason"] == "max_steps"


@gloo
@pytest.mark.slow
def test_only_rank_zero_writes_the_checkpoint(runs):
    single, (zero, one) = runs
    assert single["early_stopping"]["checkpoint"]
    assert zero["early_stopping"]["checkpoint"] and not one["early_stopping"]["checkpoint"]


@gloo
@pytest.mark.slow
def test_different_inputs_fail_on_every_rank(runs):
    _, (zero, one) = runs
    for errors in (zero["mismatches"], one["mismatches"]):
        assert "different numbers of rows" in errors["rows"]
        assert "different data" in errors["values"]
        assert "different data" in errors["order"]
    assert "NaN" in one["mismatches"]["nan"] or "nan" in one["mismatches"]["nan"].lower()
    assert "rank(s) [1]" in zero["mismatches"]["nan"]


def test_distributed_true_needs_a_process_group():
    flow = build("maf", 2, transforms=1, hidden=(4,))
    with pytest.raises(ValueError, match="init_process_group"):
        fit(flow, torch.randn(20, 2), epochs=1, distributed=True, progress=False)
    with pytest.raises(ValueError, match="distributed must be"):
        fit(flow, torch.randn(20, 2), epochs=1, distributed="yes", progress=False)
