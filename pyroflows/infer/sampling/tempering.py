r"""The pieces of sequential Monte Carlo on a tempered path from a proposal to a target.

The path between a proposal :math:`q` and an unnormalised target :math:`\tilde p` is

.. math:: \log\pi_\beta(y) = \log r(y) + \beta\,\ell(y), \qquad \beta \in [0, 1],

in a space :math:`y` where the particles move. For a flow :math:`q = T_\#r` (a base :math:`r`,
usually :math:`\mathcal N(0, I)`, pushed through a bijection :math:`x = T(y)`) the particles
move in the **base space**, where the target pulled back through the flow is close to
:math:`r` if :math:`q` is close to :math:`\tilde p` (the NeuTra preconditioning of Hoffman et
al. 2019, https://arxiv.org/abs/1903.03704):

.. math:: \ell(y) = \log\tilde p(T(y)) + \log|\det\partial T/\partial y| - \log r(y)
   = \log\tilde p(x) - \log q(x),

the importance log-weight of :math:`x = T(y)`. For any other proposal :math:`y = x` and
:math:`r = q`. Both give :math:`\pi_0 = r` and :math:`\pi_1 \propto \tilde p` pulled back, so
the weights, the evidence and the draws :math:`x` are the same; only the geometry the
Markov kernels see differs.

Here: :class:`TemperedPath` (the space), :func:`hmc_move` (a Hamiltonian Monte Carlo move
vectorised over particles, Neal 2011, https://arxiv.org/abs/1206.1901), :func:`next_temperature`
(the conditional-ESS rule of Zhou, Johansen & Aston 2016,
https://doi.org/10.1080/10618600.2015.1060885), :func:`resample_indices` (multinomial, so that the
variance estimate below applies) and :func:`relative_variance` (Lee & Whiteley 2018,
https://doi.org/10.1093/biomet/asy028). All static-shape: a particle that diverges or lands
where the target is NaN is rejected by ``torch.where``, never dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Distribution, MultivariateNormal, TransformedDistribution
from torch.distributions.transforms import AffineTransform

from ...core import FlowDistribution
from .targets_and_proposals import call_target

__all__ = [
    "Particles",
    "TemperedPath",
    "hmc_move",
    "next_temperature",
    "relative_variance",
    "resample_indices",
]


@dataclass
class Particles:
    r"""Particle positions ``y`` (N, D) with their cached evaluations: the reference's
    ``log_r`` and the target pulled back to the particles' space, ``log_t`` (N,)
    (:math:`\log\tilde p(T(y)) + \log|\det\partial T/\partial y|`), their gradients
    ``grad_r`` and ``grad_t`` (N, D), the points ``x`` (N, D) and the target's ``log_p`` (N,)."""

    y: Tensor
    log_r: Tensor
    log_t: Tensor
    grad_r: Tensor
    grad_t: Tensor
    x: Tensor
    log_p: Tensor

    def select(self, keep: Tensor, other: Particles) -> Particles:
        """Rows of ``self`` where ``keep`` (N,) is true, of ``other`` elsewhere."""
        return Particles(
            *(
                torch.where(keep.reshape(-1, *([1] * (a.dim() - 1))), a, b)
                for a, b in zip(vars(self).values(), vars(other).values(), strict=True)
            )
        )

    def index(self, index: Tensor) -> Particles:
        """The particles at ``index`` (M,) (resampling)."""
        return Particles(*(a[index] for a in vars(self).values()))

    @property
    def ell(self) -> Tensor:
        r"""The importance log-weights :math:`\ell = \log t - \log r` (N,)."""
        return self.log_t - self.log_r

    def log_density(self, beta: float) -> Tensor:
        r""":math:`\log\pi_\beta(y) = (1-\beta)\log r + \beta\log t`, ``-inf`` where
        :math:`\log t` is not a number."""
        if beta == 0:
            return self.log_r
        return (1.0 - beta) * self.log_r + beta * torch.nan_to_num(self.log_t, nan=-math.inf)

    def grad(self, beta: float) -> Tensor:
        r""":math:`\nabla_y\log\pi_\beta(y)`."""
        return self.grad_r if beta == 0 else (1.0 - beta) * self.grad_r + beta * self.grad_t


