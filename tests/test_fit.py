"""Maximum-likelihood fitting: known answers, early stopping, weights, context, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import InterruptAt

from pyroflows import Flow
from pyroflows.flows import build
from pyroflows.infer import (
    Callback,
    Dequantized,
    EarlyStopping,
    FitResult,
    FitState,
    FreshData,
    fit,
)
from pyroflows.transforms.triangular import LowerTriangularAffine

SMALL = {"transforms": 2, "hidden": (16, 16)}


def correlated_gaussian(n: int, seed: int = 0) -> tuple[torch.Tensor, float]:
    """Samples of N(0, S) and the exact expected log-density (minus the entropy)."""
    L = torch.tensor([[1.0, 0.0], [0.9, 0.4]])
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)) @ L.T
    log_det_cov = 2 * torch.log(torch.diagonal(L)).sum().item()
    expected = -0.5 * 2 * math.log(2 * math.pi * math.e) - 0.5 * log_det_cov
    return x, expected


@pytest.mark.parametrize("name", ["maf", "realnvp"])
def test_fit_reaches_the_true_entropy(name):
    torch.manual_seed(0)
    x, expected = correlated_gaussian(6000)
    test, _ = correlated_gaussian(4000, seed=1)
    flow = build(name, 2, **SMALL)
    result = fit(flow, x, epochs=40, lr=3e-3, progress=False)
    test_loglik = flow().log_prob(test).mean().item()
    assert abs(test_loglik - expected) < 0.05
    assert result.history[-1]["train_loglik"] > result.history[0]["train_loglik"]


def test_early_stopping_keeps_the_best_parameters():
    torch.manual_seed(0)
    x, _ = correlated_gaussian(60)
    flow = build("maf", 2, transforms=3, hidden=(64, 64))
    result = fit(
        flow, x, epochs=300, lr=1e-2, batch_size=16, validation=0.3, patience=5, progress=False
    )
    assert result.stopped_early and result.best_epoch < len(result.history)
    vals = [h["val_loglik"] for h in result.history]
    assert result.best_val_loglik == max(vals)
    # The flow holds the best epoch's parameters: its held-out log-likelihood is that value.
    with torch.no_grad():
        held_out = flow().log_prob(x[result.val_index]).mean().item()
    assert held_out == pytest.approx(result.best_val_loglik, abs=1e-5)
    assert len(result.val_index) == 18


def test_weights_select_the_population():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(2000, 1, generator=g) - 3, torch.randn(2000, 1, generator=g) + 3])
    weights = torch.cat([torch.ones(2000), torch.zeros(2000)])
    flow = build("maf", 1, **SMALL)
    fit(flow, x, weights=weights, epochs=30, lr=5e-3, progress=False)
    samples = flow().sample((4000,))
    assert samples.mean().item() == pytest.approx(-3.0, abs=0.15)
    assert samples.std().item() == pytest.approx(1.0, abs=0.1)


def test_conditional_fit_learns_the_regression():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    c = 2 * torch.rand(4000, 1, generator=g) - 1
    y = torch.cat([2 * c, -c], -1) + 0.1 * torch.randn(4000, 2, generator=g)
    flow = build("nsf", 2, context=1, **SMALL)
    fit(flow, y, context=c, epochs=40, lr=3e-3, progress=False)
    query = torch.tensor([[-0.5], [0.0], [0.5]])
    with torch.no_grad():
        means = flow(query).sample((3000,)).mean(0)
    truth = torch.cat([2 * query, -query], -1)
    assert (means - truth).abs().max() < 0.05


def test_fit_moves_data_to_the_flows_dtype():
    x, _ = correlated_gaussian(500)
    flow = build("maf", 2, **SMALL).double()
    fit(flow, x.float(), epochs=2, progress=False)
    assert all(p.dtype == torch.float64 for p in flow.parameters())


def test_non_finite_loss_restores_parameters_and_says_why():
    flow = build("maf", 2, **SMALL)
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    x = torch.full((64, 2), 1e25)  # finite data whose float32 log-density overflows
    with pytest.raises(FloatingPointError, match="smaller lr, or"):
        fit(flow, x, epochs=2, validation=0.0, progress=False)
    assert all(torch.equal(before[k], v) for k, v in flow.state_dict().items())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"data": torch.tensor([[0.0, float("nan")]] * 10)}, "NaN or infinite"),
        ({"data": torch.tensor([[0.0, float("inf")]] * 10)}, "NaN or infinite"),
        ({"data": torch.zeros(10, 3)}, r"shape \(n, 2\)"),
        ({"data": torch.zeros(10)}, r"shape \(n, 2\)"),
        ({"context": torch.zeros(10, 1)}, "takes no context"),
        ({"weights": -torch.ones(10)}, "non-negative"),
        ({"weights": torch.ones(9)}, "rows"),
        ({"validation": 1.5}, "validation"),
        ({"epochs": 0}, "epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"data": torch.zeros(2, 2), "validation": 0.1}, "too few"),
    ],
)
def test_bad_input_is_rejected_before_any_update(kwargs, message):
    flow = build("maf", 2, **SMALL)
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    args = {"data": torch.randn(10, 2), **kwargs}
    with pytest.raises(ValueError, match=message):
        fit(flow, args.pop("data"), **args, progress=False)
    assert all(torch.equal(before[k], v) for k, v in flow.state_dict().items())


def test_conditional_flow_needs_matching_context():
    flow = build("maf", 2, context=3, **SMALL)
    with pytest.raises(ValueError, match="conditional"):
        fit(flow, torch.randn(10, 2), progress=False)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        fit(flow, torch.randn(10, 2), context=torch.randn(10, 2), progress=False)
    with pytest.raises(ValueError, match="rows"):
        fit(flow, torch.randn(10, 2), context=torch.randn(8, 3), progress=False)
    with pytest.raises(TypeError, match="pyroflows.Flow"):
        fit(torch.nn.Linear(2, 2), torch.randn(10, 2))


def test_standardized_flow_fits_raw_scale_data_and_round_trips(tmp_path):
    from pyroflows.flows import load, save

    x, expected = correlated_gaussian(4000)
    scale, shift = torch.tensor([1000.0, 0.001]), torch.tensor([5e4, -3.0])
    raw = x * scale + shift
    flow = build("maf", 2, standardize=raw, **SMALL)
    fit(flow, raw, epochs=30, lr=3e-3, progress=False)
    # The density of raw = x * scale + shift is the density of x minus log|scale|.
    test, _ = correlated_gaussian(3000, seed=1)
    loglik = flow().log_prob(test * scale + shift).mean().item() + scale.log().sum().item()
    assert abs(loglik - expected) < 0.05
    save(flow, tmp_path / "m.pt")
    loaded = load(tmp_path / "m.pt")
    assert loaded.config["standardize"] is True
    assert torch.equal(loaded().log_prob(raw[:10]), flow().log_prob(raw[:10]))


def test_fit_trains_an_autoregressive_density_model():
    """``fit`` takes the density models too: MADE (Gaussian conditionals) represents a
    correlated Gaussian exactly, so its test log-likelihood reaches minus the entropy."""
    from pyroflows import density

    torch.manual_seed(0)
    x, expected = correlated_gaussian(6000)
    model = density.build("made", 2, hidden=(16, 16))
    fit(model, x, epochs=40, lr=3e-3, progress=False)
    test, _ = correlated_gaussian(4000, seed=1)
    assert abs(model().log_prob(test).mean().item() - expected) < 0.03


# -- any density model, callbacks, budgets, schedules, checkpoints -------------------------------


def affine_flow() -> Flow:
    """One full affine layer x = mu + L z: the flows whose MLE is the sample mean and the
    (biased) sample covariance."""
    return Flow([LowerTriangularAffine(2)]).double()


def mle_fit(flow: Flow, x: torch.Tensor, **options) -> FitResult:
    return fit(
        flow,
        x,
        epochs=600,
        batch_size=len(x),
        lr=0.05,
        validation=0.0,
        patience=None,
        clip_grad=None,
        progress=False,
        **options,
    )


def test_one_affine_layer_reaches_the_mle_mean_and_covariance():
    x, _ = correlated_gaussian(1000)
    x = x.double() + torch.tensor([1.0, -2.0], dtype=torch.float64)
    flow = affine_flow()
    result = mle_fit(flow, x)
    assert result.stop_reason == "epochs" and len(result.history) == 600
    L = flow.transforms[0].scale_tril().detach()
    centred = x - x.mean(0)
    assert torch.allclose(flow.transforms[0].loc.detach(), x.mean(0), atol=1e-4)
    assert torch.allclose(L @ L.T, centred.T @ centred / len(x), atol=1e-4)


def test_a_zero_weight_ignores_its_row():
    x, _ = correlated_gaussian(500)
    x = x.double()
    outliers = torch.full((5, 2), 50.0, dtype=torch.float64)
    flow = affine_flow()
    mle_fit(flow, torch.cat([x, outliers]), weights=torch.cat([torch.ones(500), torch.zeros(5)]))
    L = flow.transforms[0].scale_tril().detach()
    centred = x - x.mean(0)
    assert torch.allclose(flow.transforms[0].loc.detach(), x.mean(0), atol=1e-4)
    assert torch.allclose(L @ L.T, centred.T @ centred / len(x), atol=1e-4)


def test_early_stopping_is_a_callback_with_min_delta():
    x, _ = correlated_gaussian(300)
    flow = build("maf", 2, **SMALL)
    # No gain is ever large enough: the first epoch counts (from -inf), then 2 stale ones.
    result = fit(
        flow, x, epochs=50, callbacks=[EarlyStopping(patience=2, min_delta=1e9)], progress=False
    )
    assert result.stopped_early and result.stop_reason == "early_stopping"
    assert len(result.history) == 3
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="min_delta"):
        EarlyStopping(min_delta=-1.0)


class Recorder(Callback):
    """Counts the hooks' calls and records the learning rate after every epoch."""

    def __init__(self) -> None:
        self.calls = {"start": 0, "epoch_start": 0, "step": 0, "epoch_end": 0, "end": 0}
        self.lrs: list[float] = []

    def on_fit_start(self, state: FitState) -> None:
        self.calls["start"] += 1

    def on_epoch_start(self, state: FitState) -> None:
        self.calls["epoch_start"] += 1

    def on_step_end(self, state: FitState) -> bool:
        self.calls["step"] += 1
        return False

    def on_epoch_end(self, state: FitState) -> bool:
        self.calls["epoch_end"] += 1
        self.lrs.append(state.optimizer.param_groups[0]["lr"])
        return False

    def on_fit_end(self, state: FitState) -> None:
        self.calls["end"] += 1


