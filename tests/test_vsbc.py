"""VSBC (Yao et al. 2018) on a conjugate model, where the exact posterior is known for every
simulated data set: the exact posterior as the guide gives uniform, symmetric p-values; a guide
of the right mean but a third of the sd gives p-values piled up at 0 and 1 (uniformity
rejected, symmetry not: its point estimates are unbiased); a shifted guide gives asymmetric
ones. The KS tests are checked against SciPy's."""

from __future__ import annotations

import os

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyroflows.infer import fit_guide
from pyroflows.infer.objectives import IWAE
from pyroflows.infer.vsbc import VSBCResult, ks_symmetry, ks_uniform, vsbc

os.environ.setdefault("MPLBACKEND", "Agg")

N = 5  # observations per simulated data set


@pytest.fixture(autouse=True)
def _clean() -> None:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)


def model(n: int) -> None:
    """mu ~ N(0, 1), b ~ N(0, I_2); x_i ~ N(mu, 1), y_i ~ N(b, I_2); data observed as zeros
    (VSBC replaces them with simulated values)."""
    mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=torch.float64), 1.0))
    b = pyro.sample("b", dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0).to_event(1))
    pyro.deterministic("total", mu + b.sum(-1))
    with pyro.plate("data", n):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=torch.zeros(n, dtype=torch.float64))
        pyro.sample(
            "y", dist.Normal(b, 1.0).to_event(1), obs=torch.zeros(n, 2, dtype=torch.float64)
        )


def closed_form_guide(shrink: float = 1.0, shift: float = 0.0):  # noqa: ANN201
    """A factory of guides: the exact posterior of each simulated data set, its sd divided by
    ``shrink`` and its mean moved by ``shift`` posterior sds."""

    def make_guide(conditioned, data):  # noqa: ANN001, ANN202
        sd = (1.0 / (1 + N)) ** 0.5
        mu_mean = data["x"].sum() / (1 + N)
        b_mean = data["y"].sum(0) / (1 + N)

        def guide(n: int) -> None:
            pyro.sample("mu", dist.Normal(mu_mean + shift * sd, sd / shrink))
            pyro.sample("b", dist.Normal(b_mean + shift * sd, sd / shrink).to_event(1))

        return guide

    return make_guide


