"""Two-dimensional toy densities, the standard test bed of flow papers (FFJORD, NSF, ...).

Every generator takes ``n`` and a ``seed`` (or a ``torch.Generator``) and returns an
``(n, 2)`` float tensor on the CPU in the default dtype; the same seed gives the same points
on any machine.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = [
    "TOY_DATASETS",
    "checkerboard",
    "circles",
    "eight_gaussians",
    "moons",
    "pinwheel",
    "spirals",
    "toy",
]


def _generator(seed: int | torch.Generator | None) -> torch.Generator:
    if isinstance(seed, torch.Generator):
        return seed
    generator = torch.Generator()
    return generator.manual_seed(0 if seed is None else seed)


def _on_the_cpu(make: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """Toy data are drawn on the CPU (with a CPU generator), whatever torch's default device;
    move them with ``.to(device)``."""

    @functools.wraps(make)
    def wrapper(*args: object, **kwargs: object) -> Tensor:
        with torch.device("cpu"):
            return make(*args, **kwargs)

    return wrapper


def _check_n(n: int) -> None:
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")


@_on_the_cpu
def moons(n: int, seed: int | torch.Generator | None = 0, noise: float = 0.1) -> Tensor:
    """Two interleaved half circles with Gaussian noise, standardised to about unit scale."""
    _check_n(n)
    g = _generator(seed)
    upper = torch.rand(n, generator=g) < 0.5
    t = math.pi * torch.rand(n, generator=g)
    x = torch.where(upper, torch.cos(t), 1 - torch.cos(t))
    y = torch.where(upper, torch.sin(t), 0.5 - torch.sin(t))
    points = torch.stack([x, y], -1) + noise * torch.randn(n, 2, generator=g)
    return ((points - torch.tensor([0.5, 0.25])) * 2).to(torch.get_default_dtype())


@_on_the_cpu
def eight_gaussians(
    n: int, seed: int | torch.Generator | None = 0, radius: float = 2.0, std: float = 0.2
) -> Tensor:
    """Eight isotropic Gaussians of std ``std`` evenly spaced on a circle of ``radius``."""
    _check_n(n)
    g = _generator(seed)
    k = torch.randint(0, 8, (n,), generator=g)
    angle = k * (2 * math.pi / 8)
    centers = radius * torch.stack([torch.cos(angle), torch.sin(angle)], -1)
    return (centers + std * torch.randn(n, 2, generator=g)).to(torch.get_default_dtype())


@_on_the_cpu
def checkerboard(n: int, seed: int | torch.Generator | None = 0) -> Tensor:
    """Uniform on the 8 dark squares of a 4x4 checkerboard over ``[-4, 4]^2``.

    Its true log-density is ``log(1/32)`` on the support, about -3.466 nats.
    """
    _check_n(n)
    g = _generator(seed)
    x1 = 8 * torch.rand(n, generator=g) - 4
    x2 = 2 * torch.rand(n, generator=g) - 4 + 2 * torch.randint(0, 4, (n,), generator=g)
    # Shift x2 by one square where the column of x1 is odd, so the squares alternate.
    x2 = x2 + 2 * (torch.floor(x1 / 2) % 2 != torch.floor(x2 / 2) % 2)
    x2 = torch.where(x2 > 4, x2 - 8, x2)
    return torch.stack([x1, x2], -1).to(torch.get_default_dtype())


@_on_the_cpu
def pinwheel(
    n: int,
    seed: int | torch.Generator | None = 0,
    arms: int = 5,
    radial_std: float = 0.3,
    tangential_std: float = 0.1,
    rate: float = 0.25,
) -> Tensor:
    """A pinwheel of ``arms`` curved Gaussian arms (Johnson et al. 2016)."""
    _check_n(n)
    g = _generator(seed)
    k = torch.randint(0, arms, (n,), generator=g)
    features = torch.randn(n, 2, generator=g) * torch.tensor([radial_std, tangential_std])
    features[:, 0] += 1.0
    angle = k * (2 * math.pi / arms) + rate * torch.exp(features[:, 0])
    cos, sin = torch.cos(angle), torch.sin(angle)
    x = cos * features[:, 0] - sin * features[:, 1]
    y = sin * features[:, 0] + cos * features[:, 1]
    return (2 * torch.stack([x, y], -1)).to(torch.get_default_dtype())


@_on_the_cpu
def spirals(n: int, seed: int | torch.Generator | None = 0, noise: float = 0.1) -> Tensor:
    """Two intertwined spirals."""
    _check_n(n)
    g = _generator(seed)
    t = torch.sqrt(torch.rand(n, generator=g)) * 3 * math.pi
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    points = sign[:, None] * torch.stack([-torch.cos(t) * t, torch.sin(t) * t], -1) / 3
    return (points + noise * torch.randn(n, 2, generator=g)).to(torch.get_default_dtype())


@_on_the_cpu
def circles(n: int, seed: int | torch.Generator | None = 0, noise: float = 0.08) -> Tensor:
    """Two concentric circles of radius 1 and 2."""
    _check_n(n)
    g = _generator(seed)
    radius = torch.where(torch.rand(n, generator=g) < 0.5, 1.0, 2.0)
    t = 2 * math.pi * torch.rand(n, generator=g)
    points = radius[:, None] * torch.stack([torch.cos(t), torch.sin(t)], -1)
    return (points + noise * torch.randn(n, 2, generator=g)).to(torch.get_default_dtype())


#: The toy generators by name: ``moons``, ``8gaussians``, ``checkerboard``, ``pinwheel``,
#: ``spirals``, ``circles``.
TOY_DATASETS: dict[str, Callable[..., Tensor]] = {
    "moons": moons,
    "8gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "pinwheel": pinwheel,
    "spirals": spirals,
    "circles": circles,
}


def toy(name: str, n: int, seed: int | torch.Generator | None = 0) -> Tensor:
    """Draw ``n`` points of the toy set ``name`` (one of :data:`TOY_DATASETS`).

    Example:
        >>> toy("moons", 1000, seed=1).shape
        torch.Size([1000, 2])
    """
    try:
        make = TOY_DATASETS[name]
    except KeyError:
        raise ValueError(
            f"unknown toy data set {name!r}; choose one of {sorted(TOY_DATASETS)}"
        ) from None
    return make(n, seed)