class TemperedPath:
    r"""The space particles move in, for a proposal distribution over vectors (D,).

    Args:
        proposal: a distribution over (D,) vectors: a :class:`~pyroflows.FlowDistribution`,
            a torch ``TransformedDistribution`` or a ``MultivariateNormal`` move in their base
            space; any other in the data space.
        log_target: the unnormalised target log-density of points (N, D) -> (N,).
        widen: the path starts from the base distribution scaled by this factor (``1``: the
            base itself, so :math:`\pi_0 = q`); only for proposals with a base space.

    Raises:
        ValueError: ``widen != 1`` for a proposal without a base space.

    Example:
        >>> q = dist.MultivariateNormal(torch.zeros(2), 2.0 * torch.eye(2))
        >>> path = TemperedPath(q, lambda x: -0.5 * (x**2).sum(-1))
        >>> path.space, path.evaluate(path.sample(3)).ell.shape
        ('base', torch.Size([3]))
    """

    def __init__(
        self,
        proposal: Distribution,
        log_target: Callable[[Tensor], Tensor],
        widen: float = 1.0,
    ) -> None:
        self.proposal = proposal
        self.log_target = log_target
        self.space = "data"
        self.reference: Distribution = proposal
        self.push: Callable[[Tensor], tuple[Tensor, Tensor]] | None = None
        if isinstance(proposal, FlowDistribution):
            self.space, self.reference = "base", proposal.base_dist
            transform = proposal.transform
            self.push = transform.call_and_ladj
        elif isinstance(proposal, TransformedDistribution):
            self.space, self.reference = "base", proposal.base_dist
            self.push = _compose(proposal.transforms)
        elif isinstance(proposal, MultivariateNormal):
            loc, tril = proposal.loc, proposal.scale_tril
            self.space = "base"
            self.reference = MultivariateNormal(
                torch.zeros_like(loc),
                scale_tril=torch.eye(loc.shape[-1], dtype=tril.dtype, device=tril.device),
            )
            ladj = tril.diagonal(dim1=-2, dim2=-1).abs().log().sum(-1)
            self.push = lambda y: (loc + y @ tril.transpose(-1, -2), ladj.expand(y.shape[:-1]))
        if widen != 1.0:
            if self.space != "base":
                raise ValueError(
                    "widen needs a proposal with a base space (a flow, a torch "
                    f"TransformedDistribution or a MultivariateNormal), not a {type(proposal).__name__}"
                )
            scale = AffineTransform(0.0, widen, event_dim=1)
            self.reference = TransformedDistribution(self.reference, [scale])

    def sample(self, n: int) -> Tensor:
        """``n`` draws of the path's start :math:`\\pi_0 = r`, shape (n, D)."""
        return self.reference.sample(torch.Size([n]))

    def evaluate(self, y: Tensor, grad: bool = False) -> Particles:
        """Evaluate the path at positions ``y`` (N, D), with gradients if ``grad``; nothing of
        the result keeps a graph."""
        with torch.set_grad_enabled(grad):
            y = y.detach().requires_grad_(grad)
            log_r = self.reference.log_prob(y)
            if self.push is None:
                x = y
                log_p = log_t = call_target(self.log_target, y)
            else:
                x, ladj = self.push(y)
                log_p = call_target(self.log_target, x)
                log_t = log_p + ladj
            if grad:
                grad_r, grad_t = _gradient(log_r, y), _gradient(log_t, y)
            else:
                grad_r = grad_t = torch.zeros_like(y)
        return Particles(
            y.detach(), log_r.detach(), log_t.detach(), grad_r, grad_t, x.detach(), log_p.detach()
        )


def _gradient(out: Tensor, y: Tensor) -> Tensor:
    """The gradient of each particle's ``out`` (N,) in its ``y`` (N, D); zero where it is not a
    number and for an ``out`` that does not depend on ``y``."""
    if not out.requires_grad:
        return torch.zeros_like(y)
    # Particles are independent, so the gradient of the sum is each particle's own gradient.
    (grad,) = torch.autograd.grad(out.sum(), y, retain_graph=True, allow_unused=True)
    if grad is None:
        return torch.zeros_like(y)
    return torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)


def _compose(transforms: list) -> Callable[[Tensor], tuple[Tensor, Tensor]]:
    """A torch transform list as ``y -> (x, log|det dx/dy|)`` summed over the event (D,)."""

    def push(y: Tensor) -> tuple[Tensor, Tensor]:
        x, ladj = y, torch.zeros(y.shape[:-1], dtype=y.dtype, device=y.device)
        for t in transforms:
            out = t(x)
            term = t.log_abs_det_jacobian(x, out)
            ladj = ladj + term.reshape(*y.shape[:-1], -1).sum(-1)
            x = out
        return x, ladj

    return push


