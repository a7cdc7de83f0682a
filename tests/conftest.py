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