def test_max_time_stops_after_the_step_where_it_runs_out_and_keeps_the_best():
    x, _ = correlated_gaussian(600)
    flow = build("maf", 2, **SMALL)
    recorder = Recorder()
    result = fit(
        flow, x, epochs=50, batch_size=32, max_time=1e-9, callbacks=[recorder], progress=False
    )
    assert result.stop_reason == "max_time" and not result.stopped_early
    # One step (of 17 in an epoch), then the epoch's validation pass and history entry.
    assert recorder.calls == {"start": 1, "epoch_start": 1, "step": 1, "epoch_end": 1, "end": 1}
    assert len(result.history) == 1 and result.best_epoch == 1
    with torch.no_grad():
        held_out = flow().log_prob(x[result.val_index]).mean().item()
    assert held_out == pytest.approx(result.best_val_loglik, abs=1e-5)
    with pytest.raises(ValueError, match="max_time"):
        fit(flow, x, max_time=0.0, progress=False)


def test_learning_rate_schedules():
    x, _ = correlated_gaussian(256)
    flow = build("maf", 2, **SMALL)
    recorder = Recorder()
    fit(
        flow,
        x,
        epochs=4,
        lr=0.01,
        schedule="cosine",
        patience=None,
        callbacks=[recorder],
        progress=False,
    )
    # Cosine annealing over the 4 epochs, stepped after each: lr * (1 + cos(pi t / 4)) / 2.
    expected = [0.01 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(1, 5)]
    assert recorder.lrs == pytest.approx(expected, abs=1e-12)
    recorder = Recorder()
    warmup = lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 / (1 + s))  # noqa: E731
    fit(
        flow,
        x,
        epochs=2,
        batch_size=32,
        lr=0.01,
        validation=0.0,
        schedule=warmup,
        schedule_interval="step",
        callbacks=[recorder],
        progress=False,
    )
    assert recorder.calls["step"] == 16
    assert recorder.lrs == pytest.approx([0.01 / 9, 0.01 / 17], abs=1e-12)
    with pytest.raises(ValueError, match="schedule"):
        fit(flow, x, schedule="linear", progress=False)
    with pytest.raises(ValueError, match="schedule_interval"):
        fit(flow, x, schedule="cosine", schedule_interval="batch", progress=False)


