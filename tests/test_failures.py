"""Nothing silent: every failure leaves the object as it was, every bad input a clear error."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import InterruptAt
from torch.distributions import constraints

from pyroflows.destructors import DeepDestructor, HistogramDestructor, build
from pyroflows.flows import build as build_flow
from pyroflows.infer import Callback, FitState, fine_tune, fit

UNIT_NAMES = ["histogram", "beta", "tree", "copula"]


def state_of(module: torch.nn.Module) -> dict:
    """Every tensor (value and dtype), the fitted flags, the module objects and the mode."""
    return {
        "tensors": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "modules": list(module.modules()),
        "fitted": [bool(m.fitted) for m in module.modules() if hasattr(m, "fitted")],
        "training": [m.training for m in module.modules()],
        "history": list(getattr(module, "history", [])),
    }


def assert_same(module: torch.nn.Module, before: dict) -> None:
    after = state_of(module)
    assert after["tensors"].keys() == before["tensors"].keys()
    for k, v in before["tensors"].items():
        w = after["tensors"][k]
        assert v.dtype == w.dtype and torch.equal(v, w), k
    assert len(after["modules"]) == len(before["modules"])
    assert all(a is b for a, b in zip(after["modules"], before["modules"]))
    for key in ("fitted", "training", "history"):
        assert after[key] == before[key], key


def unit_data(n: int = 600, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 2, generator=g, dtype=dtype) ** torch.tensor([1.0, 2.0], dtype=dtype)


# -- 1. a flow on the cube has zero density outside it -----------------------------------------


@pytest.mark.parametrize("name", UNIT_NAMES)
@pytest.mark.parametrize("base", ["uniform", "normal"])
def test_unit_destructor_flow_is_minus_inf_outside_the_cube(name, base):
    destructor = build(name, 2).fit(unit_data())
    d = destructor.as_flow(base)()
    assert d.support.base_constraint is constraints.unit_interval
    assert d.support.event_dim == 1
    outside = torch.tensor([[-0.5, 0.5], [0.5, 1.5], [2.0, -1.0]], dtype=torch.float64)
    inside = torch.tensor([[0.3, 0.4], [0.9, 0.1]], dtype=torch.float64)
    assert torch.equal(d.log_prob(outside), torch.full((3,), -torch.inf, dtype=torch.float64))
    assert torch.isfinite(d.log_prob(inside)).all()
    with pytest.raises(ValueError, match="unit cube"):
        destructor.log_prob(outside)
    # Gradients stay finite (masking, not NaN from the outside branch).
    x = torch.cat([inside, outside]).requires_grad_()
    d.log_prob(x).sum().backward()
    assert x.grad is None or torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", ["histogram", "tree"])
def test_unit_destructor_flow_integrates_to_one_over_a_larger_box(name):
    flow = build(name, 2).fit(unit_data()).as_flow()
    m, low, high = 600, -1.0, 2.0
    h = (high - low) / m
    mid = low + h * (torch.arange(m, dtype=torch.float64) + 0.5)
    grid = torch.stack(torch.meshgrid(mid, mid, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        total = float(flow().log_prob(grid).exp().sum() * h * h)
    assert total == pytest.approx(1.0, abs=0.02)


# -- 2. transactional state --------------------------------------------------------------------


def test_a_failed_flow_load_changes_nothing():
    torch.manual_seed(0)
    flow = build_flow("maf", 2, transforms=2, hidden=(8,))
    other = build_flow("maf", 2, transforms=2, hidden=(8,))
    state = other.state_dict()
    bad_shape = dict(state)
    last = list(bad_shape)[-1]
    bad_shape[last] = torch.zeros(3, 3)
    missing = {k: v for k, v in state.items() if k != last}
    for bad in (bad_shape, missing, {**state, "extra": torch.zeros(1)}):
        before = state_of(flow)
        with pytest.raises(RuntimeError):
            flow.load_state_dict(bad)
        assert_same(flow, before)
    flow.load_state_dict(state)  # a good one still loads
    assert all(torch.equal(v, state[k]) for k, v in flow.state_dict().items())


def deep(**options) -> DeepDestructor:
    return DeepDestructor(
        2, layer="histogram", max_layers=3, validation=0, progress=False, **options
    )


def test_a_failed_deep_destructor_load_changes_nothing():
    x = unit_data()
    target = deep(init=None).fit(x)
    source = DeepDestructor(2, layer="histogram", max_layers=1, validation=0, init=None).fit(x)
    state = dict(source.state_dict())
    state.pop(next(k for k in state if k.endswith("bins") or "layers.0" in k))
    score = target.score(x)
    before = state_of(target)
    with pytest.raises(RuntimeError):
        target.load_state_dict(state)
    assert_same(target, before)
    assert target.score(x) == score
    fresh = deep(init=None)  # an unfitted destructor stays unfitted
    before = state_of(fresh)
    with pytest.raises(RuntimeError):
        fresh.load_state_dict(state)
    assert_same(fresh, before)


def test_a_fit_on_nan_data_changes_nothing_not_even_the_dtype():
    destructor = HistogramDestructor(2).fit(unit_data(dtype=torch.float32))
    before = state_of(destructor)
    bad = unit_data()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        destructor.fit(bad)
    assert_same(destructor, before)


def test_a_deep_fit_interrupted_inside_a_layer_leaves_the_destructor_as_before(monkeypatch):
    destructor = deep(init=None).fit(unit_data(dtype=torch.float32))
    before = state_of(destructor)
    calls = []
    fit_layer = HistogramDestructor._fit

    def interrupted(self, x, w):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        fit_layer(self, x, w)

    monkeypatch.setattr(HistogramDestructor, "_fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        destructor.fit(unit_data(400))  # float64 data: the fit would move the destructor
    assert len(calls) == 2
    assert_same(destructor, before)
    unfitted = deep(init=None)
    before = state_of(unfitted)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        unfitted.fit(unit_data(400))
    assert_same(unfitted, before)


# -- 3. fit refuses what it cannot use ---------------------------------------------------------


def small_flow():
    torch.manual_seed(0)
    return build_flow("realnvp", 2, transforms=1, hidden=(4,))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"clip_grad": 0}, "clip_grad"),
        ({"clip_grad": -1.0}, "clip_grad"),
        ({"patience": -1, "callbacks": []}, "patience"),
        ({"weights": torch.ones(2, 100)}, r"\(2, 100\)"),
        ({"weights": "zero-validation"}, "every validation row has weight zero"),
        ({"weights": "zero-training"}, "every training row has weight zero"),
    ],
)
def test_fit_refuses_before_training(options, message):
    from pyroflows.infer import EarlyStopping

    x = torch.randn(100, 2, generator=torch.Generator().manual_seed(1))
    val = fit(small_flow(), x, epochs=1, progress=False).val_index
    if options.get("weights") == "zero-validation":
        options["weights"] = torch.ones(100).index_fill(0, val, 0.0)
    elif options.get("weights") == "zero-training":
        options["weights"] = torch.zeros(100).index_fill(0, val, 1.0)
    if "callbacks" in options:  # patience is checked even when a callback stops early
        options["callbacks"] = [EarlyStopping(3)]
    flow = small_flow()
    before = state_of(flow)
    with pytest.raises(ValueError, match=message):
        fit(flow, x, epochs=2, progress=False, **options)
    assert_same(flow, before)
    assert fit(small_flow(), x, epochs=1, patience=None, progress=False).history


class FailInEpoch(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch, self.best = epoch, None

    def on_epoch_end(self, state: FitState) -> bool:
        self.best = {k: v.clone() for k, v in state.best_state.items()}
        return False

    def on_step_end(self, state: FitState) -> bool:
        if state.epoch == self.epoch:
            raise RuntimeError("callback failed")
        return False


def test_an_error_during_training_leaves_the_best_state_in_eval_mode():
    x = torch.randn(200, 2, generator=torch.Generator().manual_seed(2))
    flow, failing = small_flow(), FailInEpoch(3)
    with pytest.raises(RuntimeError, match="callback failed"):
        fit(flow, x, epochs=5, lr=1e-2, callbacks=[failing], progress=False)
    assert not flow.training
    assert all(torch.equal(v, failing.best[k]) for k, v in flow.state_dict().items())


# -- 4. interrupting fine-tuning keeps the best state ------------------------------------------


def test_fine_tune_interrupted_returns_the_best_state_in_eval_mode():
    x = unit_data(400)
    destructor = deep(init=None).fit(x)
    result = fine_tune(
        destructor, x, epochs=10, lr=1e-2, callbacks=[InterruptAt(2)], progress=False
    )
    assert result.interrupted and result.stop_reason == "interrupted"
    assert len(result.history) == 2 and not destructor.training
    with torch.no_grad():
        held_out = float(destructor.log_prob(x[result.val_index]).mean())
    best = max(result.best_val_loglik, result.greedy_val_loglik)
    assert held_out == pytest.approx(best, abs=1e-9)


# -- 5. the public boundary of a flow ----------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float16, torch.int64, torch.float64])
def test_log_prob_of_another_dtype_names_both(dtype):
    flow = build_flow("maf", 2, transforms=1, hidden=(4,))
    with pytest.raises(TypeError, match=rf"{dtype}.*torch.float32"):
        flow().log_prob(torch.zeros(3, 2, dtype=dtype))
    conditional = build_flow("maf", 2, context=1, transforms=1, hidden=(4,))
    with pytest.raises(TypeError, match=rf"context has dtype {dtype}"):
        conditional(torch.zeros(3, 1, dtype=dtype))


def test_a_context_batch_that_does_not_broadcast_names_both_shapes():
    flow = build_flow("maf", 2, context=1, transforms=1, hidden=(4,))
    with pytest.raises(ValueError, match=r"\(3,\).*\(4,\)"):
        flow(torch.zeros(4, 1)).log_prob(torch.zeros(3, 2))
    assert flow(torch.zeros(4, 1)).log_prob(torch.zeros(5, 1, 2)).shape == (5, 4)


def test_sample_takes_an_int_as_a_one_dimensional_shape():
    d = build_flow("realnvp", 2, transforms=1, hidden=(4,))()
    assert d.sample(5).shape == (5, 2) and d.rsample(3).shape == (3, 2)
    assert d.rsample_and_log_prob(4)[1].shape == (4,)
    for bad in (2.5, "5", (2, -1)):
        with pytest.raises(TypeError, match="sample_shape"):
            d.sample(bad)


def test_nan_under_validation_names_the_argument():
    flow = build_flow("maf", 2, context=1, transforms=1, hidden=(4,))
    nan = torch.tensor([[float("nan"), 0.0]])
    enabled = dist.is_validation_enabled()
    try:
        pyro.enable_validation(True)
        with pytest.raises(ValueError, match="value has NaN"):
            flow(torch.zeros(1, 1)).log_prob(nan)
        with pytest.raises(ValueError, match="context has NaN"):
            flow(torch.tensor([[float("nan")]]))
        pyro.enable_validation(False)  # the documented way to skip the check (no host sync)
        assert torch.isnan(flow(torch.zeros(1, 1)).log_prob(nan)).all()
    finally:
        pyro.enable_validation(enabled)
