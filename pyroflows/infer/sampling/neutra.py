r"""Flow-preconditioned NUTS ("NeuTra"): Hamiltonian Monte Carlo in a fitted guide's base space.

A fitted flow guide :math:`q = T_\# \mathcal{N}(0, I)` over a model's unconstrained latent
vector :math:`u \in \mathbb{R}^D` (see :mod:`.targets_and_proposals`) gives a bijection
:math:`u = T(z)`. Rather than sampling :math:`\tilde p(u)` itself, NUTS samples the pull-back

.. math:: \pi(z) \propto \tilde p(T(z)) \left|\det \frac{\partial T}{\partial z}\right|,
   \qquad U(z) = -\log \tilde p(T(z)) - \log\left|\det \frac{\partial T}{\partial z}\right|,

and every draw maps back, :math:`u = T(z)`, then each site to its support. The change of
variables is exact whatever :math:`T` is, so the draws target the model's posterior even for a
poor fit; the better :math:`q` fits, the closer :math:`\pi` is to :math:`\mathcal{N}(0, I)`,
where one step size and a unit mass matrix suit every direction: a funnel's neck and mouth,
strongly correlated or badly scaled posteriors. Each gradient of :math:`U` costs one model
evaluation and one pass of the flow (with its log-determinant) and its backward pass.

Reference: Hoffman, Sountsov, Dillon, Langmore, Tran & Vasudevan, "NeuTra-lizing Bad Geometry
in Hamiltonian Monte Carlo Using Neural Transport" (2019), https://arxiv.org/abs/1903.03704.

Pyro's :class:`~pyro.infer.reparam.NeuTraReparam` does the same through a reparametrised
model; here NUTS runs on a potential function (no Pyro trace of the flow per step) and works
with every guide whose posterior is a flow, :class:`~pyroflows.infer.AutoMeanFieldFlow`'s
product of per-site flows included.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from pyro.infer import MCMC, NUTS
from pyro.infer.autoguide import AutoContinuous
from pyro.infer.mcmc.util import diagnostics, print_summary, select_samples
from torch import Tensor

from ...checks import check_count
from ...core import FlowDistribution
from ..guides.amortized import AutoAmortizedFlow
from ..guides.autoguide import AutoFlow
from ..guides.meanfield import BlockProduct
from ..model_density import check_model_arguments
from .importance import seeded
from .targets_and_proposals import ModelTarget

__all__ = ["GuideTransport", "NeuTraMCMC", "NeuTraPotential", "neutra_mcmc"]

#: Name of the base-space variable that NUTS samples.
BASE_SITE = "neutra_base"


class GuideTransport:
    r"""A guide's bijection :math:`T` from its base space to the unconstrained latent space.

    ``transport(z)`` maps base points (..., D) to ``(u, log|det dT/dz|)``, shapes (..., D) and
    (...); :meth:`sample_base` draws base points. A pyroflows guide's map is that of its
    posterior (the parameter averages once trained); a Pyro ``AutoContinuous`` guide's is its
    ``get_transform()`` at its current parameters.

    Raises:
        TypeError: for an amortized guide, a guide that is not an ``AutoContinuous`` one, or
            one without ``get_transform()``. ValueError: for an unbuilt guide.
    """

    def __init__(self, guide: Any, args: tuple, kwargs: dict) -> None:
        if isinstance(guide, AutoAmortizedFlow):
            raise TypeError(
                "AutoAmortizedFlow is amortized: its flow is a conditional one of each data "
                "point's local latents, not one bijection of the whole latent vector, which "
                "NeuTra needs; fit an AutoFlow (or AutoMeanFieldFlow) to the model instead"
            )
        if not isinstance(guide, AutoContinuous):
            raise TypeError(
                "neutra_mcmc needs a guide over the flat latent vector: an AutoFlow, an "
                "AutoMeanFieldFlow or a Pyro AutoContinuous guide (AutoMultivariateNormal, "
                f"AutoIAFNormal, ...); got {type(guide).__name__}"
            )
        if guide.prototype_trace is None:
            raise ValueError(
                f"the {type(guide).__name__} has not been fitted (it has never run on the "
                "model's arguments): fit it first, e.g. with pyroflows.infer.fit_guide"
            )
        nodes = list(guide.prototype_trace.iter_stochastic_nodes())
        self.order = [name for name, _ in nodes]
        #: The device of the guide's model (of its first latent site's value).
        self.device = nodes[0][1]["value"].device if nodes else torch.device("cpu")
        #: ``(slice, transform, base, pyroflows)`` per block of coordinates.
        self.blocks: list[tuple[slice, Any, Any, bool]] = []
        with torch.no_grad():
            if isinstance(guide, AutoFlow):  # the posterior the user sees (averaged flows)
                q = guide.get_posterior(*args, **kwargs)
                blocks = (
                    zip(q.parts, q.slices)
                    if isinstance(q, BlockProduct)
                    else [(q, slice(0, q.event_shape[0]))]
                )
                for part, s in blocks:
                    if not isinstance(part, FlowDistribution):
                        raise TypeError(f"cannot use a posterior of type {type(part).__name__}")
                    self.blocks.append((s, part.transform, part.base_dist, True))
            else:
                try:
                    transform = guide.get_transform(*args, **kwargs)
                except NotImplementedError as error:
                    raise TypeError(
                        f"{type(guide).__name__} has no get_transform(), so its posterior "
                        "is no bijection of a base distribution; use AutoFlow, "
                        "AutoMultivariateNormal, AutoDiagonalNormal or AutoIAFNormal"
                    ) from error
                base = guide.get_base_dist()
                self.blocks.append((slice(0, base.event_shape[0]), transform, base, False))
        self.dim = self.blocks[-1][0].stop

    def sample_base(self, shape: tuple[int, ...] = ()) -> Tensor:
        """Base points ``shape + (D,)`` (the guide's dtype and device)."""
        with torch.no_grad():
            return torch.cat([base.sample(shape) for _, _, base, _ in self.blocks], dim=-1)

    def __call__(self, z: Tensor) -> tuple[Tensor, Tensor]:
        parts, ladj = [], z.new_zeros(z.shape[:-1])
        for s, transform, _, pyroflows in self.blocks:
            zs = z[..., s]
            if pyroflows:
                u, part = transform.call_and_ladj(zs)
            else:
                u = transform(zs)
                part = transform.log_abs_det_jacobian(zs, u)
                if part.dim() >= zs.dim():  # an elementwise transform: sum its event dim
                    part = part.sum(-1)
            parts.append(u)
            ladj = ladj + part
        return torch.cat(parts, dim=-1), ladj


class NeuTraPotential:
    r"""The potential :math:`U(z) = -\log\tilde p(T(z)) - \log|\det \partial T/\partial z|` of
    NUTS's ``{"neutra_base": z}``, counting its calls.

    Attributes:
        target: the model's :class:`~.targets_and_proposals.ModelTarget`.
        transport: the guide's :class:`GuideTransport`.
        num_calls: evaluations so far; ``num_gradients``: those made for a gradient.
    """

    def __init__(self, target: ModelTarget, transport: GuideTransport) -> None:
        self.target, self.transport = target, transport
        self.num_calls = self.num_gradients = 0

    def __call__(self, params: dict[str, Tensor]) -> Tensor:
        z = params[BASE_SITE]
        self.num_calls += 1
        self.num_gradients += int(z.requires_grad)
        u, ladj = self.transport(z.unsqueeze(0))
        return -(self.target(u) + ladj).squeeze(0)

    def to_model_sites(self, z: Tensor) -> dict[str, Tensor]:
        """The model's sites, constrained, for base draws (C, N, D): ``name -> (C, N, *shape)``."""
        with torch.no_grad():
            u, _ = self.transport(z.reshape(-1, z.shape[-1]))
            sites = self.target.unpack(u)
        return {k: v.reshape(z.shape[:2] + v.shape[1:]) for k, v in sites.items()}


class GradientCounter:
    """MCMC's per-iteration hook: the potential's gradients since the last call, by stage.

    A small object of its own rather than a method of the MCMC object, so that Pyro can pickle
    it into the worker processes of ``mp_context="spawn"`` (the MCMC object holds queues and
    locks). Counts made in a worker stay there.
    """

    def __init__(self, potential: NeuTraPotential, user_hook: Callable | None = None) -> None:
        self.potential, self.user_hook = potential, user_hook
        self.counted = {"warmup": 0, "sampling": 0, "seen": potential.num_gradients}

    def __call__(self, kernel: Any, params: Any, stage: str, i: int) -> None:
        n = self.potential.num_gradients
        key = "warmup" if stage.startswith("Warmup") else "sampling"
        self.counted[key] += n - self.counted["seen"]
        self.counted["seen"] = n
        if self.user_hook is not None:
            self.user_hook(kernel, params, stage, i)


class NeuTraMCMC(MCMC):
    """Pyro's :class:`~pyro.infer.MCMC` over a guide's base space whose samples are the model's.

    ``get_samples()``, ``diagnostics()`` and ``summary()`` speak of the model's sites, with
    their names, shapes and constrained values; :meth:`base_samples` gives NUTS's own draws.

    Attributes:
        potential: the :class:`NeuTraPotential`.
        gradient_evaluations: ``{"warmup": n, "sampling": m, "total": n + m}``, the gradients
            of the potential NUTS took (its leapfrog steps; set-up and warm-up in ``"warmup"``)
            over all chains; ``None`` when the chains ran in worker processes.
        model_samples: ``name -> (chains, num_samples, *shape)`` after :meth:`run`.
    """

    def __init__(
        self,
        kernel: NUTS,
        num_samples: int,
        warmup_steps: int,
        potential: NeuTraPotential,
        hook_fn: Callable | None = None,
        **kwargs: Any,
    ) -> None:
        self.potential = potential
        self.counter = GradientCounter(potential, hook_fn)
        self.gradient_evaluations: dict[str, int] | None = None
        self.model_samples: dict[str, Tensor] = {}
        kwargs = {"transforms": {}, **kwargs}
        super().__init__(kernel, num_samples, warmup_steps, hook_fn=self.counter, **kwargs)

    def run(self, *args: Any, **kwargs: Any) -> None:
        """Run the chains (the model's arguments were given to :func:`neutra_mcmc`)."""
        counted = self.counter.counted
        counted.update(warmup=0, sampling=0, seen=self.potential.num_gradients)
        super().run(*args, **kwargs)
        warmup, sampling = counted["warmup"], counted["sampling"]
        self.gradient_evaluations = (  # no sampling-phase count: the chains ran elsewhere
            {"warmup": warmup, "sampling": sampling, "total": warmup + sampling}
            if sampling
            else None
        )
        self.model_samples = self.potential.to_model_sites(self.base_samples(group_by_chain=True))

    def base_samples(self, group_by_chain: bool = False) -> Tensor:
        """NUTS's draws ``z`` of the base space: (chains * num_samples, D), or (chains,
        num_samples, D) with ``group_by_chain``."""
        return super().get_samples(group_by_chain=group_by_chain)[BASE_SITE]

    def get_samples(
        self, num_samples: int | None = None, group_by_chain: bool = False
    ) -> dict[str, Tensor]:
        """The model's sites, ``name -> (chains * num_samples, *shape)`` (or with a chain dim),
        resampled to ``num_samples`` when given, as Pyro's ``MCMC.get_samples``."""
        return select_samples(self.model_samples, num_samples, group_by_chain)

    def diagnostics(self) -> dict[str, Any]:
        """Effective sample sizes and split R-hat of the model's sites, with the kernel's
        divergences and acceptance rate per chain."""
        out = diagnostics(self.model_samples)
        out.update({k: v for k, v in super().diagnostics().items() if k != BASE_SITE})
        return out

    def summary(self, prob: float = 0.9) -> None:
        """Print the model's sites' summary table and the number of divergences."""
        print_summary(self.model_samples, prob=prob)
        divergences = self.diagnostics().get("divergences", {})
        print(f"Number of divergences: {sum(len(v) for v in divergences.values())}")


def neutra_mcmc(
    model: Callable,
    guide: Any,
    num_samples: int,
    warmup_steps: int,
    *,
    model_args: tuple = (),
    model_kwargs: dict | None = None,
    num_chains: int = 1,
    seed: int | None = None,
    target_accept_prob: float = 0.8,
    max_tree_depth: int = 10,
    progress: bool | None = None,
    kernel_options: dict | None = None,
    **mcmc_kwargs: Any,
) -> NeuTraMCMC:
    r"""Run NUTS preconditioned by a fitted guide's flow ("NeuTra", Hoffman et al. 2019).

    NUTS samples :math:`z` of the guide's base space under :math:`\pi(z) \propto \tilde
    p(T(z))|\det \partial T/\partial z|` (see the module's description), started at draws of
    the base (the guide's draws); the result's samples are the model's sites.

    Args:
        model: a Pyro model with continuous latent sites.
        guide: a guide of it, fitted: :class:`~pyroflows.infer.AutoFlow`,
            :class:`~pyroflows.infer.AutoMeanFieldFlow`, or Pyro's ``AutoMultivariateNormal``,
            ``AutoDiagonalNormal``, ``AutoIAFNormal``, ``AutoNormalizingFlow``. An unfitted but
            built ``AutoFlow`` is allowed: its initial Gaussian (Laplace) is a valid, weaker
            preconditioner.
        num_samples: draws kept per chain.
        warmup_steps: warm-up (adaptation) iterations per chain.
        model_args: the model's positional arguments (a tuple).
        model_kwargs: the model's keyword arguments.
        num_chains: chains (Pyro runs them in worker processes when it has the CPUs; where
            torch sees a GPU they are started with ``mp_context="spawn"``, which needs a
            model defined at a module's top level, as pickling does).
        seed: seeds torch's RNG for the run, restoring its global state after (``None``: the
            global RNG).
        target_accept_prob: NUTS's target acceptance probability (step-size adaptation).
        max_tree_depth: NUTS's largest tree depth (at most ``2**max_tree_depth - 1`` steps).
        progress: Pyro's progress bar (``None``: on a terminal).
        kernel_options: other options of :class:`~pyro.infer.NUTS` (``adapt_mass_matrix``,
            ``full_mass``, ``step_size``, ...).
        **mcmc_kwargs: other options of :class:`~pyro.infer.MCMC` (``hook_fn``, ``mp_context``).

    Returns:
        A :class:`NeuTraMCMC` (a ``pyro.infer.MCMC``) that has run: ``get_samples()`` gives
        the model's sites in their constrained space, ``diagnostics()`` their ESS and R-hat and
        the divergences, ``gradient_evaluations`` the gradients taken (warm-up included).

    Raises:
        TypeError: for an amortized or unsupported guide, or discrete latent sites.
        ValueError: for an unfitted (unbuilt) guide, a guide of another model (other sites or
            dimension), or counts below 1 (``warmup_steps`` below 0).

    Example:
        >>> def model():
        ...     pyro.sample("s", dist.LogNormal(0.0, 1.0))
        >>> guide = pyroflows.infer.AutoFlow(model, transforms=1, hidden=(4,))
        >>> mcmc = neutra_mcmc(model, guide, num_samples=10, warmup_steps=10, seed=0)
        >>> samples = mcmc.get_samples()
        >>> samples["s"].shape, bool((samples["s"] > 0).all()), mcmc.gradient_evaluations["total"] > 0
        (torch.Size([10]), True, True)
        >>> result = pyroflows.infer.fit_guide(model, guide)  # doctest: +SKIP
        >>> mcmc = neutra_mcmc(model, guide, 1000, 1000)  # doctest: +SKIP
    """
    num_samples = check_count("num_samples", num_samples)
    warmup_steps = check_count("warmup_steps", warmup_steps, 0)
    num_chains = check_count("num_chains", num_chains)
    args, kwargs = check_model_arguments(model_args, model_kwargs)
    transport = GuideTransport(guide, args, kwargs)
    with seeded(seed, transport.device):  # the model's trace and NUTS draw random numbers
        target = ModelTarget(model, args, kwargs, order=transport.order)
        if target.dim != transport.dim:
            raise ValueError(
                f"dimension mismatch: the model's unconstrained latent vector has {target.dim} "
                f"dimensions ({target.describe()}) but the guide's has {transport.dim}: is "
                "the guide one of this model, fitted on the same arguments?"
            )
        potential = NeuTraPotential(target, transport)
        if num_chains > 1 and torch.cuda.is_available():
            # Pyro forks its chain processes; where torch sees a GPU, any backward pass (the
            # guide's fit) has started autograd's device threads, which a forked child cannot
            # use, and a process that has used CUDA cannot fork at all: start them fresh.
            mcmc_kwargs.setdefault("mp_context", "spawn")
        options = {"target_accept_prob": target_accept_prob, "max_tree_depth": max_tree_depth}
        kernel = NUTS(potential_fn=potential, **options, **(kernel_options or {}))
        z0 = transport.sample_base((num_chains,) if num_chains > 1 else ())
        mcmc = NeuTraMCMC(
            kernel,
            num_samples,
            warmup_steps,
            potential,
            initial_params={BASE_SITE: z0},
            num_chains=num_chains,
            disable_progbar=not (sys.stderr.isatty() if progress is None else progress),
            **mcmc_kwargs,
        )
        mcmc.run()
    return mcmc
