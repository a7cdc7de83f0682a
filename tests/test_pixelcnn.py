"""Masked convolutions, the PixelCNN conditioner and the PixelCNN density model."""

from __future__ import annotations

import itertools

import pyro
import pytest
import torch
from helpers import perturb

from pyroflows.density.pixelcnn import PixelCNN
from pyroflows.nn import MaskedConv2d, PixelCNNConditioner, pixelcnn_mask


def allowed_inputs(shape: tuple[int, int, int]) -> torch.Tensor:
    """allowed[c, i, j, c2, i2, j2]: may output (c, i, j) depend on input (c2, i2, j2)?"""
    C, H, W = shape
    allowed = torch.zeros(*shape, *shape, dtype=torch.bool)
    for c, i, j, c2, i2, j2 in itertools.product(range(C), range(H), range(W), repeat=2):
        allowed[c, i, j, c2, i2, j2] = (i2, j2) < (i, j) or ((i2, j2) == (i, j) and c2 < c)
    return allowed


def all_images(shape: tuple[int, int, int], levels: int) -> torch.Tensor:
    n = shape[0] * shape[1] * shape[2]
    values = list(itertools.product(range(levels), repeat=n))
    return torch.tensor(values, dtype=torch.float64).reshape(-1, *shape)


def test_mask_known_values():
    a = pixelcnn_mask(1, 1, 3, "A")[0, 0]
    b = pixelcnn_mask(1, 1, 3, "B")[0, 0]
    assert torch.equal(a, torch.tensor([[1.0, 1, 1], [1, 0, 0], [0, 0, 0]]))
    assert torch.equal(b, torch.tensor([[1.0, 1, 1], [1, 1, 0], [0, 0, 0]]))
    # RGB with 6 maps per layer (two per colour): centre taps are block triangular.
    centre_a = pixelcnn_mask(6, 3, 3, "A", groups=3)[:, :, 1, 1]
    centre_b = pixelcnn_mask(6, 6, 3, "B", groups=3)[:, :, 1, 1]
    assert torch.equal(
        centre_a, torch.tensor([[0.0, 0, 0]] * 2 + [[1.0, 0, 0]] * 2 + [[1.0, 1, 0]] * 2)
    )
    expected_b = torch.kron(torch.tril(torch.ones(3, 3)), torch.ones(2, 2))
    assert torch.equal(centre_b, expected_b)
    # Off-centre taps ignore the channel groups.
    assert pixelcnn_mask(6, 6, 3, "A", groups=3)[:, :, 0].eq(1).all()


def test_mask_errors():
    with pytest.raises(ValueError, match="mask_type"):
        pixelcnn_mask(1, 1, 3, "C")
    with pytest.raises(ValueError, match="odd"):
        MaskedConv2d(1, 4, 4, "A")
    with pytest.raises(ValueError, match="channel groups"):
        MaskedConv2d(3, 2, 3, "B", groups=3)


@pytest.mark.parametrize("channels", [1, 3])
def test_conditioner_dependence_pattern(channels):
    """Autograd Jacobian: output (c, i, j) depends exactly on earlier pixels / channels."""
    torch.manual_seed(0)
    shape = (channels, 4, 4)
    net = perturb(
        PixelCNNConditioner(
            channels,
            2,
            hidden=6 * channels,
            blocks=2,
            kernel_size=3,
            first_kernel_size=3,
            context=2,
            activation="tanh",
        ),
        0.3,
    ).double()
    x, c = torch.randn(*shape, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda v: net(v, c), x)  # (C, H, W, 2, C, H, W)
    depends = J.abs().amax(3) > 0
    allowed = allowed_inputs(shape)
    assert not depends[~allowed].any(), "an output sees the current value or a later pixel"
    # It really uses the past: the left and upper neighbours and earlier channels at the pixel.
    C, H, W = shape
    for k, i, j in itertools.product(range(C), range(H), range(W)):
        if j > 0:
            assert depends[k, i, j, :, i, j - 1].all()
        if i > 0:
            assert depends[k, i, j, :, i - 1, j].all()
        assert depends[k, i, j, :k, i, j].all()
    # And the context reaches every output.
    Jc = torch.autograd.functional.jacobian(lambda v: net(x, v), c)
    assert (Jc.abs().amax(-1) > 0).all()