def test_keyboard_interrupt_keeps_the_best_state_and_eval_mode():
    x, _ = correlated_gaussian(300)
    flow = build("maf", 2, **SMALL)
    recorder = Recorder()
    result = fit(flow, x, epochs=20, callbacks=[InterruptAt(3), recorder], progress=False)
    assert result.interrupted and result.stop_reason == "interrupted"
    assert len(result.history) == 3 and not flow.training
    assert recorder.calls["end"] == 1
    assert result.best_val_loglik == max(h["val_loglik"] for h in result.history)
    with torch.no_grad():
        held_out = flow().log_prob(x[result.val_index]).mean().item()
    assert held_out == pytest.approx(result.best_val_loglik, abs=1e-5)


def test_resume_from_a_checkpoint_ends_where_an_uninterrupted_fit_does(tmp_path):
    x, _ = correlated_gaussian(400)
    x = x.double()
    options = {
        "epochs": 6,
        "batch_size": 64,
        "lr": 3e-3,
        "patience": 2,
        "min_delta": 0.01,
        "schedule": "cosine",
        "progress": False,
    }

    def new_flow() -> Flow:
        torch.manual_seed(0)
        return build("maf", 2, **SMALL).double()

    whole = new_flow()
    torch.manual_seed(1)
    expected = fit(whole, x, **options)
    path = tmp_path / "fit.pt"
    first = new_flow()
    torch.manual_seed(1)
    stopped = fit(first, x, checkpoint=path, callbacks=[InterruptAt(3)], **options)
    assert stopped.interrupted and path.exists() and not (tmp_path / "fit.pt.tmp").exists()
    torch.manual_seed(123)  # resuming restores every RNG state, so this must not matter
    resumed_flow = build("maf", 2, **SMALL).double()  # other initial parameters
    resumed = fit(resumed_flow, x, resume=path, checkpoint=path, **options)
    assert [h["val_loglik"] for h in resumed.history] == [h["val_loglik"] for h in expected.history]
    assert resumed.best_epoch == expected.best_epoch and resumed.stop_reason == expected.stop_reason
    assert all(
        torch.equal(a, b)
        for a, b in zip(
            resumed_flow.state_dict().values(), whole.state_dict().values(), strict=True
        )
    )
    with pytest.raises(ValueError, match="shape"):
        fit(resumed_flow, x[:100], resume=path, **options)


