"""The replay buffer of :class:`~pyroflows.rl.sac.SAC`: transitions kept in NumPy, sampled as
tensors on the learner's device and dtype."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["ReplayBuffer"]


class ReplayBuffer:
    """Fixed-size circular buffer of transitions :math:`(s, a, r, s', d)` in numpy.

    ``sample(n)`` returns float tensors on ``device``/``dtype``: observations ``(n, obs_dim)``,
    actions ``(n, act_dim)``, rewards and termination flags ``(n,)``.
    """

    def __init__(self, obs_dim: int, act_dim: int, capacity: int, seed: int = 0) -> None:
        self.capacity, self.size, self.position = capacity, 0, 0
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.actions = np.zeros((capacity, act_dim), np.float32)
        self.rewards = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, np.float32)
        self.rng = np.random.default_rng(seed)

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: float,
        next_obs: np.ndarray,
        terminated: bool,
    ) -> None:
        i = self.position
        self.obs[i], self.actions[i], self.rewards[i] = obs, action, reward
        self.next_obs[i], self.terminated[i] = next_obs, float(terminated)
        self.position = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(
        self, n: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> tuple[Tensor, ...]:
        if self.size == 0:
            raise ValueError("the replay buffer is empty")
        idx = self.rng.integers(0, self.size, n)
        return tuple(
            torch.as_tensor(a[idx], device=device, dtype=dtype)
            for a in (self.obs, self.actions, self.rewards, self.next_obs, self.terminated)
        )

    def __len__(self) -> int:
        return self.size
