r"""The machinery shared by the particle objectives: :class:`ParticleObjective` draws
:math:`K` particles from the guide at once (a particle plate at dim :math:`-(n+1)`, :math:`n`
the plate nesting; one at a time for a model that does not broadcast over it), replays the
model on them, and turns the log-weights :math:`\ell_k = \log p(x, z_k) - \log q_\theta(z_k)`
into a loss and a surrogate whose gradient is the chosen estimator.

A subclass gives :meth:`ParticleObjective.objective`: the loss :math:`f(\ell)` and its first
and second derivatives in each :math:`\ell_k`, from which the doubly-reparameterised gradient

.. math:: \nabla_\theta\, \mathbb E f = \mathbb E \sum_k
   \Big(\frac{\partial f}{\partial \ell_k} - \frac{\partial^2 f}{\partial \ell_k^2}\Big)
   \frac{\partial \ell_k}{\partial z_k} \frac{\partial z_k}{\partial \theta}

follows (the score part of :math:`\nabla_\theta \ell_k`, :math:`-\nabla_\theta \log
q_\theta(\bar z_k)`, equals :math:`-\partial_{\ell_k}^2 f` times the path derivative in
expectation, by reparameterising :math:`\mathbb E_q[h(z) \nabla_\theta \log q_\theta(z)] =
\mathbb E[\nabla_z h\, \partial_\theta z]` with :math:`h = \partial f/\partial \ell_k`).
See :mod:`pyroflows.infer.objectives` for the objectives and when to use each.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO
from pyro.infer.elbo import ELBOModule
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from ...checks import check_choice, check_count
from ..guides.amortized import AutoAmortizedFlow
from ..guides.autoguide import AutoFlow
from ..guides.guide_distribution import GuideFlowDistribution
from ..model_density import (
    PARTICLE_PLATE,
    VECTORIZE_ERRORS,
    describe,
    sum_to_particles,
    trace_log_joint,
    trace_plate_nesting,
)

__all__ = ["GRADIENTS", "ParticleObjective"]

GRADIENTS = ("dreg", "total")


class _RefusedError(ValueError):
    """What the objectives refuse (never a batching problem, so never retried in a loop)."""


def _in_plate(fn: Callable, num: int, nesting: int | None) -> Callable:
    """``fn`` run inside a particle plate of size ``num`` at dim ``-(nesting + 1)``
    (``nesting=None``: as it is)."""
    if nesting is None:
        return fn

    def plated(*args: Any, **kwargs: Any) -> Any:
        with pyro.plate(PARTICLE_PLATE, num, dim=-(nesting + 1)):
            return fn(*args, **kwargs)

    return plated


def _sample_sites(trace: poutine.Trace) -> list[dict]:
    return [
        site
        for site in trace.nodes.values()
        if site["type"] == "sample" and not site_is_subsample(site)
    ]


def _unwrap(fn: Any) -> Any:
    """The distribution under ``Independent``/``Expanded``/``Masked`` wrappers."""
    while isinstance(fn, dist.Independent | dist.ExpandedDistribution | dist.MaskedDistribution):
        fn = fn.base_dist
    return fn


def _is_stl(fn: Any) -> bool:
    """Whether a guide site's ``log_prob`` holds the guide's parameters fixed (STL)."""
    fn = _unwrap(fn)
    return isinstance(fn, GuideFlowDistribution) and fn.stl is not None and torch.is_grad_enabled()


def _detached(trace: poutine.Trace) -> poutine.Trace:
    """A copy of ``trace``'s sample sites with their values detached (for a replay)."""
    out = poutine.Trace()
    for name, site in trace.nodes.items():
        if site["type"] == "sample":
            value = site["value"]
            out.add_node(
                name, **{**site, "value": value.detach() if torch.is_tensor(value) else value}
            )
    return out


def _check_traces(model_trace: poutine.Trace, guide_trace: poutine.Trace) -> None:
    """ValueError/TypeError for what the weights cannot handle: enumerated sites, latent sites
    of the model the guide does not sample, guide sites without ``rsample``."""
    for trace in (model_trace, guide_trace):
        for site in _sample_sites(trace):
            if site["infer"].get("enumerate"):
                raise _RefusedError(
                    f"site {site['name']!r} is enumerated; the particle objectives need a guide "
                    "that samples every latent site (no enumeration)"
                )
    missing = [
        site["name"]
        for site in _sample_sites(model_trace)
        if not site["is_observed"] and site["name"] not in guide_trace.nodes
    ]
    if missing:
        raise _RefusedError(
            f"the guide does not sample the model's latent sites {missing}: importance weights "
            "need a guide over every latent site"
        )
    for site in _sample_sites(guide_trace):
        if not site["is_observed"] and not site["fn"].has_rsample:
            raise TypeError(
                f"guide site {site['name']!r} ({type(site['fn']).__name__}) is not "
                "reparameterisable; these objectives need rsample at every guide site"
            )


