r"""TorchRL adapter: a :class:`~pyroflows.rl.FlowPolicy` as a ``ProbabilisticActor``.

TorchRL's losses (``torchrl.objectives.SACLoss`` and friends) take the actor as a
``ProbabilisticActor``: a ``TensorDictModule`` writing distribution parameters into the
tensordict, and a distribution built from them. Here the "parameter" is the flow's context,
the policy's observation embedding :math:`c = h_\phi(s)`, and the distribution is
``policy.distribution(c)``, a :class:`~pyroflows.rl.PolicyDistribution` with ``rsample``,
``log_prob`` and the ``deterministic_sample`` property TorchRL uses in deterministic
exploration mode. The whole policy (embedding *and* flow) is a submodule of the actor, so the
loss's functional copy of the actor parameters contains the flow's parameters too and they
are trained. Needs ``torchrl`` and ``tensordict`` (optional).

Example:
    >>> from torchrl.objectives import SACLoss                                  # doctest: +SKIP
    >>> from pyroflows.rl import FlowPolicy                                     # doctest: +SKIP
    >>> from pyroflows.rl.torchrl import torchrl_actor                          # doctest: +SKIP
    >>> actor = torchrl_actor(FlowPolicy(3, 1, -2.0, 2.0))                      # doctest: +SKIP
    >>> loss = SACLoss(actor, qvalue_network)   # qvalue reads observation, action  # doctest: +SKIP
"""

from __future__ import annotations

from tensordict.nn import TensorDictModule
from torch import Tensor, nn
from torchrl.modules import ProbabilisticActor

from .policy import FlowPolicy, PolicyDistribution

__all__ = ["PolicyContext", "flow_policy_distribution", "torchrl_actor"]


class PolicyContext(nn.Module):
    """Holds a :class:`~pyroflows.rl.FlowPolicy` and maps observations to its context
    (the embedding), so that all the policy's parameters belong to the TorchRL actor."""

    def __init__(self, policy: FlowPolicy) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, observation: Tensor) -> Tensor:
        return self.policy.embedding(self.policy._as_obs(observation))


def flow_policy_distribution(context: Tensor, policy: FlowPolicy) -> PolicyDistribution:
    """``distribution_class`` of the actor: ``policy.distribution(context)``."""
    return policy.distribution(context)


def torchrl_actor(
    policy: FlowPolicy,
    in_key: str = "observation",
    out_key: str = "action",
    context_key: str = "flow_context",
    spec=None,  # noqa: ANN001
    return_log_prob: bool = False,
) -> ProbabilisticActor:
    """A TorchRL ``ProbabilisticActor`` sampling ``out_key`` from ``policy`` given ``in_key``.

    Args:
        policy: the flow policy (its box is the action box; pass ``env.action_spec`` bounds).
        in_key: tensordict key of the observations.
        out_key: tensordict key of the actions.
        context_key: key under which the embedding is written.
        spec: optional action spec (TorchRL ``TensorSpec``).
        return_log_prob: also write the sample's log-probability (key ``action_log_prob``
            or TorchRL's default for the installed version).

    Returns:
        a ``ProbabilisticActor`` usable as ``actor_network`` of ``torchrl.objectives.SACLoss``.
    """
    if not isinstance(policy, FlowPolicy):
        raise TypeError(f"torchrl_actor takes a FlowPolicy, got {type(policy).__name__}")
    module = TensorDictModule(PolicyContext(policy), in_keys=[in_key], out_keys=[context_key])
    return ProbabilisticActor(
        module=module,
        in_keys={"context": context_key},
        out_keys=[out_key],
        spec=spec,
        distribution_class=flow_policy_distribution,
        distribution_kwargs={"policy": policy},
        return_log_prob=return_log_prob,
    )