def hmc_move(
    path: TemperedPath,
    particles: Particles,
    beta: float,
    step_size: float,
    num_steps: int,
    inverse_mass: Tensor,
) -> tuple[Particles, Tensor]:
    r"""One Hamiltonian Monte Carlo transition of every particle, leaving :math:`\pi_\beta`
    invariant; ``num_steps = 1`` is MALA.

    Momenta :math:`m \sim \mathcal N(0, M)` with the diagonal mass :math:`M` given by its
    inverse ``inverse_mass`` (D,); ``num_steps`` leapfrog steps of size ``step_size``;
    Metropolis acceptance per particle. A trajectory that leaves the finite numbers is
    evaluated at its start and rejected.

    Returns:
        The new particles and the acceptance probabilities (N,).
    """
    y0 = particles.y
    momentum = torch.randn_like(y0) * inverse_mass.rsqrt()
    kinetic0 = 0.5 * (momentum.square() * inverse_mass).sum(-1)
    h0 = -particles.log_density(beta) + kinetic0
    current = particles
    diverged = torch.zeros(y0.shape[0], dtype=torch.bool, device=y0.device)
    momentum = momentum + 0.5 * step_size * current.grad(beta)
    for step in range(num_steps):
        y = current.y + step_size * inverse_mass * momentum
        finite = torch.isfinite(y).all(-1) & torch.isfinite(momentum).all(-1)
        diverged = diverged | ~finite
        current = path.evaluate(torch.where(diverged[:, None], y0, y), grad=True)
        scale = step_size if step < num_steps - 1 else 0.5 * step_size
        momentum = momentum + scale * current.grad(beta)
    kinetic1 = 0.5 * (momentum.square() * inverse_mass).sum(-1)
    log_accept = h0 - (-current.log_density(beta) + kinetic1)
    log_accept = torch.where(diverged | torch.isnan(log_accept), -math.inf, log_accept)
    accept_prob = log_accept.clamp(max=0.0).exp()
    accept = torch.rand_like(accept_prob) < accept_prob
    return current.select(accept, particles), accept_prob


def next_temperature(log_weights: Tensor, ell: Tensor, beta: float, target: float) -> float:
    r"""The largest :math:`\beta' \in (\beta, 1]` whose conditional ESS is ``target``:

    .. math:: \frac{\left(\sum_i W_i u_i\right)^2}{\sum_i W_i u_i^2} = \text{target},
       \qquad u_i = e^{(\beta'-\beta)\ell_i},

    with :math:`W` the normalised current weights (Zhou, Johansen & Aston 2016). The ratio
    falls from 1 as :math:`\beta'` grows, so bisection finds it (50 halvings).
    """
    W = torch.softmax(log_weights.double(), 0)
    ell = torch.nan_to_num(ell.double(), nan=-math.inf)

    def cess(delta: float) -> float:
        a = torch.where(W > 0, delta * ell, -math.inf)
        a = a - a.max()
        num = 2.0 * torch.logsumexp(W.log() + a, 0)
        den = torch.logsumexp(W.log() + 2.0 * a, 0)
        return float((num - den).exp())

    low, high = 0.0, 1.0 - beta
    if cess(high) >= target:
        return 1.0
    for _ in range(50):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if cess(mid) >= target else (low, mid)
    return beta + max(low, 1e-12)


def resample_indices(log_weights: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Indices (N,) of N multinomial draws by the normalised weights (with replacement)."""
    W = torch.softmax(log_weights.double(), 0)
    return torch.multinomial(W, W.shape[0], replacement=True, generator=generator)


def relative_variance(log_weights: Tensor, eves: Tensor, num_resamplings: int) -> float:
    r"""Estimated :math:`\operatorname{Var}(\hat Z)/Z^2` of an SMC evidence estimate.

    Lee & Whiteley's estimator from the particles' *Eve indices* (the initial particle each
    descends from), for multinomial resampling :math:`R` times:

    .. math:: \hat V = 1 - \left(\tfrac{N}{N-1}\right)^{R+1}
       \Bigl(1 - \sum_m \bigl(\textstyle\sum_{i: E_i = m} W_i\bigr)^2\Bigr).

    Without resampling it is the sample variance of the weights over :math:`N\bar w^2`, the
    plain importance-sampling estimate.
    """
    W = torch.softmax(log_weights.double(), 0)
    N = W.shape[0]
    by_eve = torch.zeros_like(W).index_add_(0, eves, W)
    distinct = 1.0 - by_eve.square().sum()
    return float(1.0 - (N / (N - 1)) ** (num_resamplings + 1) * distinct)
