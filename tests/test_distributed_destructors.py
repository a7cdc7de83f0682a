"""Destructors fitted on rows spread over a real two-process gloo group equal the destructor
fitted on all the rows in one process (float64, up to the order of additions).

Each rank passes its own contiguous part of one data set (unequal parts, weights with zeros);
the test process fits the same destructors on the concatenation, with ``distributed=False``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from ranks import gloo, run_on_ranks

from pyroflows.destructors import DeepDestructor, build

ROWS, SPLIT = 301, 170  # rank 0 holds rows [0, 170), rank 1 rows [170, 301)

# name -> (registry name, options, data on the cube?, weighted?)
CASES: dict[str, tuple[str, dict[str, Any], bool, bool]] = {
    "gaussian": ("gaussian", {}, False, True),
    "normal-cdf": ("normal-cdf", {}, False, True),
    "histogram": ("histogram", {"bins": 12}, True, True),
    "histogram-smooth": ("histogram", {"bins": 12, "smooth": True}, True, False),
    "beta": ("beta", {}, True, True),
    "copula": ("copula", {"bins": 10}, True, True),
    "mixture": ("mixture", {"components": 3, "max_iter": 40}, False, True),
    "tree": ("tree", {"max_leaves": 10, "min_leaf": 8}, True, True),
}
DEEP = {
    # A held-out fraction: the split is drawn over the global row numbers.
    "deep-holdout": {"layer": "copula", "max_layers": 3, "validation": 0.3,
                     "layer_options": {"bins": 8}},
    # Two folds and a refit, trees after random rotations.
    "deep-folds": {"layer": "tree", "max_layers": 2, "validation": 2, "rotation": "random",
                   "layer_options": {"max_leaves": 6, "min_leaf": 10}},
    # Mixture layers (k-means++ seeding over every rank's rows) without validation.
    "deep-mixture": {"layer": "mixture", "max_layers": 2, "validation": 0,
                     "layer_options": {"components": 2, "max_iter": 15}},
}  # fmt: skip


def _data(cube: bool) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mix = torch.tensor([[1.0, 0.6, 0.0], [0.0, 0.8, 0.5], [0.0, 0.0, 1.0]], dtype=torch.float64)
    x = torch.randn(ROWS, 3, generator=g, dtype=torch.float64) @ mix
    x[::3] += torch.tensor([2.5, -1.0, 0.5], dtype=torch.float64)  # a second cluster
    w = torch.rand(ROWS, generator=g, dtype=torch.float64) + 0.2
    w[::7] = 0.0
    return (torch.special.ndtr(x / 2) if cube else x), w


def _part(t: torch.Tensor, rank: int | None) -> torch.Tensor:
    return t if rank is None else (t[:SPLIT] if rank == 0 else t[SPLIT:])


def _state(d: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in d.state_dict().items()}


def fits(rank: int | None) -> dict[str, Any]:
    """Every destructor fitted on this rank's part (``rank``) or on all rows (``None``)."""
    flag = {"distributed": rank is not None}
    outcomes: dict[str, Any] = {}
    for name, (kind, options, cube, weighted) in CASES.items():
        x, w = _data(cube)
        d = build(kind, 3, **options).double()
        d.fit(_part(x, rank), _part(w, rank) if weighted else None, **flag)
        outcomes[name] = {"state": _state(d), "score": d.log_prob(x).sum()}
    for name, options in DEEP.items():
        x, w = _data(False)
        d = DeepDestructor(3, progress=False, **options).double()
        d.fit(_part(x, rank), _part(w, rank), **flag)
        outcomes[name] = {
            "state": _state(d),
            "score": d.log_prob(x).sum(),
            "history": torch.tensor(
                [[h["train_loglik"], h["val_loglik"], h["accepted"]] for h in d.history],
                dtype=torch.float64,
            ),
        }
    # Rank 1 holds no rows at all.
    x, _ = _data(False)
    d = build("gaussian", 3).double().fit(x if rank in (None, 0) else x[:0], **flag)
    outcomes["empty-part"] = {"state": _state(d), "score": d.log_prob(x).sum()}
    return outcomes


