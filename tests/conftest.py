"""Test options: ``--device`` (cpu/cuda) and ``--dtype`` (float64/float32).

``pytest --device cuda`` runs the whole suite on a GPU; ``--dtype float32`` runs the property
tests in single precision with single-precision tolerances.
"""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--device", default="cpu", help="torch device for the tests (cpu, cuda, cuda:1)"
    )
    parser.addoption(
        "--dtype",
        default="float64",
        choices=["float64", "float32"],
        help="dtype of the property tests",
    )


def pytest_configure(config: pytest.Config) -> None:
    device = config.getoption("--device")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise pytest.UsageError("--device cuda was given but torch sees no CUDA device")
    # Two threads stall on tiny ops on a 2-core machine; the tests use small models.
    torch.set_num_threads(1)


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    return torch.device(request.config.getoption("--device"))


@pytest.fixture
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return getattr(torch, request.config.getoption("--dtype"))


@pytest.fixture
def tol(dtype: torch.dtype) -> dict[str, float]:
    """Tolerances of the property tests: the acceptance bounds in float64, float32's otherwise."""
    if dtype == torch.float64:
        return {"roundtrip": 1e-8, "logdet": 1e-6}
    return {"roundtrip": 1e-3, "logdet": 1e-3}


# -- Hypothesis profiles (the drawn property, tail and fuzz tests) --------------------------------
# "ci" (default): few examples, derandomized (deterministic CI); "slow": many more. Choose with
# HYPOTHESIS_PROFILE=slow or pytest's --hypothesis-profile=slow. Tests scale their own counts by
# the profile's max_examples (10 for ci, 100 for slow).
try:
    import os

    from hypothesis import settings as _hypothesis_settings
except ImportError:  # hypothesis is in the `test` extra; without it those files fail to import
    pass
else:
    _hypothesis_settings.register_profile(
        "ci", max_examples=10, deadline=None, derandomize=True, print_blob=True
    )
    _hypothesis_settings.register_profile(
        "slow", max_examples=100, deadline=None, derandomize=True, print_blob=True
    )
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _pyro_validation_restored():
    """Each test starts with Pyro's validation switch as the session had it, and torch's
    distribution default matching it: the first ``torch.compile`` in a process turns torch's
    default off (TorchDynamo patches it), which would make later tests depend on the order."""
    import pyro

    enabled = pyro.distributions.is_validation_enabled()
    pyro.enable_validation(enabled)
    yield
    pyro.enable_validation(enabled)
