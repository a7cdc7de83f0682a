r"""Stable-Baselines3 adapter: a :class:`~pyroflows.rl.FlowPolicy` as the actor of SB3's SAC.

SB3's SAC (``stable_baselines3.SAC``) talks to its actor through four methods:
``actor(obs, deterministic)`` (actions in :math:`[-1, 1]^d`, which SB3 rescales to the
environment's box), ``actor.action_log_prob(obs) -> (actions, log_prob)`` (reparametrised;
the actor and temperature losses), ``actor.optimizer`` and ``set_training_mode``. The
:class:`FlowActor` here provides them on top of a ``FlowPolicy`` over ``[-1, 1]^d`` (SB3
stores and scales actions in that box itself), and :class:`FlowSACPolicy` is an SB3
``SACPolicy`` whose actor is a ``FlowActor``; the critics, target networks, replay buffer and
entropy tuning stay SB3's. Needs ``stable-baselines3`` (optional).

Example:
    >>> from stable_baselines3 import SAC                                  # doctest: +SKIP
    >>> from pyroflows.rl.sb3 import FlowSACPolicy                         # doctest: +SKIP
    >>> model = SAC(FlowSACPolicy, "Pendulum-v1", learning_rate=1e-3,
    ...             policy_kwargs={"flow": "nsf", "flow_options": {"bins": 8}})  # doctest: +SKIP
    >>> model.learn(20_000)                                                # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.preprocessing import get_action_dim
from stable_baselines3.sac.policies import SACPolicy
from torch import Tensor, nn

from .policy import FlowPolicy

__all__ = ["FlowActor", "FlowSACPolicy"]


class FlowActor(BasePolicy):
    """SB3 actor wrapping a :class:`~pyroflows.rl.FlowPolicy` over ``[-1, 1]^d``.

    Observations go through SB3's features extractor (``features_dim`` outputs), then the
    flow policy's own embedding MLP (widths ``net_arch``, default SB3's ``[256, 256]``).

    Args:
        observation_space, action_space, features_extractor, features_dim, normalize_images:
            as SB3's ``Actor``.
        net_arch: embedding widths of the flow policy.
        activation_fn: an activation class whose lower-case name is a pyroflows activation
            (``nn.ReLU`` -> ``"relu"``, ``nn.Tanh``, ``nn.ELU``, ...; ValueError otherwise).
        flow, flow_options, affine: as :class:`~pyroflows.rl.FlowPolicy`.
    """

    action_space: spaces.Box

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        net_arch: list[int],
        features_extractor: nn.Module,
        features_dim: int,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
        flow: str | None = "nsf",
        flow_options: dict[str, Any] | None = None,
        affine: bool = True,
    ) -> None:
        super().__init__(
            observation_space,
            action_space,
            features_extractor=features_extractor,
            normalize_images=normalize_images,
            squash_output=True,
        )
        self.net_arch, self.features_dim, self.activation_fn = net_arch, features_dim, activation_fn
        self.flow, self.flow_options, self.affine = flow, flow_options, affine
        self.flow_policy = FlowPolicy(
            features_dim,
            get_action_dim(action_space),
            -1.0,
            1.0,
            flow=flow,
            hidden=tuple(net_arch) or (256, 256),
            activation=activation_fn.__name__.lower(),
            flow_options=flow_options,
            affine=affine,
            validate=False,
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            net_arch=self.net_arch,
            features_dim=self.features_dim,
            activation_fn=self.activation_fn,
            features_extractor=self.features_extractor,
            flow=self.flow,
            flow_options=self.flow_options,
            affine=self.affine,
        )
        return data

    def distribution(self, obs: Tensor) -> Any:
        """The :class:`~pyroflows.rl.PolicyDistribution` for (preprocessed) observations."""
        return self.flow_policy(self.extract_features(obs, self.features_extractor))

    def forward(self, obs: Tensor, deterministic: bool = False) -> Tensor:
        d = self.distribution(obs)
        return d.deterministic_sample if deterministic else d.rsample()

    def action_log_prob(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        return self.distribution(obs).rsample_and_log_prob()

    def _predict(self, observation: Tensor, deterministic: bool = False) -> Tensor:
        return self(observation, deterministic)

    def reset_noise(self, batch_size: int = 1) -> None:
        raise ValueError("flow policies do not use gSDE (use_sde=False)")


class FlowSACPolicy(SACPolicy):
    """SB3 ``SACPolicy`` whose actor is a :class:`FlowActor` (pass as ``SAC(FlowSACPolicy, env)``).

    Extra ``policy_kwargs``: ``flow`` (registry name, default ``"nsf"``; ``None`` gives a
    tanh-Gaussian through the same code path), ``flow_options`` and ``affine`` (see
    :class:`~pyroflows.rl.FlowPolicy`). ``use_sde=True`` is refused (ValueError).
    """

    def __init__(
        self,
        *args: Any,
        flow: str | None = "nsf",
        flow_options: dict[str, Any] | None = None,
        affine: bool = True,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("use_sde"):
            raise ValueError("FlowSACPolicy does not support gSDE (use_sde=True)")
        # _build (called by SACPolicy.__init__) needs these; nn.Module allows plain attributes
        # before its __init__ runs.
        self._flow_kwargs = {"flow": flow, "flow_options": flow_options, "affine": affine}
        super().__init__(*args, **kwargs)

    def make_actor(self, features_extractor: nn.Module | None = None) -> FlowActor:
        kwargs = self._update_features_extractor(self.actor_kwargs, features_extractor)
        for key in ("use_sde", "log_std_init", "use_expln", "clip_mean"):
            kwargs.pop(key, None)
        return FlowActor(**kwargs, **self._flow_kwargs).to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(self._flow_kwargs)
        return data

    def reset_noise(self, batch_size: int = 1) -> None:
        raise ValueError("flow policies do not use gSDE (use_sde=False)")