def failures(rank: int) -> dict[str, str]:
    """Inputs that fail on one rank or only over all ranks: every rank must raise."""
    x, _ = _data(False)
    bad = x[:50].clone()
    if rank == 1:
        bad[4, 1] = float("nan")
    cases = {
        "nan-on-one-rank": (bad, None),
        "same-rows": (x[:40], None),
        "too-few-rows": (x[rank : rank + 1], None),  # 2 rows in all, 4 needed
        "zero-weights": (x[:20] + rank, torch.zeros(20, dtype=torch.float64)),
        "constant-column": (torch.cat([x[:20, :2] + rank, torch.ones(20, 1)], 1), None),
    }
    errors = {}
    for name, (data, weights) in cases.items():
        d = build("gaussian", 3).double()
        before = _state(d)
        try:
            d.fit(data, weights)
            errors[name] = "no error"
        except ValueError as error:
            errors[name] = str(error)
        unchanged = all(torch.equal(v, before[k]) for k, v in _state(d).items())
        errors[name + ":unchanged"] = str(unchanged and not bool(d.fitted))
    return errors


def play(rank: int, out: Path) -> dict[str, Any]:
    return {"fits": fits(rank), "failures": failures(rank)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict]]:
    out = tmp_path_factory.mktemp("distributed_destructors")
    return run_on_ranks(play, out, meanwhile=lambda: fits(None))


@gloo
@pytest.mark.slow
@pytest.mark.parametrize("name", [*CASES, *DEEP, "empty-part"])
def test_two_ranks_fit_the_one_process_destructor(runs, name):
    single, ranks = runs
    expected = single[name]
    for outcome in ranks:
        got = outcome["fits"][name]
        assert got["state"].keys() == expected["state"].keys()
        for key, value in expected["state"].items():
            if value.is_floating_point():
                torch.testing.assert_close(
                    got["state"][key],
                    value,
                    rtol=1e-9,
                    atol=1e-11,
                    msg=lambda m, name=name, key=key: f"{name}: {key}: {m}",
                )
            else:
                assert torch.equal(got["state"][key], value), (name, key)
        torch.testing.assert_close(got["score"], expected["score"], rtol=1e-9, atol=1e-9)
        if "history" in expected:
            torch.testing.assert_close(
                got["history"], expected["history"], rtol=1e-9, atol=1e-9, equal_nan=True
            )
    # Both ranks hold the same destructor, bit for bit.
    zero, one = (outcome["fits"][name]["state"] for outcome in ranks)
    assert all(torch.equal(zero[k], one[k]) for k in zero)


@gloo
@pytest.mark.slow
def test_data_parallel_fit_fails_on_every_rank(runs):
    _, (zero, one) = runs
    a, b = zero["failures"], one["failures"]
    assert "NaN" in b["nan-on-one-rank"] and "rank(s) [1]" in a["nan-on-one-rank"]
    for errors in (a, b):
        assert "same 40 rows" in errors["same-rows"]
        assert "got 2 over 2 ranks" in errors["too-few-rows"]
        assert "positive sum over 2 ranks" in errors["zero-weights"]
        assert "zero-variance column(s) [2]" in errors["constant-column"]
        for name in ("nan-on-one-rank", "same-rows", "too-few-rows", "zero-weights",
                     "constant-column"):  # fmt: skip
            assert errors[name + ":unchanged"] == "True", name


def test_fit_without_a_group():
    """No process group: distributed='auto' and False fit the same; True is an error."""
    x, w = _data(False)
    auto = build("mixture", 3, components=2).double().fit(x, w)
    alone = build("mixture", 3, components=2).double().fit(x, w, distributed=False)
    assert all(torch.equal(v, alone.state_dict()[k]) for k, v in auto.state_dict().items())
    with pytest.raises(ValueError, match="init_process_group"):
        build("gaussian", 3).fit(x, distributed=True)
    with pytest.raises(ValueError, match="distributed must be"):
        build("gaussian", 3).fit(x, distributed="yes")
