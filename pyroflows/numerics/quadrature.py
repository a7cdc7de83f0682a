r"""Quadrature rules on :math:`[0, 1]`: Gauss–Legendre and Clenshaw–Curtis nodes and weights.

Both rules approximate :math:`\int_0^1 g(s)\,ds \approx \sum_k w_k\, g(s_k)`. An :math:`n`-node
Gauss–Legendre rule is exact for polynomials of degree :math:`2n-1`, a Clenshaw–Curtis rule on
:math:`n` Chebyshev points for degree :math:`n-1`; for analytic integrands both converge
geometrically in :math:`n` (Trefethen, "Is Gauss quadrature better than Clenshaw–Curtis?",
SIAM Review 2008). UMNN (Wehenkel & Louppe 2019, https://arxiv.org/abs/1908.05164) integrates its positive network with
Clenshaw–Curtis; :class:`~pyroflows.transforms.UMNNMap` offers both.

The rules are computed once in float64 with numpy and returned as tensors, which callers store
as buffers (so they follow ``.to(device, dtype)``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..checks import check_count

__all__ = ["QUADRATURES", "clenshaw_curtis", "gauss_legendre", "quadrature_rule"]


def _check_nodes(nodes: int, low: int) -> None:
    check_count("nodes", nodes, low)


def gauss_legendre(nodes: int) -> tuple[Tensor, Tensor]:
    """Gauss–Legendre nodes and weights mapped to :math:`[0, 1]` (float64, shapes ``(nodes,)``).

    Example:
        >>> s, w = gauss_legendre(3)
        >>> float((w * s**5).sum())  # exact for degree <= 5: 1/6
        0.16666666666666...
    """
    _check_nodes(nodes, 1)
    x, w = np.polynomial.legendre.leggauss(nodes)
    return torch.from_numpy((x + 1) / 2), torch.from_numpy(w / 2)


def clenshaw_curtis(nodes: int) -> tuple[Tensor, Tensor]:
    r"""Clenshaw–Curtis nodes :math:`s_k = (1 - \cos(k\pi/N))/2`, :math:`k = 0..N`, with
    :math:`N = \text{nodes} - 1`, and their weights, on :math:`[0, 1]` (float64).

    The weights follow Trefethen's ``clencurt`` (Spectral Methods in MATLAB, 2000).

    Example:
        >>> s, w = clenshaw_curtis(5)
        >>> float((w * s**3).sum())  # exact for degree <= 4: 1/4
        0.25
    """
    _check_nodes(nodes, 2)
    n = nodes - 1
    theta = np.pi * np.arange(n + 1) / n
    w = np.zeros(n + 1)
    v = np.ones(n - 1)
    inner = theta[1:-1]
    if n % 2 == 0:
        w[0] = w[n] = 1.0 / (n * n - 1)
        for k in range(1, n // 2):
            v -= 2 * np.cos(2 * k * inner) / (4 * k * k - 1)
        v -= np.cos(n * inner) / (n * n - 1)
    else:
        w[0] = w[n] = 1.0 / (n * n)
        for k in range(1, (n - 1) // 2 + 1):
            v -= 2 * np.cos(2 * k * inner) / (4 * k * k - 1)
    w[1:-1] = 2 * v / n
    x = np.cos(theta)
    # On [-1, 1] the weights sum to 2; map to [0, 1].
    return torch.from_numpy((1 - x) / 2), torch.from_numpy(w / 2)


#: The rules by name, for the ``quadrature`` option of UMNN.
QUADRATURES = {"gauss-legendre": gauss_legendre, "clenshaw-curtis": clenshaw_curtis}


def quadrature_rule(name: str, nodes: int) -> tuple[Tensor, Tensor]:
    """Nodes and weights of the rule ``name`` (one of :data:`QUADRATURES`) on :math:`[0, 1]`."""
    if name not in QUADRATURES:
        raise ValueError(f"quadrature must be one of {sorted(QUADRATURES)}, got {name!r}")
    return QUADRATURES[name](nodes)