CASES = [  # likelihood, shape, levels
    ("bernoulli", (1, 3, 3), 2),
    ("bernoulli", (2, 2, 2), 2),
    ("categorical", (1, 2, 2), 3),
    ("logistic", (1, 2, 2), 4),
    ("logistic", (2, 1, 2), 3),
]


@pytest.mark.parametrize(("likelihood", "shape", "levels"), CASES)
def test_probabilities_sum_to_one(likelihood, shape, levels):
    """Known normaliser: summing exp(log_prob) over every possible image gives 1."""
    torch.manual_seed(1)
    model = PixelCNN(
        shape,
        likelihood,
        levels=levels,
        mixtures=2,
        hidden=4 * shape[0],
        blocks=1,
        first_kernel_size=3,
        context=3,
    )
    model = perturb(model, 0.5).double()
    images = all_images(shape, levels)
    context = torch.randn(2, 1, 3, dtype=torch.float64)
    with torch.no_grad():
        log_p = model(context).log_prob(images)  # (2, n_images): two contexts
    assert log_p.shape == (2, images.shape[0])
    assert torch.allclose(log_p.logsumexp(-1).exp(), torch.ones(2, dtype=torch.float64), atol=1e-12)
    assert not torch.allclose(log_p[0], log_p[1])  # the context matters


@pytest.mark.parametrize(
    ("likelihood", "shape", "levels"),
    [("bernoulli", (1, 2, 2), 2), ("categorical", (1, 1, 2), 4), ("logistic", (2, 1, 1), 4)],
)
def test_samples_follow_log_prob(likelihood, shape, levels):
    """Pearson chi-square of 4000 samples against exp(log_prob) over all 16 images."""
    torch.manual_seed(2)
    model = perturb(
        PixelCNN(
            shape, likelihood, levels=levels, mixtures=2, hidden=4, blocks=1, first_kernel_size=3
        ),
        0.5,
    ).double()
    images = all_images(shape, levels)
    expected = model().log_prob(images).exp().detach() * 4000
    samples = model().sample((4000,))
    assert samples.shape == (4000, *shape)
    index = (
        samples.flatten(1).long() * levels ** torch.arange(samples[0].numel() - 1, -1, -1)
    ).sum(-1)
    counts = torch.bincount(index, minlength=images.shape[0]).double()
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 37.7  # 99.9% quantile of chi-square with 15 degrees of freedom


def test_shapes_context_and_errors():
    model = PixelCNN((1, 5, 5), "logistic", hidden=8, blocks=1, context=2)
    d = model(torch.randn(4, 2))
    assert d.batch_shape == (4,) and d.event_shape == (1, 5, 5)
    x = d.sample((3,))
    assert x.shape == (3, 4, 1, 5, 5) and ((x >= 0) & (x <= 255) & (x == x.round())).all()
    assert d.log_prob(x).shape == (3, 4) and d.log_prob(x[0, 0]).shape == (4,)
    assert d.expand((2, 4)).log_prob(x[0]).shape == (2, 4)
    # Inside a Pyro model with a plate, the trace's log-density is the sum of log_prob.
    c = torch.randn(4, 2)

    def pyro_model() -> None:
        with pyro.plate("images", 4):
            pyro.sample("x", model(c), obs=x[0])

    trace = pyro.poutine.trace(pyro_model).get_trace()
    assert torch.allclose(trace.log_prob_sum(), model(c).log_prob(x[0]).sum())
    with pytest.raises(ValueError, match=r"\(\.\.\., 1, 5, 5\)"):
        d.log_prob(torch.zeros(4, 1, 28, 28))
    # The value check is Pyro's argument validation, which other libraries may switch off
    # globally (stable-baselines3 does at import): switch it on here.
    with pyro.validation_enabled(True), pytest.raises(ValueError, match="integers 0..255"):
        model(c).log_prob(torch.full((4, 1, 5, 5), 0.5))
    with pytest.raises(ValueError, match="context"):
        model()
    with pytest.raises(ValueError, match="likelihood"):
        PixelCNN((1, 5, 5), "gaussian")
    with pytest.raises(ValueError, match="shape"):
        PixelCNN((28, 28))


