"""Normalizing-flow policies for reinforcement learning and a reference soft actor-critic.

* :class:`FlowPolicy` — a conditional flow followed by a tanh squash onto the action box, as
  an ``nn.Module`` whose call returns a :class:`PolicyDistribution`;
* :class:`TanhSquash` — the squash bijection with an exact, stable log-determinant;
* :mod:`pyroflows.rl.sac` — a single-file soft actor-critic on Gymnasium (needs
  ``gymnasium``: ``pip install pyroflows[rl]``);
* :mod:`pyroflows.rl.sb3` and :mod:`pyroflows.rl.torchrl` — adapters for Stable-Baselines3
  and TorchRL (optional).
"""

from .policy import FlowPolicy, PolicyDistribution
from .squash import TanhSquash, log_dtanh

__all__ = ["FlowPolicy", "PolicyDistribution", "TanhSquash", "log_dtanh"]
