"""Autoregressive density models (pyroflows.density): exact normalisation, sampling that
matches log_prob, the orderings' dependency pattern, Pyro interop and bad inputs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from helpers import perturb
from scipy import stats

import pyroflows
from pyroflows.density import (
    AutoregressiveDistribution,
    DensityBase,
    MADEDensity,
    MixtureOfGaussians,
    available,
    build,
)

REAL = ["made", "made-mog", "rnade"]
MODELS = [
    "made",
    "made-mog",
    "made-bernoulli",
    "nade",
    "rnade",
]  # this file's models (the registry may hold more)
SMALL = {
    "made": {"hidden": (16, 16), "activation": "tanh"},
    "made-mog": {"hidden": (16, 16), "components": 3, "activation": "tanh"},
    "made-bernoulli": {"hidden": (16, 16), "activation": "tanh"},
    "nade": {"hidden": 16},
    "rnade": {"hidden": 16, "components": 3, "activation": "tanh"},
}


def make(name: str, features: int, context: int = 0, seed: int = 0, **options):  # noqa: ANN003, ANN201
    torch.manual_seed(seed)
    model = build(name, features, context=context, **{**SMALL[name], **options})
    return perturb(model, scale=0.3, seed=seed).double()


def grid_2d(half_width: float = 30.0, points: int = 301) -> tuple[torch.Tensor, float]:
    g = torch.linspace(-half_width, half_width, points, dtype=torch.float64)
    xx, yy = torch.meshgrid(g, g, indexing="ij")
    return torch.stack([xx, yy], -1).reshape(-1, 2), float(g[1] - g[0]) ** 2


def test_registry():
    assert set(MODELS) <= set(available()) and available() == sorted(available())
    assert "maf-mog" in pyroflows.flows.available()
    model = build("made", 3, hidden=(8,))
    assert model.config == {
        "name": "made",
        "features": 3,
        "context": 0,
        "options": {"hidden": (8,)},
    }
    # The vector models are the vector kind; PixelCNN is the density family's image entry and
    # refuses a vector size, as an unknown name is refused.
    assert set(MODELS) <= set(available("vector")) and "pixelcnn" not in available("vector")
    with pytest.raises(ValueError, match="unknown density model 'pixelrnn'"):
        build("pixelrnn", 3)
    with pytest.raises(ValueError, match=r"'pixelcnn' is an image density.*\(C, H, W\)"):
        build("pixelcnn", 3)
    with pytest.raises(TypeError, match="unknown options \\['bins'\\]"):
        build("made", 3, bins=4)
    with pytest.raises(ValueError, match="features must be an integer >= 1"):
        build("nade", 0)


@pytest.mark.parametrize("name", ["made", "made-mog", "rnade"])
@pytest.mark.parametrize("context", [0, 2])
def test_density_integrates_to_one(name: str, context: int):
    """Known normalising constant: 1-D and 2-D densities integrate to 1, for one fixed
    context when conditional. Riemann sums of smooth, fast-decaying densities converge
    exponentially fast, so the bound is tight."""
    c = (
        torch.randn(context, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        if context
        else None
    )
    g = torch.linspace(-30, 30, 2001, dtype=torch.float64)
    with torch.no_grad():
        mass_1d = make(name, 1, context)(c).log_prob(g[:, None]).exp().sum() * (g[1] - g[0])
        points, cell = grid_2d()
        mass_2d = make(name, 2, context)(c).log_prob(points).exp().sum() * cell
    assert abs(mass_1d.item() - 1) < 1e-8
    assert abs(mass_2d.item() - 1) < 1e-8


def test_ensemble_of_orderings_is_the_mean_density():
    """With M orderings, log p = log mean_m p_m (checked against each ordering's own
    conditionals) and it still integrates to 1; tied orderings add no parameters."""
    model = make("made-mog", 2, order=[[0, 1], [1, 0]])
    single = build("made-mog", 2, **SMALL["made-mog"])
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in single.parameters())
    untied = build("made-mog", 2, order="random", orderings=2, tied=False, **SMALL["made-mog"])
    assert sum(p.numel() for p in untied.parameters()) == 2 * sum(
        p.numel() for p in single.parameters()
    )
    distinct = build("made", 3, order="random", orderings=6)  # all 3! orderings, no repeats
    assert len({tuple(o.tolist()) for o in distinct.orders}) == 6
    x = torch.randn(10, 2, dtype=torch.float64)
    per_ordering = torch.stack(
        [
            model.conditional.log_prob(model.conditional_params(x, ordering=m), x).sum(-1)
            for m in range(2)
        ]
    )
    assert not torch.allclose(per_ordering[0], per_ordering[1])
    expected = per_ordering.exp().mean(0).log()
    assert torch.allclose(model().log_prob(x), expected, atol=1e-12, rtol=0)
    points, cell = grid_2d()
    with torch.no_grad():
        assert abs(model().log_prob(points).exp().sum().item() * cell - 1) < 1e-8


@pytest.mark.parametrize(
    "name,orderings", [("nade", {}), ("made-bernoulli", {}), ("made-bernoulli", {"orderings": 3})]
)
@pytest.mark.parametrize("context", [0, 3])
def test_binary_probabilities_sum_to_one(name: str, orderings: dict, context: int):
    """Exact: the probabilities of all 2^8 binary vectors sum to 1 (any ordering, a mixture
    of orderings, context)."""
    c = torch.randn(context, dtype=torch.float64) if context else None
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=8)), dtype=torch.float64)
    for order in ("random",) if orderings else ("natural", "random"):
        model = make(name, 8, context, order=order, **orderings)
        total = torch.logsumexp(model(c).log_prob(states), 0)
        assert abs(total.item()) < 1e-12


def test_made_bernoulli_is_the_product_of_its_logits():
    """log p(x) = sum_i x_i l_i - log(1 + e^{l_i}) with the MADE's logits l, computed by hand."""
    model = make("made-bernoulli", 6, order="random")
    x = torch.tensor(
        [[0.0, 1.0, 1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]], dtype=torch.float64
    )
    logits = model.conditional_params(x)[..., 0]
    p = torch.sigmoid(logits)
    expected = torch.where(x == 1, p, 1 - p).log().sum(-1)
    assert torch.allclose(model().log_prob(x), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", ["nade", "made-bernoulli"])
def test_binary_samples_follow_log_prob(name: str):
    """Chi-square goodness of fit of 40 000 samples against the exact probabilities of all
    2^5 states (fixed seed)."""
    model = make(name, 5)
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=5)), dtype=torch.float64)
    probs = model().log_prob(states).exp().detach()
    torch.manual_seed(1)
    x = model().sample((40_000,))
    assert set(x.unique().tolist()) <= {0.0, 1.0}
    codes = (x * 2 ** torch.arange(4, -1, -1, dtype=torch.float64)).sum(-1).long()
    counts = torch.bincount(codes, minlength=32).double()
    p_value = stats.chisquare(counts.numpy(), (probs * 40_000).numpy()).pvalue
    assert p_value > 1e-3


