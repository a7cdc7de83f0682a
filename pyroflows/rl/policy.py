r"""Flow policies: conditional normalizing flows as action distributions :math:`\pi(a \mid s)`.

A :class:`FlowPolicy` maps an observation :math:`s` to a distribution over the action box
:math:`[\text{low}, \text{high}]^d`:

.. math::

    c = h_\phi(s), \qquad z \sim \mathcal{N}(0, I_d), \qquad
    u = \mu(c) + \sigma(c) \odot T(z; c), \qquad a = \ell + s_{\text{box}} \odot \tanh(u),

    \log \pi(a \mid s) = \log \mathcal{N}(z; 0, I)
      - \log\left|\det \tfrac{\partial T}{\partial z}\right|
      - \textstyle\sum_i \log \sigma_i(c)
      - \log\left|\det \tfrac{\partial a}{\partial u}\right|,

with :math:`h_\phi` an MLP embedding of the observation (trained jointly), :math:`T` any
conditional flow of the registry (:func:`pyroflows.flows.build` with ``context`` the embedding
size), :math:`(\mu, \sigma)` a conditional elementwise affine layer and the last map the
:class:`~pyroflows.rl.squash.TanhSquash`. Without a flow (``flow=None``) this is exactly the
tanh-Gaussian policy of soft actor-critic (Haarnoja et al. 2018); with one it is a
normalizing-flow policy (Mazoure, Doan, Durand, Hjelm & Pineau, "Leveraging exploration in
off-policy algorithms via normalizing flows", CoRL 2019; Ward, Smofsky & Bose, "Improving
exploration in soft-actor-critic with normalizing flows policies", 2019) that can be
multimodal, skewed and correlated across action dimensions.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions import constraints

from ..checks import check_count, check_hidden
from ..core import Flow, FlowDistribution
from ..flows import registry
from ..nn import dense_stack
from ..transforms import AffineMap, Elementwise
from .squash import TanhSquash

__all__ = ["FlowPolicy", "PolicyDistribution"]


class PolicyDistribution(FlowDistribution):
    r"""A distribution over the action box: a :class:`~pyroflows.FlowDistribution` whose last
    bijection is a :class:`~pyroflows.rl.squash.TanhSquash`, plus what RL agents need.

    Batch shape: the observations' batch shape ``B``; event shape ``(d,)``.

    * ``rsample(sample_shape)``, ``sample(sample_shape)``: actions ``sample_shape + B + (d,)``,
      always inside ``[low, high]`` (possibly *on* a bound in low precision).
    * ``rsample_and_log_prob(sample_shape)``: actions and :math:`\log\pi(a\mid s)` from one
      forward pass (what SAC's actor and temperature losses use).
    * ``log_prob(a)``: density of given actions; actions on a bound get the density of the
      nearest representable interior point (finite); actions outside the box get ``-inf``.
    * ``deterministic_sample`` (property): the image of the base mode, :math:`a = F(0; s)` (the
      median in one dimension, ``tanh(mean)`` for the tanh-Gaussian): cheap, differentiable,
      the action used for evaluation.
    * ``mode``: an approximate mode, the most probable of ``deterministic_sample`` and
      :attr:`mode_candidates` samples (a multimodal policy's median may fall between modes).
    * ``entropy(num_samples=64)``: the Monte Carlo estimate :math:`-\frac1n\sum\log\pi(a_k)`.
    """

    mode_candidates: int = 64

    def __init__(
        self,
        base: dist.TorchDistribution,
        transform,
        low: Tensor,
        high: Tensor,  # noqa: ANN001
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(base, transform, validate_args=validate_args)
        self.low, self.high = low, high

    @constraints.dependent_property(is_discrete=False, event_dim=1)
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.interval(self.low, self.high), 1)

    def log_prob(self, value: Tensor) -> Tensor:
        """:math:`\\log\\pi(a)`, shape ``value.shape[:-1]`` broadcast with the batch shape;
        ``-inf`` outside the box."""
        lp = super().log_prob(value)
        inside = ((value >= self.low) & (value <= self.high)).all(-1)
        return torch.where(inside, lp, torch.full_like(lp, -torch.inf))

    @property
    def deterministic_sample(self) -> Tensor:
        """The action :math:`F(0; s)` of the base's mode, shape ``B + (d,)`` (differentiable;
        a property, as in TorchRL's distributions)."""
        z = self.base_dist.mean.expand(self.batch_shape + self.event_shape)
        return self.transform.call_and_ladj(z)[0]

    @property
    def mode(self) -> Tensor:
        """Approximate mode: argmax of the density over ``deterministic_sample`` and
        :attr:`mode_candidates` samples per observation; shape ``B + (d,)``, not differentiable."""
        with torch.no_grad():
            a, lp = self.rsample_and_log_prob(torch.Size([self.mode_candidates]))
            a0 = self.deterministic_sample
            a = torch.cat([a0.unsqueeze(0), a], 0)
            lp = torch.cat([self.log_prob(a0).unsqueeze(0), lp], 0)
            best = lp.argmax(0)  # shape B
            index = best.reshape(1, *best.shape, 1).expand(1, *a.shape[1:])
            return a.gather(0, index).squeeze(0)

    def entropy(self, num_samples: int = 64) -> Tensor:
        """Monte Carlo entropy estimate from ``num_samples`` draws, shape ``B``
        (differentiable, so usable as a bonus in a loss)."""
        check_count("num_samples", num_samples)
        return -self.rsample_and_log_prob(torch.Size([num_samples]))[1].mean(0)

    def expand(self, batch_shape, _instance=None) -> PolicyDistribution:  # noqa: ANN001
        return PolicyDistribution(
            self.base_dist.expand(torch.Size(batch_shape)), self.transform, self.low, self.high
        )


class FlowPolicy(nn.Module):
    r"""A normalizing-flow policy :math:`\pi(a \mid s)` over the box ``[low, high]``.

    ``policy(obs)`` returns a :class:`PolicyDistribution` (see the module docstring for the
    model and its density). Observations of shape ``B + (obs_dim,)`` give batch shape ``B``
    (``B`` may be empty); numpy observations are accepted and converted to the module's device
    and dtype, tensors are cast to the module's dtype. Parameters, bounds and computations
    follow ``.to(device, dtype)``.

    Args:
        obs_dim: observation size.
        act_dim: action size :math:`d`.
        low, high: action bounds, scalars or ``(act_dim,)`` arrays (e.g. ``env.action_space.low``);
            finite with ``low < high`` (ValueError otherwise).
        flow: name of a registry flow (:func:`pyroflows.flows.available`), built with
            ``context`` equal to the embedding size; ``None`` for the plain tanh-Gaussian
            policy. Default ``"nsf"`` (autoregressive neural spline flow), which works for any
            ``act_dim``; coupling flows (``realnvp``, ``nice``, ``nsf-coupling``) need
            ``act_dim >= 2`` (ValueError otherwise).
        hidden: widths of the observation embedding MLP :math:`h_\phi`; the embedding (the
            flow's context) has ``hidden[-1]`` features.
        activation: non-linearity of the embedding.
        flow_options: options of the flow preset; default ``{"transforms": 2,
            "hidden": (64, 64)}`` for the options the preset takes.
        affine: include the conditional elementwise affine (Gaussian) layer.
        log_scale_bound: bound :math:`b` of that layer's log-scale, :math:`|\log\sigma| \le b`.
        validate: check observations (shape, NaN/inf). The finiteness check synchronises
            with the GPU; turn it off for speed once the pipeline is trusted.

    Raises:
        ValueError: bad sizes or bounds, an unknown flow, a flow that cannot take ``act_dim``.

    Example:
        >>> policy = FlowPolicy(obs_dim=3, act_dim=2, low=-2.0, high=2.0, hidden=(32, 32))
        >>> d = policy(torch.randn(5, 3))
        >>> a, log_prob = d.rsample_and_log_prob()
        >>> a.shape, log_prob.shape, bool((a.abs() <= 2).all())
        (torch.Size([5, 2]), torch.Size([5]), True)
        >>> d.sample((4,)).shape, d.deterministic_sample.shape
        (torch.Size([4, 5, 2]), torch.Size([5, 2]))
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        low: float | Sequence[float] | np.ndarray | Tensor,
        high: float | Sequence[float] | np.ndarray | Tensor,
        flow: str | None = "nsf",
        hidden: Sequence[int] = (256, 256),
        activation: str = "relu",
        flow_options: dict[str, Any] | None = None,
        affine: bool = True,
        log_scale_bound: float = 5.0,
        validate: bool = True,
    ) -> None:
        super().__init__()
        obs_dim, act_dim = check_count("obs_dim", obs_dim), check_count("act_dim", act_dim)
        hidden = check_hidden(hidden)
        if flow is None and not affine:
            raise ValueError("a policy needs a flow, the affine layer, or both")
        self.obs_dim, self.act_dim, self.validate = obs_dim, act_dim, validate
        self.flow_name = flow
        squash = TanhSquash(act_dim, low, high)  # checks the bounds first

        self.embedding = dense_stack(obs_dim, hidden, activation)
        context = hidden[-1]

        parts = []
        if flow is not None:
            parts += list(_build_flow(flow, act_dim, context, flow_options).transforms)
        if affine:
            parts.append(
                Elementwise(
                    AffineMap(log_scale_bound), act_dim, context=context, hidden=(hidden[-1],)
                )
            )
        parts.append(squash)
        self.flow = Flow(parts)

    @property
    def squash(self) -> TanhSquash:
        """The final :class:`~pyroflows.rl.squash.TanhSquash` (holds ``low`` and ``high``)."""
        return self.flow.transforms[-1]

    @property
    def low(self) -> Tensor:
        return self.squash.low

    @property
    def high(self) -> Tensor:
        return self.squash.high

    def _as_obs(self, obs: Tensor | np.ndarray | Sequence[float]) -> Tensor:
        reference = self.squash.loc
        if not isinstance(obs, Tensor):
            obs = torch.as_tensor(np.asarray(obs), device=reference.device)
        if not (obs.is_floating_point() or obs.dtype in (torch.int32, torch.int64, torch.bool)):
            raise TypeError(f"observations must be real numbers, got dtype {obs.dtype}")
        obs = obs.to(reference.dtype)
        if obs.dim() == 0 or obs.shape[-1] != self.obs_dim:
            raise ValueError(
                f"observations have shape {tuple(obs.shape)}; expected (..., "
                f"{self.obs_dim}) (obs_dim={self.obs_dim})"
            )
        if self.validate and not bool(torch.isfinite(obs).all()):
            raise ValueError("observations contain NaN or infinite values")
        return obs

    def forward(self, obs: Tensor | np.ndarray) -> PolicyDistribution:
        """The action distribution :math:`\\pi(\\cdot \\mid s)` for observations ``B + (obs_dim,)``."""
        return self.distribution(self.embedding(self._as_obs(obs)))

    def distribution(self, context: Tensor) -> PolicyDistribution:
        """The action distribution given an embedding ``B + (hidden[-1],)`` (the flow's
        context); ``policy(obs)`` is ``policy.distribution(policy.embedding(obs))``."""
        return PolicyDistribution(
            self.flow.base(context.shape[:-1]), self.flow.transform(context), self.low, self.high
        )

    @torch.no_grad()
    def act(self, obs: Tensor | np.ndarray, deterministic: bool = False) -> np.ndarray:
        """Actions for environment interaction: numpy in, numpy out (no gradient).

        ``deterministic=True`` returns :attr:`PolicyDistribution.deterministic_sample`.
        """
        d = self(obs)
        a = d.deterministic_sample if deterministic else d.sample()
        return a.cpu().numpy()

    def extra_repr(self) -> str:
        return (
            f"obs_dim={self.obs_dim}, act_dim={self.act_dim}, flow={self.flow_name!r}, "
            f"low={self.low.tolist()}, high={self.high.tolist()}"
        )


def _build_flow(name: str, features: int, context: int, options: dict[str, Any] | None) -> Flow:
    make = registry.preset(name)  # ValueError listing the available names
    accepted = inspect.signature(make).parameters
    merged = {k: v for k, v in {"transforms": 2, "hidden": (64, 64)}.items() if k in accepted}
    merged.update(options or {})
    try:
        flow = registry.build(name, features, context=context, **merged)
    except ValueError as error:
        raise ValueError(
            f"flow {name!r} cannot make a policy over a {features}-D action space: {error}"
        ) from None
    if flow.context_features != context:
        raise ValueError(
            f"flow {name!r} has no conditional form (it ignores the context); a policy needs one"
        )
    return flow
