"""Data-parallel ``fit``, sharded ``importance`` and data-parallel SVI (``fit_guide``) on a real
two-process gloo group on the CPU.

One spawned run (:func:`ranks.run_on_ranks`) plays every scenario on both ranks while the
test process runs the same scenarios in one process; the tests then compare.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pyro
import pyro.distributions as pdist
import pytest
import torch
from ranks import gloo, run_on_ranks

from pyroflows import Flow
from pyroflows.flows import build
from pyroflows.infer import (
    AutoAmortizedFlow,
    AutoFlow,
    AutoMeanFieldFlow,
    Callback,
    FitState,
    StepBudget,
    fit,
    fit_guide,
    importance,
)
from pyroflows.infer.sampling.psis import ess, log_evidence, psis
from pyroflows.infer.sampling.sharded import ShardedImportanceResult
from pyroflows.transforms import ActNorm
from pyroflows.transforms.triangular import LowerTriangularAffine

SCENARIOS = ("weighted", "early_stopping", "step_decisions", "actnorm")


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


# Importance sampling: an unnormalised Gaussian target with a known log Z, a mismatched
# proposal (narrower in one direction: a heavy-tailed weight distribution to smooth).
_A = torch.tensor([[1.5, 0.4], [0.4, 0.8]], dtype=torch.float64)
_MU = torch.tensor([0.3, -0.2], dtype=torch.float64)
LOG_Z = 1.7 + torch.log(torch.tensor(2 * math.pi, dtype=torch.float64)) - 0.5 * _A.logdet()


def _log_p(x: torch.Tensor) -> torch.Tensor:
    d = x - _MU
    return 1.7 - 0.5 * ((d @ _A) * d).sum(-1)


def _proposal() -> torch.distributions.Distribution:
    cov = torch.tensor([[1.2, 0.0], [0.0, 0.9]], dtype=torch.float64)
    return torch.distributions.MultivariateNormal(
        torch.tensor([0.0, 0.1], dtype=torch.float64), cov
    )


def _importance_outcome(result: Any) -> dict[str, Any]:
    mean, mcse = result.expectation(lambda x: x)
    raw_mean, raw_mcse = result.expectation(lambda x: x, smoothed=False)
    return {
        "sharded": isinstance(result, ShardedImportanceResult),
        "log_weights": result.log_weights.clone(),
        "samples": result.samples.clone(),
        "smoothed": result.smoothed_log_weights.clone(),
        "normalized": result.normalized_weights.clone(),
        "globals": torch.tensor(
            [
                result.log_evidence,
                result.log_evidence_se,
                result.ess,
                result.ess_raw,
                result.khat,
                result.num_samples,
                result.num_nan,
            ],
            dtype=torch.float64,
        ),  # fmt: skip
        "expectation": torch.cat([mean, mcse, raw_mean, raw_mcse]),
    }


def importance_scenarios(rank: int) -> dict[str, Any]:
    """Sharded importance sampling: plain, with a defensive mixture and NaN targets, and a
    target that fails on rank 1 only (both ranks must raise)."""
    outcomes = {"plain": _importance_outcome(importance(_log_p, _proposal(), 10001, seed=3))}

    def nan_target(x: torch.Tensor) -> torch.Tensor:
        lp = _log_p(x)
        return torch.where(x[:, 0] > 2.0, torch.full_like(lp, float("nan")), lp)

    result = importance(nan_target, _proposal(), 4001, defensive=0.2, seed=4, warn=False)
    outcomes["defensive"] = _importance_outcome(result)

    def failing(x: torch.Tensor) -> torch.Tensor:
        if rank == 1:
            raise RuntimeError("target failed on rank 1")
        return _log_p(x)

    try:
        importance(failing, _proposal(), 100, seed=0)
        outcomes["failure"] = "no error"
    except (RuntimeError, ValueError) as error:
        outcomes["failure"] = str(error)
    return outcomes


# Data-parallel SVI on a conjugate model with a subsampled plate: y_i ~ N(mu, 1), mu ~ N(0, 1),
# 200 rows, 20 per rank and step; the posterior of mu is N(sum(y) / 201, 1 / 201).
SVI_ROWS, SVI_SUBSAMPLE = 200, 20
SVI_STEPS = {
    "flow": 300,
    "meanfield": 50,
    "amortized": 100,
}  # steps: under 8 windows of 50, no stop
SVI_GUIDES = tuple(SVI_STEPS)
_SEEN: list[torch.Tensor] = []  # every model call's subsample indices, in order


def _svi_data() -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    return 0.8 + torch.randn(SVI_ROWS, generator=g, dtype=torch.float64)


def svi_model(y: torch.Tensor) -> None:
    mu = pyro.sample("mu", pdist.Normal(torch.zeros((), dtype=y.dtype), 1.0))
    with pyro.plate("data", len(y), subsample_size=SVI_SUBSAMPLE) as idx:
        _SEEN.append(idx.detach().clone())
        pyro.sample("y", pdist.Normal(mu, 1.0), obs=y[idx])


def local_model(y: torch.Tensor) -> None:
    """Local latents z_i ~ N(mu, 1), y_i ~ N(z_i, 1), and a model parameter mu created
    lazily by the model (maximum likelihood: mu = mean(y))."""
    mu = pyro.param("mu", torch.zeros((), dtype=y.dtype))
    with pyro.plate("data", len(y), subsample_size=SVI_SUBSAMPLE) as idx:
        _SEEN.append(idx.detach().clone())
        z = pyro.sample("z", pdist.Normal(mu, 1.0))
        pyro.sample("y", pdist.Normal(z, 1.0), obs=y[idx])


def svi_scenarios(rank: int) -> dict[str, Any]:
    """fit_guide with each flow guide: a different initialisation on each rank (torch seeded by
    rank) but the same RNG state when fit_guide starts (the trap: identical subsamples)."""
    y = _svi_data()
    outcomes: dict[str, Any] = {}
    for kind in SVI_GUIDES:
        pyro.clear_param_store()
        torch.manual_seed(50 + rank)
        small = {"transforms": 1, "hidden": (8,)}
        if kind == "flow":
            model, guide = svi_model, AutoFlow(svi_model, init="loc", **small)
        elif kind == "meanfield":
            model, guide = svi_model, AutoMeanFieldFlow(svi_model, init="loc", **small)
        else:
            encoder = torch.nn.Linear(1, 2).double()
            guide = AutoAmortizedFlow(
                local_model, encoder, data_fn=lambda y: y[:, None], flow="maf", **small
            )
            model = local_model
        before = len(pyro.get_param_store())  # nothing yet: fit_guide builds the guide
        pyro.set_rng_seed(7)  # the same on both ranks
        _SEEN.clear()
        started = time.perf_counter()
        # mass_covering off: the check flags these short fits, and the stage (tested in
        # test_fit_guide.py) is not what this compares across ranks.
        result = fit_guide(
            model, guide, y, lr=0.03, max_steps=SVI_STEPS[kind], window=50,
            check_draws=64 if kind == "flow" else 0, mass_covering=False, progress=False,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        store = pyro.get_param_store()
        params = {name: store.get_param(name).detach().clone() for name in store.keys()}
        module = {k: v.detach().clone() for k, v in guide.state_dict().items()}
        pyro.set_rng_seed(0)
        if kind == "amortized":
            summary = torch.tensor([float(params["mu"]), 0.0], dtype=torch.float64)
        else:
            draws = guide.sample_posterior(4000)["mu"].reshape(-1)
            summary = torch.stack([draws.mean(), draws.std()]).double()
        outcomes[kind] = {
            "before": before,
            "params": params,
            "module": module,
            "steps": result.steps,
            "stop_reason": result.stop_reason,
            "history": torch.tensor([h["loss"] for h in result.history], dtype=torch.float64),
            "subsamples": torch.stack(_SEEN[-result.steps :]),
            "summary": summary,
            "check": None if result.check is None else (result.khat, result.ess),
            "seconds": seconds,
        }

    # A model that fails on rank 1 only, at its fourth call (the third step): both ranks raise.
    calls = [0]

    def failing(y: torch.Tensor) -> None:
        calls[0] += 1
        if rank == 1 and calls[0] == 4:
            raise TypeError("the model failed on rank 1")
        svi_model(y)

    pyro.clear_param_store()
    try:
        guide = AutoFlow(failing, init="loc", transforms=1, hidden=(4,))
        fit_guide(failing, guide, y, lr=0.01, max_steps=10, check_draws=0, progress=False)
        outcomes["failure"] = "no error"
    except Exception as error:  # noqa: BLE001
        outcomes["failure"] = f"{type(error).__name__}: {error}"
    return outcomes


def play(rank: int, out: Path) -> dict[str, Any]:
    """Every scenario on one rank of the group."""
    outcome = scenarios(rank, out)
    outcome["mismatches"] = mismatches(rank)
    outcome["importance"] = importance_scenarios(rank)
    outcome["svi"] = svi_scenarios(rank)
    return outcome


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict]]:
    """The single-process outcomes and those of both ranks of a two-process run."""
    out = tmp_path_factory.mktemp("distributed")
    return run_on_ranks(play, out, meanwhile=lambda: scenarios(None, out))


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


def _pooled(ranks: list[dict], name: str) -> dict[str, torch.Tensor]:
    parts = [outcome["importance"][name] for outcome in ranks]
    keys = ("log_weights", "samples", "smoothed", "normalized")
    return {key: torch.cat([p[key] for p in parts]) for key in keys}


@gloo
@pytest.mark.slow
@pytest.mark.parametrize("name", ["plain", "defensive"])
def test_sharded_importance_is_the_global_result(runs, name):
    """Both ranks report the globals of one process holding both ranks' weights."""
    _, ranks = runs
    pooled = _pooled(ranks, name)
    lw = pooled["log_weights"]
    total = 10001 if name == "plain" else 4001
    assert lw.shape == (total,)
    assert [o["importance"][name]["log_weights"].shape[0] for o in ranks] == [
        (total + 1) // 2,
        total // 2,
    ]
    smoothed, khat = psis(lw)
    log_z, se = log_evidence(lw)
    finite = torch.isfinite(lw)
    expected = torch.tensor(
        [log_z, se, ess(smoothed), ess(lw), khat, total, int((~finite).sum())],
        dtype=torch.float64,
    )
    for outcome in ranks:
        assert outcome["importance"][name]["sharded"]
        torch.testing.assert_close(
            outcome["importance"][name]["globals"], expected, rtol=1e-12, atol=1e-12
        )
    torch.testing.assert_close(pooled["smoothed"], smoothed, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(pooled["normalized"], torch.softmax(lw, 0), rtol=1e-12, atol=1e-15)
    x = torch.where(finite[:, None], pooled["samples"], torch.zeros_like(pooled["samples"]))
    for weights, part in ((smoothed.exp(), slice(0, 4)), (torch.softmax(lw, 0), slice(4, 8))):
        mean = (weights[:, None] * x).sum(0)
        mcse = ((weights[:, None] * (x - mean)) ** 2).sum(0).sqrt()
        for outcome in ranks:
            got = outcome["importance"][name]["expectation"][part]
            torch.testing.assert_close(got, torch.cat([mean, mcse]), rtol=1e-12, atol=1e-12)
    # Identical globals on both ranks, and distinct draws (the ranks' seeds differ).
    zero, one = (o["importance"][name] for o in ranks)
    assert torch.equal(zero["globals"], one["globals"])
    assert torch.equal(zero["expectation"], one["expectation"])
    assert not torch.equal(zero["samples"][:10], one["samples"][:10])


@gloo
@pytest.mark.slow
def test_sharded_importance_knows_the_answer(runs):
    _, ranks = runs
    log_z, se, _, _, khat, *_ = ranks[0]["importance"]["plain"]["globals"].tolist()
    assert abs(log_z - float(LOG_Z)) < 3 * se
    assert 0 < khat < 0.7
    mean = ranks[0]["importance"]["plain"]["expectation"][:2]
    mcse = ranks[0]["importance"]["plain"]["expectation"][2:4]
    assert ((mean - _MU).abs() < 4 * mcse).all()


@gloo
@pytest.mark.slow
def test_sharded_importance_fails_on_every_rank(runs):
    _, (zero, one) = runs
    assert "rank(s) [1]" in zero["importance"]["failure"]
    assert "target failed on rank 1" in one["importance"]["failure"]


def test_importance_without_a_group_is_unchanged():
    """No process group: distributed='auto' and False are the same single-process run."""
    auto = importance(_log_p, _proposal(), 3001, seed=5, defensive=0.1)
    alone = importance(_log_p, _proposal(), 3001, seed=5, defensive=0.1, distributed=False)
    assert not isinstance(auto, ShardedImportanceResult)
    assert torch.equal(auto.log_weights, alone.log_weights)
    assert torch.equal(auto.smoothed_log_weights, alone.smoothed_log_weights)
    assert auto.khat == alone.khat
    with pytest.raises(ValueError, match="init_process_group"):
        importance(_log_p, _proposal(), 10, distributed=True)


def test_psis_is_arviz_psislw():
    """psis (through smooth_tail, which the sharded path shares) is ArviZ's psislw exactly."""
    import warnings

    import arviz as az
    import numpy as np

    rng = np.random.default_rng(0)
    for n, lw in [
        (5000, rng.standard_t(1.5, 5000)),
        (333, rng.normal(size=333) * 3),
        (2000, np.log(rng.pareto(0.8, 2000) + 1e-3) + 50),
    ]:
        lw[:: n // 7] = -np.inf
        keep = np.isfinite(lw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference, k = az.psislw(lw[keep].copy(), reff=1.0)
        smoothed, khat = psis(torch.tensor(lw))
        assert khat == float(k)
        assert np.array_equal(smoothed.numpy()[keep], reference)
        assert np.isneginf(smoothed.numpy()[~keep]).all()


@gloo
@pytest.mark.slow
@pytest.mark.parametrize("kind", SVI_GUIDES)
def test_distributed_svi_keeps_the_ranks_identical(runs, kind):
    """Rank 0's start and the averaged gradients: the same parameters and module state
    (parameter averages included) on both ranks, bit for bit, though each rank initialised
    its guide differently; the same losses, windows and stop; every parameter made before the
    first step (none after it: a late one would start differently on each rank)."""
    _, (zero, one) = runs
    a, b = zero["svi"][kind], one["svi"][kind]
    assert a["before"] == 0 and a["params"].keys() == b["params"].keys() and a["params"]
    for table in ("params", "module"):
        for key, value in a[table].items():
            assert torch.equal(value, b[table][key]), (table, key)
    assert torch.equal(a["history"], b["history"]) and len(a["history"]) == SVI_STEPS[kind] // 50
    assert a["steps"] == b["steps"] == SVI_STEPS[kind] and a["stop_reason"] == b["stop_reason"]
    assert torch.equal(a["summary"], b["summary"])


@gloo
@pytest.mark.slow
@pytest.mark.parametrize("kind", SVI_GUIDES)
def test_distributed_svi_ranks_draw_their_own_subsamples(runs, kind):
    """Both ranks entered fit_guide with the same RNG state, yet their plates drew different
    rows at every step."""
    _, (zero, one) = runs
    a, b = zero["svi"][kind]["subsamples"], one["svi"][kind]["subsamples"]
    assert a.shape == b.shape == (SVI_STEPS[kind], SVI_SUBSAMPLE)
    assert not torch.equal(a[0], b[0])
    differ = [not torch.equal(u.sort().values, v.sort().values) for u, v in zip(a, b)]
    assert all(differ)
    assert not torch.equal(a[0], a[1])


@gloo
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["flow", "amortized"])
def test_distributed_svi_known_answer(runs, kind):
    """The conjugate posterior of mu (the flow guides) or the maximum-likelihood mu (the
    amortized guide's model parameter)."""
    _, (zero, _) = runs
    y = _svi_data()
    mean, sd = zero["svi"][kind]["summary"].tolist()
    if kind == "amortized":
        assert abs(mean - float(y.mean())) < 0.15
        return
    m, s = float(y.sum() / (SVI_ROWS + 1)), (SVI_ROWS + 1) ** -0.5
    assert abs(mean - m) < 0.5 * s and 0.7 < sd / s < 1.4, (mean, m, sd, s)


@gloo
@pytest.mark.slow
def test_distributed_svi_check_is_global(runs):
    """The importance check is sharded over the ranks: the same khat and ESS on each (on a
    subsampled model a poor one: each draw's log-density sees a random subsample)."""
    _, (zero, one) = runs
    assert zero["svi"]["flow"]["check"] == one["svi"]["flow"]["check"]
    assert zero["svi"]["flow"]["check"] is not None


@gloo
@pytest.mark.slow
def test_distributed_svi_fails_on_every_rank(runs):
    _, (zero, one) = runs
    assert one["svi"]["failure"] == "TypeError: the model failed on rank 1"
    assert "failed on another rank" in zero["svi"]["failure"]


def test_fit_guide_distributed_true_needs_a_process_group():
    pyro.clear_param_store()
    guide = AutoFlow(svi_model, init="loc", transforms=1, hidden=(4,))
    with pytest.raises(ValueError, match="init_process_group"):
        fit_guide(svi_model, guide, _svi_data(), distributed=True, progress=False)
    with pytest.raises(ValueError, match="distributed must be"):
        fit_guide(svi_model, guide, _svi_data(), distributed="yes", progress=False)