@pytest.mark.parametrize(
    "name,options",
    [
        ("made", {}),
        ("made", {"order": "reversed"}),
        ("made-mog", {}),
        ("made-mog", {"order": "random", "orderings": 2}),
        ("rnade", {"order": "reversed"}),
    ],
)
def test_samples_follow_log_prob(name: str, options: dict):
    """Two-sample checks in 2-D: sample means and second moments within 5 standard errors
    of quadrature's, and Kolmogorov-Smirnov tests of both marginals against the quadrature
    CDF (fixed seeds)."""
    model = make(name, 2, **options)
    points, cell = grid_2d(30.0, 601)
    with torch.no_grad():
        w = model().log_prob(points).exp() * cell
    assert abs(w.sum().item() - 1) < 1e-8
    torch.manual_seed(2)
    n = 20_000
    x = model().sample((n,))
    features = [points[:, 0], points[:, 1], points[:, 0] ** 2, points[:, 1] ** 2, points.prod(-1)]
    samples = [x[:, 0], x[:, 1], x[:, 0] ** 2, x[:, 1] ** 2, x.prod(-1)]
    for f, s in zip(features, samples):
        mean = (w * f).sum()
        se = ((w * (f - mean) ** 2).sum() / n).sqrt()
        assert abs(s.mean() - mean) < 5 * se
    g = torch.linspace(-30, 30, 601, dtype=torch.float64).numpy()
    for axis in (0, 1):
        marginal = w.reshape(601, 601).sum(1 - axis)  # mass per cell of width h
        cdf = (marginal.cumsum(0) - marginal / 2).numpy()  # cumulative trapezoid rule at g
        p_value = stats.kstest(x[:, axis].numpy(), lambda v, cdf=cdf: np.interp(v, g, cdf)).pvalue
        assert p_value > 1e-3


