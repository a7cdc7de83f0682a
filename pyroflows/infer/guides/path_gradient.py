r"""The "sticking the landing" gradient of a flow guide from its sampling pass, without inverting it.

The STL estimator (Roeder, Wu & Duvenaud, NeurIPS 2017, https://arxiv.org/abs/1703.09194)
differentiates :math:`\log q_{\bar\theta}(x_\theta)` through the sample only. By the chain
rule it needs the score of the guide at the sample,

.. math::
    \nabla_\theta^{\text{STL}} \log q = (\partial x / \partial\theta)^\top g, \qquad
    g = \nabla_x \log q_{\bar\theta}(x)
      = J^{-\top}\,\nabla_z\big[\log p_0(z) - \log|\det J(z)|\big],
    \qquad J = \partial x / \partial z,

(the change of variables :math:`\log q(x) = \log p_0(z) - \log|\det J(z)|` differentiated in
:math:`x`; Vaitl, Nicoli, Nakajima & Kessel, ICML 2022, https://arxiv.org/abs/2207.09302,
use the same identity layer by layer). :math:`J` and :math:`\nabla_z \log|\det J|` come from
running the flow on :math:`D + 1` copies of each base draw: copy :math:`i < D` is
differentiated for :math:`x_i` (the Jacobian's row :math:`i`), copy :math:`D` for the
log-determinant, all in one backward pass. Up to :data:`WHOLE_FLOW_MAX_DIM` dimensions the
whole flow runs once on the copies with the sample stacked after them; above, layer by layer,
so that the loss's own backward pass runs on the sample alone: triangular and diagonal affine
layers by their matrices, inverse autoregressive layers in parts (their transformer's
elementwise derivatives from two copies, only the MADE on :math:`D + 1`). So the cost grows
with :math:`D` in batch *width*, where evaluating :math:`\log q` through the inverse of an
inverse autoregressive layer takes :math:`D` *sequential* passes; one :math:`D \times D`
solve per sample and layer follows.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ...core import Flow
from ...transforms import ElementwiseAffine, Inverse, InverseMap, MaskedAutoregressive
from ...transforms.base import Bijection
from ...transforms.triangular import LowerTriangularAffine

__all__ = ["rsample_with_path_gradient"]

#: Up to this dimension the whole flow runs once on D + 2 stacked inputs, the sample among
#: them (fewest operations); above it, layer by layer, so that the backward pass of the loss
#: runs on the sample alone, and inverse autoregressive layers in parts (their transformer
#: on two copies, only the conditioner, matrix products, on D + 1).
WHOLE_FLOW_MAX_DIM = 32


def _picks(like: Tensor) -> Tensor:
    """The D unit vectors shaped to multiply D copies of ``like`` (..., D): (D, 1.., D)."""
    d = like.shape[-1]
    eye = torch.eye(d, dtype=like.dtype, device=like.device)
    return eye.reshape((d,) + (1,) * (like.dim() - 1) + (d,))


def _copies(u: Tensor, n: int) -> Tensor:
    """``n`` detached copies of ``u`` (n, *u.shape), each a separate input of the graph."""
    return u.detach().expand((n,) + u.shape).clone().requires_grad_(True)


def _grad(output: Tensor, *inputs: Tensor) -> tuple[Tensor, ...]:
    """Gradients of ``output.sum()`` in each of ``inputs``, zeros for those it does not
    depend on."""
    if not output.requires_grad:
        return tuple(torch.zeros_like(u) for u in inputs)
    # The graph may be shared with the live pass, which is differentiated later: keep it.
    grads = torch.autograd.grad(output.sum(), inputs, allow_unused=True, retain_graph=True)
    return tuple(torch.zeros_like(u) if g is None else g for g, u in zip(grads, inputs))


def _rows(x: Tensor, ladj: Tensor, copies: Tensor) -> tuple[Tensor, Tensor]:
    """J (..., D, D) and grad log|det J| (..., D) from a pass on ``copies`` (D + 1, ..., D)
    (outputs ``x``, ``ladj``, possibly with more rows stacked after), in one backward pass:
    copy i < D is differentiated for x_i (row i of J), copy D for the log-determinant."""
    d = copies.shape[-1]
    chosen = (x[:d] * _picks(copies[0])).sum() + (ladj[d].sum() if ladj.requires_grad else 0.0)
    (grads,) = _grad(chosen, copies)
    return grads[:d].movedim(0, -2), grads[d]


def _jacobian_and_ladj_grad(layer: Bijection, u: Tensor) -> tuple[Tensor, Tensor]:
    """J = dx/du (..., D, D) and grad_u log|det J| (..., D) of any layer at ``u``."""
    copies = _copies(u, u.shape[-1] + 1)
    return _rows(*layer.call_and_ladj(copies), copies)


def _inverse_autoregressive_parts(layer: Bijection) -> tuple[MaskedAutoregressive, Any] | None:
    r"""``(masked layer, tau)`` of ``Inverse(MaskedAutoregressive(d, InverseMap(tau)))``, the
    inverse autoregressive layer :math:`x_i = \tau(u_i; \theta_i(u_{<i}))`, else ``None``."""
    inner = layer.bijection if isinstance(layer, Inverse) else None
    if isinstance(inner, MaskedAutoregressive) and isinstance(inner.map, InverseMap):
        return inner, inner.map.map
    return None


def _inverse_autoregressive_jacobian(
    masked: MaskedAutoregressive, tau: Any, u: Tensor
) -> tuple[Tensor, Tensor]:
    r""":func:`_jacobian_and_ladj_grad` of an inverse autoregressive layer, in parts:
    :math:`J = \mathrm{diag}(\partial\tau/\partial u) + (\partial\tau/\partial\theta)
    (\partial\theta/\partial u)`. The transformer's derivatives are elementwise (one
    backward pass on two copies); only the conditioner runs on D + 1 copies, for the rows of
    :math:`(\partial\tau/\partial\theta)(\partial\theta/\partial u)` and
    :math:`(\partial \log\tau'/\partial\theta)(\partial\theta/\partial u)`."""
    d = u.shape[-1]
    copies = _copies(u, d + 1)
    thetas = masked.made(copies)  # (D + 1, ..., D, k)
    pair_u, pair_theta = _copies(u, 2), _copies(thetas[0], 2)
    x, ladj = tau(pair_u, pair_theta)
    du, dtheta = _grad(x[0].sum() + ladj[1].sum(), pair_u, pair_theta)
    cotangents = torch.cat([_picks(u).unsqueeze(-1) * dtheta[0], dtheta[1].unsqueeze(0)])
    (rows,) = _grad(thetas * cotangents, copies)
    return torch.diag_embed(du[0]) + rows[:d].movedim(0, -2), du[1] + rows[d]


def _whole_flow(flow: Flow, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(x, ladj, J, grad_z ladj)`` of the composed flow at ``z``: one pass on D + 2 stacked
    inputs, D + 1 copies for J and the log-det's gradient, then ``z`` itself: the sample."""
    copies = _copies(z, z.shape[-1] + 1)
    x, ladj = flow.transform().call_and_ladj(torch.cat([copies, z.unsqueeze(0)]))
    return (x[-1], ladj[-1], *_rows(x, ladj, copies))


