"""Maximum-likelihood fitting: known answers, early stopping, weights, context, bad input."""

from __future__ import annotations

import math

import pytest
import torch

from pyroflows.flows import build
from pyroflows.infer import fit

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
    result = fit(flow, x, epochs=300, lr=1e-2, batch_size=16, validation=0.3, patience=5, progress=False)
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