def dependency(params_fn, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
    """(d, d) boolean: feature i's conditional parameters depend on input j."""
    J = torch.autograd.functional.jacobian(params_fn, x)  # (d, P, d)
    return J.abs().sum(1) > 0


@pytest.mark.parametrize("name", ["made", "made-mog", "made-bernoulli", "nade", "rnade"])
@pytest.mark.parametrize("order", ["natural", "reversed", [2, 0, 3, 1], "random"])
@pytest.mark.parametrize("context", [0, 2])
def test_orderings_are_respected(name: str, order, context: int):  # noqa: ANN001
    """Exact Jacobian pattern: feature i's parameters depend on exactly the features before
    it in the ordering (position[j] < position[i]) and on the whole context."""
    model = make(name, 4, context, order=order)
    position = model.orders[0] if isinstance(model, MADEDensity) else model.order
    if isinstance(order, list):
        assert position.tolist() == order
    allowed = position[None, :] < position[:, None]
    c = torch.randn(context, dtype=torch.float64) if context else None
    x = torch.randn(4, dtype=torch.float64)
    pattern = dependency(lambda v: model.conditional_params(v, c), x)
    assert torch.equal(pattern, allowed)
    if context:
        Jc = torch.autograd.functional.jacobian(lambda v: model.conditional_params(x, v), c)
        assert (Jc.abs().sum((1, 2)) > 0).all(), "the context must reach every feature"


def test_shapes_dtype_and_pyro_interop():
    for name in MODELS:
        model = make(name, 3, context=2)
        c = torch.randn(4, 2, dtype=torch.float64)
        d = model(c)
        assert isinstance(d, AutoregressiveDistribution) and isinstance(d, dist.TorchDistribution)
        assert d.batch_shape == (4,) and d.event_shape == (3,)
        x = d.sample((5,))
        assert x.shape == (5, 4, 3) and x.dtype == torch.float64
        assert d.log_prob(x).shape == (5, 4) and d.log_prob(x[0, 0]).shape == (4,)
        assert d.expand((2, 4)).log_prob(x[0]).shape == (2, 4)
        assert model(torch.randn(2, 4, 2, dtype=torch.float64)).sample().shape == (2, 4, 3)
    # In a Pyro model with a plate, the trace's log-density is the sum of log_prob.
    model = make("made-mog", 2)
    data = model().sample((6,))

    def pyro_model() -> None:
        with pyro.plate("data", 6):
            pyro.sample("x", model(), obs=data)

    trace = pyro.poutine.trace(pyro_model).get_trace()
    assert torch.allclose(trace.log_prob_sum(), model().log_prob(data).sum())


def test_mixture_sampling_gradient_is_the_implicit_reparametrisation():
    """Known answer: for a 1-D mixture, d E[x]/d theta and d E[x^2]/d theta from rsample
    equal the gradients of sum_k a_k mu_k and sum_k a_k (mu_k^2 + s_k^2) within 5 s.e."""
    mog = MixtureOfGaussians(3)
    params = torch.tensor(
        [0.3, -0.5, 0.1, -2.0, 0.5, 2.5, -0.4, 0.2, 0.1], dtype=torch.float64, requires_grad=True
    )
    n = 100_000
    rows = params.detach().expand(n, 9).clone().requires_grad_()  # one leaf row per sample
    torch.manual_seed(3)
    x = mog.sample(rows)
    assert x.shape == (n,)
    log_w, mu, log_sigma = mog._split(params)
    for statistic, exact in (
        (x, (log_w.exp() * mu).sum()),
        (x**2, (log_w.exp() * (mu**2 + (2 * log_sigma).exp())).sum()),
    ):
        per_sample = torch.autograd.grad(statistic.sum(), rows, retain_graph=True)[0]
        expected = torch.autograd.grad(exact, params, retain_graph=True)[0]
        se = per_sample.std(0) / math.sqrt(n)
        assert ((per_sample.mean(0) - expected).abs() <= 5 * se).all()
        assert (se < 0.05 * expected.abs().max()).all()


@pytest.mark.parametrize("context", [0, 2])
def test_made_equals_a_one_layer_maf(context: int):
    """Known answer: a Gaussian MADE is a one-layer MAF on N(0, I); with the same masked
    network (copied weights, same soft bound on the log-scale) the densities agree."""
    flow = perturb(
        pyroflows.flows.build("maf", 3, context, transforms=1, hidden=(16, 16), log_scale_bound=3.0)
    ).double()
    model = build("made", 3, context, hidden=(16, 16), log_scale_bound=3.0).double()
    model.nets[0].load_state_dict(flow.transforms[0].made.state_dict())
    c = torch.randn(5, context, dtype=torch.float64) if context else None
    x = torch.randn(5, 3, dtype=torch.float64)
    assert torch.allclose(model(c).log_prob(x), flow(c).log_prob(x), atol=1e-12, rtol=0)


def test_maf_mog_uses_a_made_mog_base():
    flow = pyroflows.flows.build("maf-mog", 2, transforms=2, hidden=(16, 16), components=4)
    assert isinstance(flow.base, DensityBase)
    assert flow.base.model.conditional.components == 4
    small = pyroflows.flows.build("maf-mog", 2, transforms=2, hidden=(16, 16), components=2)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in flow.parameters())
    with pytest.raises(ValueError, match="takes no context"):
        DensityBase(build("made", 2, context=1))