def test_fresh_data_redraws_the_training_rows_only():
    x, _ = correlated_gaussian(200)
    calls = []

    def draw(epoch: int, index: torch.Tensor) -> torch.Tensor:
        calls.append((epoch, index.clone()))
        return x[index] + 0.01 * epoch

    result = fit(
        build("maf", 2, **SMALL),
        x,
        epochs=3,
        validation=0.2,
        callbacks=[FreshData(draw)],
        progress=False,
    )
    assert [epoch for epoch, _ in calls] == [1, 2, 3]
    train = set(calls[0][1].tolist())
    assert len(train) == 160 and not train & set(result.val_index.tolist())


def test_an_image_flow_trains_through_fit_on_pixel_levels():
    """Glow on (1, 4, 4) images of 8-bit levels, through the dequantisation bound."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(40, 200, 4).reshape(1, 1, 4)
    k = (ramp + 20 * torch.randn(400, 1, 4, 1, generator=g)).clamp(0, 255).round().to(torch.uint8)
    model = Dequantized(
        build("glow", (1, 4, 4), levels=1, transforms=2, hidden=(8, 8)), logit_alpha=0.05
    )
    result = fit(model, k, epochs=8, batch_size=50, lr=3e-3, progress=False)
    vals = [h["val_loglik"] for h in result.history]
    assert result.best_val_loglik == max(vals) and max(vals) > vals[0] + 1.0
    with pytest.raises(ValueError, match=r"shape \(n, 1, 4, 4\)"):
        fit(model, k.reshape(-1, 16), progress=False)


def test_pixelcnn_trains_through_fit_on_integer_levels():
    from pyroflows.density.pixelcnn import PixelCNN

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    # Rows of one level each: every pixel predicts the next one.
    k = torch.randint(0, 4, (300, 1, 4, 1), generator=g).expand(300, 1, 4, 4).contiguous()
    model = PixelCNN((1, 4, 4), "categorical", levels=4, hidden=8, blocks=1)
    result = fit(model, k, epochs=6, batch_size=50, lr=1e-2, progress=False)
    vals = [h["val_loglik"] for h in result.history]
    assert vals[0] < max(vals) == result.best_val_loglik
    # Better than independent uniform pixels (-16 log 4) once the rows are learnt.
    assert result.best_val_loglik > -16 * math.log(4) + 5
