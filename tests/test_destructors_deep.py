"""Deep destructors (greedy growth, depth selection, monotonicity, fine-tuning, as_flow) and
the MNIST loader's preprocessing Jacobians."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pyroflows
from pyroflows.data import mnist
from pyroflows.data.toy import toy
from pyroflows.destructors import (
    DeepDestructor,
    Destructor,
    NormalCdfDestructor,
    TreeDestructor,
    available,
    build,
)
from pyroflows.infer import fine_tune


@pytest.fixture
def moons(device, dtype):  # noqa: ANN001, ANN201
    return toy("moons", 3000, seed=1).to(device, dtype), toy("moons", 2000, seed=2).to(
        device, dtype
    )


def test_greedy_growth_history_and_monotonicity(moons):
    x, test = moons
    deep = DeepDestructor(
        2, layer="copula", max_layers=8, layer_options={"bins": 20}, progress=False
    ).fit(x)
    hist = deep.history
    assert hist[0]["layer"] == 0 and len(hist) == len(deep.layers)  # init + layers
    assert all({"train_loglik", "val_loglik", "accepted", "gain"} <= set(h) for h in hist)
    trains = [h["train_loglik"] for h in hist]
    assert trains == sorted(trains)
    assert all(math.isfinite(h["val_loglik"]) for h in hist)
    # Deeper than one layer helps on moons, and the held-out score is a sane number.
    assert hist[-1]["train_loglik"] > hist[1]["train_loglik"] > hist[0]["train_loglik"]
    assert -3.2 < deep.score(test) < -2.3


@pytest.mark.parametrize("validation", [0, 0.2, 3])
def test_max_time_starts_no_layer_once_spent(moons, validation):
    """A spent budget leaves the init layer only (a valid destructor that scores finitely);
    a generous one changes nothing."""
    x, test = moons
    options = {"layer": "copula", "max_layers": 3, "layer_options": {"bins": 20}}
    hurried = DeepDestructor(2, validation=validation, max_time=1e-9, progress=False, **options)
    hurried.fit(x)
    assert len(hurried.history) == 1 and len(hurried.layers) == 1
    assert math.isfinite(hurried.score(test))
    relaxed = DeepDestructor(2, validation=validation, max_time=1e6, progress=False, **options)
    plain = DeepDestructor(2, validation=validation, progress=False, **options)
    assert relaxed.fit(x).score(test) == plain.fit(x).score(test)
    with pytest.raises(ValueError, match="max_time"):
        DeepDestructor(2, max_time=-1.0)


@pytest.mark.parametrize("validation", [0, 0.2, 3])
def test_validation_modes(moons, validation):
    x, _ = moons
    deep = DeepDestructor(
        2,
        layer="histogram",
        rotation="random",
        max_layers=4,
        validation=validation,
        layer_options={"bins": 20},
        progress=False,
    ).fit(x)
    assert 1 <= len(deep.layers) <= 5
    trains = [h["train_loglik"] for h in deep.history]
    assert trains == sorted(trains)
    if validation:
        assert all(math.isfinite(h["val_loglik"]) for h in deep.history)


def test_depth_is_chosen_on_held_out_data(moons):
    x, _ = moons
    # Histograms with many bins on few points overfit: held-out likelihood must stop growth.
    deep = DeepDestructor(
        2,
        layer="histogram",
        rotation="random",
        max_layers=30,
        validation=0.3,
        refit=False,
        tol=0.0,
        patience=2,
        layer_options={"bins": 200, "alpha": 0.01},
        progress=False,
    ).fit(x[:600])
    vals = [h["val_loglik"] for h in deep.history]
    assert len(deep.layers) < 31
    assert vals[-1] == max(vals)


class _BadLayer(NormalCdfDestructor):
    """A layer whose fit is deliberately wrong, so its training gain is negative."""

    def _fit(self, x, w):  # noqa: ANN001, ANN202
        super()._fit(x, w)
        self.loc.add_(5.0)


def test_a_layer_that_lowers_the_likelihood_becomes_the_identity(moons):
    x, _ = moons
    deep = DeepDestructor(
        2, layer=lambda d: _BadLayer(d), max_layers=3, validation=0, patience=10, progress=False
    ).fit(x)
    assert [h["accepted"] for h in deep.history[1:]] == [False] * 3
    trains = [h["train_loglik"] for h in deep.history]
    assert trains == sorted(trains) and trains[-1] == trains[0]
    assert deep.layer_codes.tolist() == [0, 2, 2, 2]
    fresh = DeepDestructor(2, layer=lambda d: _BadLayer(d), max_layers=3, validation=0).to(x)
    fresh.load_state_dict(deep.state_dict())
    assert torch.equal(fresh.log_prob(x[:5]), deep.log_prob(x[:5]))


def test_layer_factory_and_unit_data(device, dtype):
    x = torch.special.ndtr(toy("8gaussians", 2000, seed=3).to(device, dtype) / 2)
    deep = DeepDestructor(
        2, layer=lambda d: TreeDestructor(d, max_leaves=16), init=None, max_layers=3, progress=False
    ).fit(x)
    assert deep.domain == "unit" and deep.history[0]["train_loglik"] == 0.0
    assert deep.history[-1]["train_loglik"] > 0.3
    with pytest.raises(ValueError, match="unit cube"):
        deep.fit(x + 1)


def test_real_layers_get_an_inverse_normal_cdf(moons, tol):
    x, _ = moons
    deep = DeepDestructor(2, layer="gaussian", max_layers=2, progress=False).fit(x)
    u = deep.to_uniform(x[:100])
    assert (deep.from_uniform(u) - x[:100]).abs().max() < 10 * tol["roundtrip"]


def test_fine_tune_improves_training_likelihood(moons):
    x, _ = moons
    deep = DeepDestructor(
        2, layer="copula", max_layers=3, layer_options={"bins": 20}, progress=False
    ).fit(x)
    before = deep.score(x)
    result = fine_tune(deep, x, epochs=3, lr=1e-2, batch_size=256, validation=0.0, progress=False)
    assert len(result.history) == 3
    assert deep.score(x) > before
    with pytest.raises(ValueError, match="NaN"):
        fine_tune(deep, torch.full_like(x, math.nan), epochs=1)


def test_fine_tune_keeps_the_greedy_start_when_no_epoch_beats_it(moons):
    """With a validation split, the greedy destructor competes on fit's held-out points: a
    zero learning rate cannot beat it, so its parameters stay (bit for bit)."""
    x, _ = moons
    deep = DeepDestructor(
        2, layer="copula", max_layers=2, layer_options={"bins": 20}, progress=False
    ).fit(x)
    before = {k: v.clone() for k, v in deep.state_dict().items()}
    result = fine_tune(deep, x, epochs=2, lr=0.0, validation=0.2, progress=False)
    assert result.kept_greedy and math.isfinite(result.greedy_val_loglik)
    assert result.greedy_val_loglik == pytest.approx(result.best_val_loglik, abs=1e-6)
    assert all(torch.equal(before[k], v) for k, v in deep.state_dict().items())
    with pytest.raises(TypeError, match="Destructor"):
        fine_tune(torch.nn.Linear(2, 2), x)
    with pytest.raises(RuntimeError, match="not fitted"):
        fine_tune(DeepDestructor(2, progress=False), x)


def test_deep_as_flow_is_a_flow(moons):
    x, _ = moons
    deep = DeepDestructor(
        2, layer="copula", max_layers=2, layer_options={"bins": 20}, progress=False
    ).fit(x)
    flow = deep.as_flow()
    assert isinstance(flow, pyroflows.Flow)
    with torch.no_grad():
        assert torch.allclose(flow().log_prob(x[:10]), deep.log_prob(x[:10]))
    assert flow().sample((4,)).shape == (4, 2)


def test_bad_options():
    with pytest.raises(ValueError, match="max_layers"):
        DeepDestructor(2, max_layers=0)
    with pytest.raises(ValueError, match="validation"):
        DeepDestructor(2, validation=1)
    with pytest.raises(ValueError, match="rotation"):
        DeepDestructor(2, rotation="spin")
    with pytest.raises(ValueError, match="unknown destructor"):
        build("nope", 2)
    with pytest.raises(TypeError, match="unknown options"):
        build("histogram", 2, leaves=3)
    assert isinstance(build("deep", 2, max_layers=1), Destructor)
    assert "deep" in available()


def test_fewer_points_than_dimensions():
    x = torch.randn(5, 8, dtype=torch.float64)
    for name in ("gaussian", "copula", "mixture"):
        with pytest.raises(ValueError, match="at least 9 points"):
            build(name, 8).fit(torch.special.ndtr(x) if name == "copula" else x)


# -- MNIST loader ----------------------------------------------------------------------------


def test_mnist_missing_file_error(tmp_path):
    with pytest.raises(mnist.MNISTNotFoundError, match="PYROFLOWS_MNIST"):
        mnist.load_mnist("train", path=tmp_path)
    with pytest.raises(ValueError, match="split"):
        mnist.load_mnist("valid", path=tmp_path)


def test_mnist_from_any_path_and_preprocessing_jacobian(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 28, 28), dtype=np.uint8)
    np.savez(tmp_path / "digits.npz", images=images, labels=np.arange(4, dtype=np.uint8))
    loaded, labels = mnist.load_mnist("test", path=tmp_path / "digits.npz")
    assert loaded.shape == (4, 28, 28) and labels.tolist() == [0, 1, 2, 3]
    x = mnist.dequantize(loaded, seed=1)
    assert x.shape == (4, 784) and (x > 0).all() and (x < 1).all()
    assert ((x * 256).floor() == torch.as_tensor(images.reshape(4, -1)).double()).all()
    y, ladj = mnist.logit_transform(x[:, :5])
    J = torch.autograd.functional.jacobian(lambda v: mnist.logit_transform(v)[0], x[0, :5])
    assert torch.allclose(ladj[0], torch.linalg.slogdet(J)[1])
    y2, ladj2 = mnist.preprocess(loaded, seed=1)
    assert torch.allclose(y2[:, :5], y) and ladj2.shape == (4,)
    # Bits per dim of the uniform density on [0,1]^784 is exactly 8.
    assert abs(mnist.bits_per_dim(0.0) - 8.0) < 1e-12


@pytest.mark.skipif(
    not (mnist.DEFAULT_DIR / "mnist_train_5k.npz").is_file(), reason="MNIST files absent"
)
def test_mnist_shared_files_load():
    images, labels = mnist.load_mnist("train")
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8 and len(labels) == 5000


def test_smooth_histogram_keeps_bin_masses_and_is_exact(device, dtype, tol):
    from helpers import jacobian_logdet

    from pyroflows.destructors import HistogramDestructor

    g = torch.Generator().manual_seed(0)
    x = torch.rand(3000, 2, generator=g, dtype=torch.float64).pow(2).to(device, dtype)
    plain = HistogramDestructor(2, bins=10).fit(x)
    smooth = HistogramDestructor(2, bins=10, smooth=True).fit(x)
    edges = torch.linspace(0, 1, 11, device=device, dtype=dtype)[:, None].expand(11, 2)
    # Same CDF at every bin edge, so the same mass in every bin.
    assert torch.allclose(plain.to_uniform(edges), smooth.to_uniform(edges), atol=tol["roundtrip"])
    u = smooth.to_uniform(x[:50])
    assert (smooth.from_uniform(u) - x[:50]).abs().max() < tol["roundtrip"]
    expected = jacobian_logdet(lambda v: smooth.call_and_ladj(v)[0], x[:5])
    assert (smooth.log_prob(x[:5]) - expected).abs().max() < tol["logdet"]