def test_mnist_sized_log_prob_and_gradients():
    model = PixelCNN((1, 28, 28), "bernoulli", hidden=16, blocks=2)
    x = torch.bernoulli(torch.full((2, 1, 28, 28), 0.3))
    log_p = model().log_prob(x)
    assert log_p.shape == (2,) and torch.isfinite(log_p).all()
    # At initialisation every logit is some value; the log-likelihood is a sum of 784 terms.
    assert log_p.max() < 0
    (-log_p.mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_logistic_likelihood_gradients_stay_finite_for_wide_components():
    """log(1 - e^-x) under torch.where: the unused branch must not send NaN into gradients
    (a very wide logistic makes x = (upper - lower) tiny)."""
    from pyroflows.density.pixelcnn import _log1mexp

    x = torch.tensor([1e-9, 1e-3, 0.69, 0.7, 5.0, 50.0], dtype=torch.float32, requires_grad=True)
    value = _log1mexp(x)
    value.sum().backward()
    expected = torch.log(-torch.expm1(-x.detach().double()))
    assert torch.allclose(value.double(), expected, rtol=1e-5)
    assert torch.isfinite(x.grad).all()


def test_registry_entry_and_protocol():
    """PixelCNN is the density family's image entry of the one registry and meets the protocol."""
    import pyroflows
    from pyroflows import REGISTRY, DensityModel

    entry = REGISTRY.entry("pixelcnn", "density")
    assert entry.kind == "image" and "pixelcnn" in pyroflows.density.available("image")
    model = pyroflows.density.build(
        "pixelcnn", (1, 4, 4), 2, likelihood="categorical", levels=3, hidden=8, blocks=1
    )
    assert isinstance(model, PixelCNN) and isinstance(model, DensityModel)
    assert model.event_shape == (1, 4, 4) and model.context_features == 2 and model.levels == 3
    assert model.config == {
        "name": "pixelcnn",
        "features": (1, 4, 4),
        "context": 2,
        "options": {"likelihood": "categorical", "levels": 3, "hidden": 8, "blocks": 1},
    }
    with pytest.raises(TypeError, match="unknown options \\['bins'\\]"):
        pyroflows.density.build("pixelcnn", (1, 4, 4), bins=3)


def test_value_check_follows_pyro_switch_after_torch_compile():
    """The first ``torch.compile`` in a process turns torch's distribution validation default
    off for good while Pyro still reports validation on; the value check must follow Pyro's
    switch (this is why the far-tails test failed only after the compile tests had run)."""
    model = PixelCNN((1, 3, 3), "logistic", hidden=4, blocks=1, first_kernel_size=3)
    half = torch.full((2, 1, 3, 3), 0.5)
    with pyro.validation_enabled(True):
        torch.distributions.Distribution.set_default_validate_args(False)  # what dynamo does
        try:
            with pytest.raises(ValueError, match="integers 0..255"):
                model().log_prob(half)
            with pytest.raises(ValueError, match="integers 0..255"):
                model().expand((2,)).log_prob(half)
        finally:
            torch.distributions.Distribution.set_default_validate_args(True)
    with pyro.validation_enabled(False):
        assert model().log_prob(half).shape == (2,)  # unchecked when switched off