def test_bad_inputs():
    for binary in (build("nade", 4, hidden=8), build("made-bernoulli", 4, hidden=(8,))):
        with pytest.raises(ValueError, match="binary data"):
            binary().log_prob(torch.tensor([0.0, 1.0, 0.5, 1.0]))
        with pytest.raises(NotImplementedError, match="no reparametrised sampler"):
            binary().rsample()
    for name in MODELS:
        with pytest.raises(ValueError, match="permutation"):
            build(name, 3, order=[0, 1, 1])
        with pytest.raises(ValueError, match="permutation"):
            build(name, 3, order=[0, 1, 2, 3])
        with pytest.raises(ValueError, match="order must be"):
            build(name, 3, order="sideways")
        with pytest.raises(ValueError, match="orderings"):
            build(name, 3, orderings=2) if "made" in name else build(
                name, 3, order=[[0, 1, 2], [2, 1, 0]]
            )
        model = build(name, 3, context=2)
        with pytest.raises(ValueError, match="conditional on a context"):
            model()
        with pytest.raises(ValueError, match="last dimension of 3"):
            model(torch.zeros(2)).log_prob(torch.zeros(5, 2))
    with pytest.raises(ValueError, match="integers"):
        build("made", 3, order=[0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="only 2 orderings"):
        build("made", 2, order="random", orderings=3)
    with pytest.raises(ValueError, match="components"):
        build("made-mog", 3, components=0)
    with pytest.raises(ValueError, match="hidden"):
        build("rnade", 3, hidden=0)