class ParticleObjective:
    r"""Base of the objectives of this module: a function :math:`f` of the :math:`K`
    log-weights, estimated on particles drawn at once, with the gradient estimator of the
    module's description.

    Subclasses implement :meth:`objective`; the rest (particle plate, log-weights, score term,
    surrogate loss) is shared.

    Args:
        num_particles: :math:`K`, particles per estimate (``>= 1``).
        gradient: ``"dreg"`` (default) or ``"total"`` (see the module's description).
        max_plate_nesting: the plates the model and guide nest (found by tracing them once
            when infinite, the default).
        vectorize_particles: draw the particles at once in a particle plate (default); a model
            that does not broadcast over one falls back, with a warning, to a loop (decided
            when two batches in a row fail: one failing batch is redrawn).

    Raises:
        ValueError: ``num_particles < 1`` or an unknown ``gradient``.
    """

    def __init__(
        self,
        num_particles: int = 8,
        *,
        gradient: str = "dreg",
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = True,
    ) -> None:
        self.num_particles = check_count("num_particles", num_particles)
        self.gradient = check_choice("gradient", gradient, GRADIENTS)
        self.max_plate_nesting = max_plate_nesting
        self.vectorize_particles = bool(vectorize_particles)

    def __call__(self, model: Callable, guide: Callable) -> ELBOModule:
        """A ``torch.nn.Module`` whose call with the model's arguments returns
        :meth:`differentiable_loss` (Pyro's ``ELBO`` interface for ``nn.Module`` pairs)."""
        return ELBOModule(model, guide, self)

    # -- what a subclass defines ----------------------------------------------------------------

    def objective(self, log_weights: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""``(loss, d1, d2)`` for detached log-weights (K,): the loss estimate (a scalar),
        and the first and second derivatives (K,) of the loss whose gradient is estimated,
        :math:`\partial f/\partial \ell_k` and :math:`\partial^2 f/\partial \ell_k^2`."""
        raise NotImplementedError

    #: Whether the objective may fit the model's own parameters (an upper bound may not).
    trains_model = True

    def update(self, log_weights: Tensor) -> None:  # noqa: B027  (optional hook)
        """Called with the detached log-weights after each gradient estimate."""

    # -- shared machinery -------------------------------------------------------------------------

    def _nesting(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> int:
        if math.isinf(self.max_plate_nesting):
            with poutine.block():
                guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
                model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                    *args, **kwargs
                )
            self.max_plate_nesting = max(
                trace_plate_nesting(model_trace), trace_plate_nesting(guide_trace)
            )
        return int(self.max_plate_nesting)

    def _draw(
        self,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: dict,
        num: int,
        nesting: int | None,
        grads: bool,
    ) -> tuple[Tensor, Tensor]:
        """``(log_weights, extra)`` for ``num`` particles (a plate at ``nesting``; ``None``:
        one particle, no plate): extra is zero-valued, and carries the gradient corrections
        (score term, model parameters' weights) once multiplied by the coefficients; see
        :meth:`_surrogate`. Without ``grads``, ``extra`` is empty."""
        guide_trace = poutine.trace(_in_plate(guide, num, nesting)).get_trace(*args, **kwargs)
        model_trace = poutine.trace(
            poutine.replay(_in_plate(model, num, nesting), trace=guide_trace)
        ).get_trace(*args, **kwargs)
        _check_traces(model_trace, guide_trace)
        like = next((site["value"] for site in _sample_sites(guide_trace)), None)
        if like is None:
            raise _RefusedError("the guide samples no site")
        log_q = trace_log_joint(guide_trace, num, nesting, like)
        log_p = trace_log_joint(model_trace, num, nesting, like)
        log_weights = log_p - log_q
        if not grads:
            return log_weights, log_weights.new_zeros(0)
        stl = any(_is_stl(site["fn"]) for site in _sample_sites(guide_trace))
        zero = log_weights.new_zeros(num)
        score, model_part = zero, zero
        if self.gradient == "total" and stl:
            raise _RefusedError(
                "gradient='total' needs the guide's log-density with live parameters, but this "
                "guide evaluates it with 'sticking the landing' (detached parameters), which "
                "would bias the bound: build the guide with stl=False, or use gradient='dreg'"
            )
        model_params = [
            site
            for name, site in model_trace.nodes.items()
            if site["type"] == "param"
            and name not in guide_trace.nodes
            and torch.is_tensor(site["value"])
            and site["value"].requires_grad
        ]
        if model_params and not self.trains_model:
            raise _RefusedError(
                f"{type(self).__name__} minimises an upper bound of log p(x): it cannot fit the "
                f"model's own parameters {[site['name'] for site in model_params]}; fix them "
                "(e.g. poutine.block(model, hide_types=['param'])) or fit them with a lower bound"
            )
        detached = None
        if self.gradient == "dreg":
            if isinstance(guide, AutoFlow | AutoAmortizedFlow):
                score = self._site_scores(guide_trace, num, nesting, like)
            else:  # any guide: its log-density at the detached draws, by a replay
                detached = _detached(guide_trace)
                replayed = poutine.trace(
                    poutine.replay(_in_plate(guide, num, nesting), trace=detached)
                ).get_trace(*args, **kwargs)
                score = trace_log_joint(replayed, num, nesting, like)
                score = score - score.detach()
            if model_params:  # log p(x, z) at the detached draws: a gradient for psi only
                detached = _detached(guide_trace) if detached is None else detached
                at_fixed = poutine.trace(
                    poutine.replay(_in_plate(model, num, nesting), trace=detached)
                ).get_trace(*args, **kwargs)
                model_part = trace_log_joint(at_fixed, num, nesting, like)
                model_part = model_part - model_part.detach()
        return log_weights, torch.stack([score, model_part])

    @staticmethod
    def _site_scores(
        guide_trace: poutine.Trace, num: int, nesting: int | None, like: Tensor
    ) -> Tensor:
        r"""Zero-valued (num,) whose gradient is :math:`\nabla_\theta \log q_\theta(\bar z)` at
        the detached draws, site by site, for pyroflows' guides (whose sites' distributions do
        not depend on other draws): ``Delta`` sites (a fixed bijection of another site) and
        STL sites (parameters already held fixed) add nothing."""
        total = like.new_zeros(num)
        for site in _sample_sites(guide_trace):
            fn = _unwrap(site["fn"])
            if isinstance(fn, dist.Delta) or _is_stl(fn):
                continue
            log_prob = site["fn"].log_prob(site["value"].detach())
            log_prob = scale_and_mask(log_prob, site["scale"], site["mask"])
            total = total + sum_to_particles(log_prob, num, nesting, like)
        return total - total.detach()

    def _particles(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict, grads: bool
    ) -> tuple[Tensor, Tensor]:
        """The log-weights (K,) and the gradient corrections (2, K) of :meth:`_draw`, drawn at
        once in a particle plate, or one particle at a time."""
        nesting = self._nesting(model, guide, args, kwargs)
        K = self.num_particles
        parts: list[tuple[Tensor, Tensor]] = []  # single-particle draws
        if self.vectorize_particles:
            try:
                return self._draw(model, guide, args, kwargs, K, nesting, grads)
            except _RefusedError:
                raise
            except VECTORIZE_ERRORS as error:
                # A second batch tells the two causes apart: a draw the model cannot take (an
                # ODE solve giving up at a wild value) is not redrawn, a model that does not
                # broadcast over the plate fails again. Only the latter means one at a time.
                try:
                    return self._draw(model, guide, args, kwargs, K, nesting, grads)
                except _RefusedError:
                    raise
                except VECTORIZE_ERRORS:
                    pass
                # One particle outside the plate must then work: where it fails too (a guide
                # whose parameters diverged, as in a step size's pilot run), the plate is not
                # the cause, and switching for good would slow every later step K-fold.
                try:
                    parts.append(self._draw(model, guide, args, kwargs, 1, None, grads))
                except VECTORIZE_ERRORS as alone:
                    raise alone from error
                warnings.warn(
                    f"{type(self).__name__}: the model and guide do not run in a particle plate "
                    f"({describe(error)}), so the {K} particles are drawn one at a time "
                    "(vectorize_particles=False)",
                    stacklevel=3,
                )
                self.vectorize_particles = False
        parts += [
            self._draw(model, guide, args, kwargs, 1, None, grads) for _ in range(K - len(parts))
        ]
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts], dim=-1)

    def _surrogate(self, log_weights: Tensor, extra: Tensor) -> tuple[Tensor, Tensor]:
        """``(loss, surrogate)``: the loss estimate and a tensor whose value is that loss and
        whose gradient is the chosen estimator of its gradient."""
        loss, d1, d2 = self.objective(log_weights.detach())
        score, model_part = extra[0], extra[1]
        if self.gradient == "dreg":
            guide_coef = d1 - d2
            # Path derivative of the log-weights: their gradient plus the score term.
            surrogate = (guide_coef * (log_weights + score)).sum()
            # The model's parameters: d1 in all, of which guide_coef came with the path term.
            surrogate = surrogate + (d2 * model_part).sum()
        else:
            surrogate = (d1 * log_weights).sum()
        self.update(log_weights.detach())
        return loss, loss.detach() + surrogate - surrogate.detach()

    def differentiable_loss(
        self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> Tensor:
        """The loss estimate, as a tensor whose gradient is the objective's estimator (for a
        custom training loop)."""
        log_weights, extra = self._particles(model, guide, args, kwargs, True)
        return self._surrogate(log_weights, extra)[1]

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The loss estimate; accumulates the gradient estimate into the parameters' ``grad``
        (what :class:`pyro.infer.SVI` calls)."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        value = float(loss.detach())
        if math.isnan(value):
            warnings.warn(f"{type(self).__name__}: the loss is NaN", stacklevel=2)
        return value

    @torch.no_grad()
    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """The loss estimate, without gradients (a guide that averages its parameters, as
        pyroflows' do, is evaluated at its average, as in every Pyro ``ELBO.loss``)."""
        log_weights, _ = self._particles(model, guide, args, kwargs, False)
        return float(self.objective(log_weights)[0])


# A virtual subclass of Pyro's ELBO (the ABC's public ``register``), so that SVI treats the
# objectives as ELBOs (it calls their loss_and_grads), without inheriting ELBO, whose abstract
# hooks are private to Pyro.
ELBO.register(ParticleObjective)