def no_fit(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
    return None


def run(make_guide, replicates: int = 100) -> VSBCResult:  # noqa: ANN001
    return vsbc(model, make_guide, replicates, N, fit=no_fit, num_draws=1000, seed=0)


def test_the_exact_posterior_is_calibrated():
    result = run(closed_form_guide())
    assert result.names == ["mu", "b[0]", "b[1]"]
    assert result.p.shape == (100, 3) and result.truth.shape == (100, 3)
    assert ((result.p >= 0) & (result.p <= 1)).all()
    # Neither test rejects at the 1% level (fixed seed).
    assert (result.symmetry_pvalue > 0.01).all() and (result.uniformity_pvalue > 0.01).all()
    assert result.asymmetric() == []
    # pyro.deterministic sites are neither data nor parameters.
    assert "total" not in result.names


def test_a_too_narrow_guide_is_not_uniform_but_symmetric():
    """sd / 3 around the exact mean: p piles up near 0 and 1 (uniformity rejected), but the
    point estimates are unbiased, so the p-values stay symmetric about 1/2."""
    result = run(closed_form_guide(shrink=3.0))
    assert (result.uniformity_pvalue < 1e-4).all()
    assert (result.symmetry_pvalue > 0.01).all()
    extreme = ((result.p < 0.05) | (result.p > 0.95)).to(torch.float64).mean()
    assert extreme > 0.5  # an exact posterior puts 10% there


def test_a_biased_guide_is_asymmetric():
    result = run(closed_form_guide(shift=1.0))
    assert (result.symmetry_pvalue < 1e-4).all()
    assert result.asymmetric() == ["mu", "b[0]", "b[1]"]
    assert (result.p.mean(0) < 0.4).all()  # the guide sits above theta_0


def test_ks_tests_know_their_answers():
    """Evenly spread values are uniform; values all above 1/2 are as asymmetric as can be; a
    sample and its mirror image are perfectly symmetric."""
    even = (torch.arange(50, dtype=torch.float64)[:, None] + 0.5) / 50
    d_u, p_u = ks_uniform(even)
    assert float(d_u) == pytest.approx(0.01) and float(p_u) > 0.99
    high = torch.linspace(0.55, 1.0, 30, dtype=torch.float64)
    assert float(ks_uniform(high)[1]) < 1e-6
    d_s, p_s = ks_symmetry(torch.cat([high, 1 - high]))
    assert float(d_s) == 0.0 and float(p_s) == 1.0
    d_s, p_s = ks_symmetry(high)
    assert float(d_s) == 1.0 and float(p_s) < 1e-15


def test_fitted_guides_with_fit_guide_and_a_fresh_param_store_each():
    """The default path: a guide built and fitted per replicate (here fit_guide with IWAE,
    short), each in a fresh param store; the caller's store is left as it was."""
    kept = pyro.param("mine", torch.tensor(3.0))
    fits = []

    def fit(m, g, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        assert "mine" not in pyro.get_param_store()
        result = fit_guide(
            m,
            g,
            *args,
            loss=IWAE(8),
            lr=0.05,
            max_steps=60,
            window=30,
            check_draws=0,
            progress=False,
            **kwargs,
        )
        fits.append(result)
        return result

    result = vsbc(
        model,
        lambda m, data: pyro.infer.autoguide.AutoNormal(m),
        3,
        N,
        fit=fit,
        num_draws=200,
        progress=False,
    )
    assert result.fits == fits and len(fits) == 3
    assert result.p.shape == (3, 3)
    assert list(pyro.get_param_store().keys()) == ["mine"] and pyro.param("mine") is kept


def simulating_model(n: int, x: torch.Tensor | None = None) -> None:
    mu = pyro.sample("mu", dist.Normal(torch.zeros((), dtype=torch.float64), 1.0))
    with pyro.plate("data", n):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def test_a_model_that_simulates_its_data_names_it():
    def make_guide(m, data):  # noqa: ANN001, ANN202
        sd = (1.0 / (1 + N)) ** 0.5
        mean = data["x"].sum() / (1 + N)
        return lambda n: pyro.sample("mu", dist.Normal(mean, sd))

    result = vsbc(simulating_model, make_guide, 40, N, fit=no_fit, observed=["x"], seed=1)
    assert result.names == ["mu"] and result.p.shape == (40, 1)
    with pytest.raises(ValueError, match="observes no site"):
        vsbc(simulating_model, make_guide, 2, N, fit=no_fit)
    with pytest.raises(ValueError, match="not sample sites"):
        vsbc(simulating_model, make_guide, 2, N, fit=no_fit, observed=["y"])


def test_summary_and_plot():
    result = run(closed_form_guide(), replicates=20)
    text = str(result)
    assert "VSBC over 20 replicates" in text and "b[1]" in text
    figure = result.plot(bins=5)
    assert len(figure.axes) == 3
    import matplotlib.pyplot as plt

    plt.close(figure)


@pytest.mark.parametrize(
    "call, error",
    [
        (lambda: vsbc(model, closed_form_guide(), 1, N, fit=no_fit), ValueError),
        (lambda: vsbc(model, closed_form_guide(), 10, N, fit=no_fit, num_draws=1), ValueError),
        (lambda: vsbc(model, "guide", 10, N), TypeError),
        (lambda: vsbc(model, closed_form_guide(), 10, N, fit="fit"), TypeError),
        (lambda: ks_uniform(torch.tensor([0.5])), ValueError),
        (lambda: ks_symmetry(torch.tensor([1, 2])), TypeError),
    ],
)
def test_bad_arguments(call, error):
    with pytest.raises(error):
        call()


def cpu_model(n: int) -> None:
    zero = torch.zeros((), dtype=torch.float64, device="cpu")
    mu = pyro.sample("mu", dist.Normal(zero, 1.0))
    with pyro.plate("data", n):
        pyro.sample("x", dist.Normal(mu, 1.0), obs=zero.expand(n))


def test_vsbc_follows_the_data_device():
    """With torch's default device set to ``meta``, every tensor VSBC makes must follow the
    model's (CPU) values, or mixing them fails."""

    def make_guide(conditioned, data):  # noqa: ANN001, ANN202
        mean = data["x"].sum() / (1 + N)
        return lambda n: pyro.sample("mu", dist.Normal(mean, (1 / (1 + N)) ** 0.5))

    torch.set_default_device("meta")
    try:
        result = vsbc(cpu_model, make_guide, 20, N, fit=no_fit, num_draws=100)
    finally:
        torch.set_default_device(None)
    assert result.p.device.type == "cpu" and result.symmetry_pvalue.device.type == "cpu"
    assert result.uniformity_pvalue.device.type == "cpu"