def _pull_back(score: Tensor, jacobian: Tensor, ladj_grad: Tensor) -> Tensor:
    r"""The score after a layer: :math:`J^{-\top}(g - \nabla \log|\det J|)`."""
    rhs = (score - ladj_grad).unsqueeze(-1)
    return torch.linalg.solve(jacobian.transpose(-1, -2), rhs).squeeze(-1)


def _through_layer(layer: Bijection, u: Tensor, score: Tensor) -> Tensor:
    """The score after ``layer`` given the score ``score`` at its input ``u``."""
    with torch.no_grad():  # affine layers: J is the layer's matrix, log|det J| constant
        if isinstance(layer, LowerTriangularAffine):
            # Row vectors: y L = g is y = L^{-T} g.
            rows = score.reshape(-1, score.shape[-1])
            y = torch.linalg.solve_triangular(layer.scale_tril(), rows, upper=False, left=False)
            return y.reshape(score.shape)
        if isinstance(layer, ElementwiseAffine):
            return score * torch.exp(-layer.log_scale)
    parts = _inverse_autoregressive_parts(layer)
    if parts is None:
        jacobian, ladj_grad = _jacobian_and_ladj_grad(layer, u)
    else:
        jacobian, ladj_grad = _inverse_autoregressive_jacobian(*parts, u)
    return _pull_back(score, jacobian, ladj_grad)


def _log_prob_and_score(base: torch.distributions.Distribution, z: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`\log p_0(z)` (detached) and :math:`\nabla_z \log p_0(z)`."""
    z = z.detach().requires_grad_(True)
    with torch.enable_grad():
        log_p0 = base.log_prob(z)
        (score,) = torch.autograd.grad(log_p0.sum(), z)
    return log_p0.detach(), score


def rsample_with_path_gradient(flow: Flow, sample_shape: torch.Size) -> tuple[Tensor, Tensor]:
    r"""Samples :math:`x = T_\theta(z)` of an unconditional ``flow`` and a surrogate of
    :math:`\log q_\theta(x)`: its value, with the STL path gradient
    :math:`(\partial x/\partial\theta)^\top g` (see the module docstring), as
    :math:`\log q + (x - \bar x)\cdot\bar g`.

    Shapes: ``sample_shape + (D,)`` and ``sample_shape`` (``sample_shape`` includes the base's
    batch shape).

    Example:
        >>> flow = pyroflows.flows.build("nsf-iaf", 3)
        >>> x, log_q = rsample_with_path_gradient(flow, torch.Size([5]))
        >>> x.shape, log_q.shape
        (torch.Size([5, 3]), torch.Size([5]))
    """
    base = flow.base()
    z = base.rsample(sample_shape).detach()
    log_p0, score = _log_prob_and_score(base, z)
    if z.shape[-1] <= WHOLE_FLOW_MAX_DIM:
        x, ladj, jacobian, ladj_grad = _whole_flow(flow, z)
        score = _pull_back(score, jacobian, ladj_grad)
    else:
        x, ladj = z, torch.zeros_like(score[..., 0])
        for layer in flow.transforms:
            score = _through_layer(layer, x, score)
            x, layer_ladj = layer.call_and_ladj(x)
            ladj = ladj + layer_ladj
    log_q = log_p0 - ladj.detach()
    return x, log_q + ((x - x.detach()) * score.detach()).sum(-1)
