"""The Laplace start's mode search: on a Gaussian, whose mode and covariance are known, and
from random starts on a bimodal posterior, whose modes are known."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.autoguide import init_to_value

from pyroflows.infer import AutoFlow
from pyroflows.infer.guides.laplace import find_map, laplace_approximation


def test_the_mode_and_covariance_of_a_gaussian():
    cov = torch.tensor([[2.0, 0.6], [0.6, 0.5]], dtype=torch.float64)
    mean = torch.tensor([1.0, -3.0], dtype=torch.float64)
    target = torch.distributions.MultivariateNormal(mean, cov)
    point, report = find_map(target.log_prob, torch.zeros(2, dtype=torch.float64), progress=False)
    assert report["stopped"] == "converged" and torch.allclose(point, mean, atol=1e-6)
    # Counted with the progress bar off too (it used to report the disabled bar's 0).
    assert 2 <= report["evaluations"] < 100
    L = laplace_approximation(target.log_prob, point)
    assert torch.allclose(L @ L.T, cov, atol=1e-6)


def test_the_search_backs_off_from_points_the_density_cannot_evaluate():
    def log_p(x: torch.Tensor) -> torch.Tensor:
        # Undefined from 2 on (as an ODE model is where its solver gives up); L-BFGS's first
        # step, of length 1 from the start 1.0, lands on 2.
        if float(x.max()) >= 2:
            raise ValueError("the solver gave up")
        return -0.5 * ((x - 1.5) ** 2).sum() / 0.01

    start = torch.full((1,), 1.0, dtype=torch.float64)
    point, report = find_map(log_p, start, progress=False)
    assert report["stopped"] == "converged" and torch.allclose(point, torch.tensor([1.5]).double())

    # A finite but astronomical value there (an overflowing likelihood, as an HMM's at a wild
    # point) is rejected too: fed to the line search's cubic interpolation it gave NaN steps.
    def overflowing(x: torch.Tensor) -> torch.Tensor:
        return torch.where(x < 2, -0.5 * (x - 1.5) ** 2 / 0.01, -1e303 * torch.ones_like(x)).sum()

    point, report = find_map(overflowing, start, progress=False)
    assert report["stopped"] == "converged" and report["rejected"] >= 1
    assert torch.allclose(point, torch.tensor([1.5]).double())
    # Where the start itself cannot be evaluated, there is nothing to back off to.
    point, report = find_map(log_p, start + 10, progress=False)
    assert point is None and report["stopped"] == "failed" and report["evaluations"] == 0


def test_a_search_that_ends_off_a_stationary_point_has_stalled():
    # A kink at the maximum (the gradient is +-1 on either side): L-BFGS ends next to it, on
    # no zero of the gradient, which is no mode with a Hessian.
    point, report = find_map(
        lambda x: -(x - 1).abs().sum(), torch.zeros(2, dtype=torch.float64), progress=False
    )
    assert point is None and report["stopped"] == "stalled"


def bimodal_model() -> None:
    """A 1-D posterior with a small mode at 1 and the main one (four times the mass) at -1,
    20 sd apart."""
    x = pyro.sample("x", dist.Normal(0.0, 10.0))
    small = math.log(0.2) + dist.Normal(1.0, 0.1).log_prob(x)
    main = math.log(0.8) + dist.Normal(-1.0, 0.1).log_prob(x)
    pyro.factor("mixture", torch.stack([small, main]).logsumexp(0))


def test_random_starts_find_the_main_mode_that_the_init_point_misses():
    # The search from x = 1.2 ends at the small mode.
    options = {"init_loc_fn": init_to_value(values={"x": torch.tensor(1.2)})}
    options |= {"transforms": 1, "hidden": (8,), "progress": False}
    pyro.set_rng_seed(0)
    trapped = AutoFlow(bimodal_model, init_starts=0, **options)
    assert trapped.init_choice == "laplace"
    assert len(trapped.init_report["map_search"]["modes"]) == 1
    assert float(trapped.flow.transforms[-1].loc) == pytest.approx(1.0, abs=1e-3)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoFlow(bimodal_model, init_starts=8, **options)
    search = guide.init_report["map_search"]
    # log p at each mode: log(weight / (0.1 sqrt(2 pi))) + the prior's, equal at +-1.
    assert len(search["searches"]) == 9 and len(search["modes"]) == 2
    assert search["modes"][0] - search["modes"][1] == pytest.approx(math.log(4), abs=1e-3)
    elbo = guide.init_report["elbo"]
    assert set(elbo) == {"loc", "laplace", "laplace 2"}
    assert elbo["laplace"] - elbo["laplace 2"] == pytest.approx(math.log(4), abs=0.05)
    assert guide.init_choice == "laplace"
    assert float(guide.flow.transforms[-1].loc) == pytest.approx(-1.0, abs=1e-3)
    assert "from 9 starts" in guide.init_report["summary"]
    assert "2 modes" in guide.init_report["summary"]


@pytest.mark.filterwarnings("ignore:Encountered \\+inf")
def test_random_starts_are_skipped_when_the_init_point_finds_no_mode():
    def unbounded() -> None:  # log p grows as e^x: the search overflows
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        pyro.factor("explode", x.exp())

    guide = AutoFlow(unbounded, transforms=1, hidden=(8,), progress=False)
    searches = guide.init_report["map_search"]["searches"]
    assert [s["start"] for s in searches] == ["init"] + ["random"] * 4
    # On its way to +inf every trial point overflows: rejected ten in a row, the search fails.
    assert searches[0]["stopped"] == "failed" and searches[0]["rejected"] >= 10
    assert all(s["stopped"] == "not run" for s in searches[1:])
    assert guide.init_choice == "loc"


def test_init_starts_is_checked():
    with pytest.raises(TypeError, match="init_starts"):
        AutoFlow(bimodal_model, init_starts=2.0)
    with pytest.raises(ValueError, match="init_starts"):
        AutoFlow(bimodal_model, init_starts=-1)
