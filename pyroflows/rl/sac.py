r"""A reference soft actor-critic (SAC) agent, single file, CleanRL style, for flow policies.

Soft actor-critic (Haarnoja, Zhou, Abbeel & Levine, ICML 2018; Haarnoja et al., "Soft
Actor-Critic Algorithms and Applications", 2018) maximises
:math:`\mathbb{E}\big[\sum_t \gamma^t (r_t + \alpha \mathcal{H}(\pi(\cdot\mid s_t)))\big]` with

* twin Q networks and target networks updated by Polyak averaging,
  :math:`\bar\theta \leftarrow (1-\tau)\bar\theta + \tau\theta`; the critic target is
  :math:`y = r + \gamma (1 - d)\big(\min_j Q_{\bar\theta_j}(s', a') - \alpha\log\pi(a'\mid s')\big)`,
  :math:`a' \sim \pi(\cdot\mid s')`;
* the actor loss :math:`\mathbb{E}_{a\sim\pi}[\alpha\log\pi(a\mid s) - \min_j Q_{\theta_j}(s, a)]`
  through ``rsample_and_log_prob`` (reparametrised, so any :class:`~pyroflows.rl.FlowPolicy`
  works, the tanh-Gaussian being ``flow=None``);
* automatic entropy tuning, :math:`\min_{\log\alpha} -\log\alpha\,
  \mathbb{E}[\log\pi(a\mid s) + \bar{\mathcal{H}}]` with target :math:`\bar{\mathcal{H}} = -d`;
* a replay buffer, uniform random actions for the first ``learning_starts`` steps,
  bootstrapping through time-limit truncations (only true terminations stop it).

:func:`SAC.train` shows a tqdm progress bar, evaluates the deterministic policy every
``eval_every`` steps and writes the learning curve as CSV and PNG. Needs ``gymnasium``
(``pip install pyroflows[rl]``).

Example:
    >>> from pyroflows.rl.sac import SAC, SACConfig
    >>> agent = SAC("Pendulum-v1", config=SACConfig(total_steps=300, learning_starts=100,
    ...             eval_every=300, eval_episodes=1, progress=False),
    ...             policy_kwargs={"hidden": (32, 32)})   # doctest: +SKIP
    >>> result = agent.train("runs/pendulum")               # doctest: +SKIP
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..checks import check_count, check_real
from .policy import FlowPolicy
from .replay_buffer import ReplayBuffer

__all__ = ["QNetwork", "ReplayBuffer", "SAC", "SACConfig", "SACResult", "polyak_update"]


@dataclasses.dataclass
class SACConfig:
    """Hyper-parameters of :class:`SAC` (defaults: SB3-zoo SAC for Pendulum, lr 1e-3)."""

    total_steps: int = 20_000
    learning_starts: int = 1_000
    batch_size: int = 256
    buffer_size: int = 1_000_000
    gamma: float = 0.99
    tau: float = 0.005
    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    alpha_lr: float = 1e-3
    alpha: float = 1.0  #: initial temperature (the fixed one when ``autotune=False``)
    autotune: bool = True
    target_entropy: float | None = None  #: default ``-act_dim``
    critic_hidden: tuple[int, ...] = (256, 256)
    eval_every: int = 2_000
    eval_episodes: int = 5
    final_eval_episodes: int = 10
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    #: Time budget of ``train`` in seconds (``None``: none); when it runs out, training stops
    #: as on Ctrl-C (the best-evaluated policy, ``stop_reason="max_time"``).
    max_time: float | None = None

    def __post_init__(self) -> None:
        for name in (
            "total_steps",
            "batch_size",
            "buffer_size",
            "learning_starts",
            "eval_every",
            "eval_episodes",
            "final_eval_episodes",
        ):
            check_count(name, getattr(self, name))
        # Closed ends, unlike check_real's: tau = 1 copies the critic, gamma = 0 is myopic.
        if not 0 < self.tau <= 1 or not 0 <= self.gamma <= 1:
            raise ValueError(f"need 0 < tau <= 1 and 0 <= gamma <= 1, got {self.tau}, {self.gamma}")
        check_real("alpha", self.alpha)
        if self.max_time is not None:
            check_real("max_time", self.max_time)


@dataclasses.dataclass
class SACResult:
    """What :meth:`SAC.train` returns: the learning curve (one dict per evaluation, the CSV's
    rows), the final evaluation returns, wall time and the files written."""

    curve: list[dict[str, float]]
    final_returns: list[float]
    wall_time: float
    csv_path: Path | None = None
    png_path: Path | None = None
    #: True when Ctrl-C stopped training: the policy then holds its best-evaluated weights
    #: (``best_step``), or its last ones when no evaluation had run, and ``final_returns`` are
    #: that evaluation's.
    interrupted: bool = False
    best_step: int | None = None
    #: ``"steps"`` (all ``total_steps`` ran), ``"max_time"`` or ``"interrupted"``.
    stop_reason: str = "steps"

    @property
    def final_mean(self) -> float:
        return float(np.mean(self.final_returns)) if self.final_returns else math.nan


class QNetwork(nn.Module):
    """:math:`Q_\\theta(s, a)`: an MLP on the concatenation ``[s, a]`` -> ``(...,)``."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int] = (256, 256)) -> None:
        super().__init__()
        widths = (obs_dim + act_dim, *hidden)
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Linear(widths[-1], 1))

    def forward(self, obs: Tensor, action: Tensor) -> Tensor:
        return self.net(torch.cat([obs, action], -1)).squeeze(-1)


@torch.no_grad()
def polyak_update(source: nn.Module, target: nn.Module, tau: float) -> None:
    """:math:`\\bar\\theta \\leftarrow (1-\\tau)\\bar\\theta + \\tau\\theta`, in place."""
    for p, q in zip(source.parameters(), target.parameters()):
        q.lerp_(p, tau)


def _make_env(env: Any):  # noqa: ANN202
    import gymnasium as gym

    return gym.make(env) if isinstance(env, str) else env


class SAC:
    """Soft actor-critic with a :class:`~pyroflows.rl.FlowPolicy` actor on a Gymnasium env.

    Args:
        env: a Gymnasium id (``"Pendulum-v1"``) or environment with a ``Box`` action space.
        policy: the actor; default ``FlowPolicy(obs_dim, act_dim, low, high, **policy_kwargs)``.
        config: a :class:`SACConfig`.
        eval_env: environment for evaluation (default: a fresh one of the same id, or a deep
            copy of ``env``).
        policy_kwargs: keyword arguments of the default policy (``flow=None`` gives the
            tanh-Gaussian SAC).
    """

    def __init__(
        self,
        env: Any,
        policy: FlowPolicy | None = None,
        config: SACConfig | None = None,
        eval_env: Any = None,
        policy_kwargs: dict[str, Any] | None = None,
    ) -> None:
        import gymnasium as gym

        self.config = config = config or SACConfig()
        self.env = _make_env(env)
        self.eval_env = (
            _make_env(eval_env)
            if eval_env is not None
            else (gym.make(env) if isinstance(env, str) else copy.deepcopy(self.env))
        )
        space = self.env.action_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"SAC needs a 1-D Box action space, got {space}")
        obs_space = self.env.observation_space
        if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
            raise ValueError(f"SAC needs a 1-D Box observation space, got {obs_space}")
        obs_dim, act_dim = obs_space.shape[0], space.shape[0]
        torch.manual_seed(config.seed)
        self.device = torch.device(config.device)
        if policy is None:
            policy = FlowPolicy(obs_dim, act_dim, space.low, space.high, **(policy_kwargs or {}))
        elif policy_kwargs:
            raise ValueError("give either a policy or policy_kwargs, not both")
        if policy.obs_dim != obs_dim or policy.act_dim != act_dim:
            raise ValueError(
                f"the policy is for obs_dim={policy.obs_dim}, act_dim={policy.act_dim}; "
                f"the environment has {obs_dim} and {act_dim}"
            )
        self.policy = policy.to(self.device)
        self.q = nn.ModuleList([QNetwork(obs_dim, act_dim, config.critic_hidden) for _ in range(2)])
        self.q = self.q.to(self.device)
        self.q_target = copy.deepcopy(self.q).requires_grad_(False)
        self.actor_optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.actor_lr)
        self.critic_optimizer = torch.optim.Adam(self.q.parameters(), lr=config.critic_lr)
        self.target_entropy = float(
            -act_dim if config.target_entropy is None else config.target_entropy
        )
        self.log_alpha = torch.tensor(
            float(np.log(config.alpha)), device=self.device, requires_grad=config.autotune
        )
        self.alpha_optimizer = (
            torch.optim.Adam([self.log_alpha], lr=config.alpha_lr) if config.autotune else None
        )
        self.buffer = ReplayBuffer(
            obs_dim, act_dim, min(config.buffer_size, config.total_steps), config.seed
        )
        self.env.action_space.seed(config.seed)

    @property
    def alpha(self) -> float:
        return float(self.log_alpha.detach().exp())

    def update(self, batch: tuple[Tensor, ...]) -> dict[str, float]:
        """One gradient step of the critics, the actor and the temperature; returns the losses."""
        obs, actions, rewards, next_obs, terminated = batch
        alpha = self.log_alpha.exp().detach()
        with torch.no_grad():
            next_a, next_lp = self.policy(next_obs).rsample_and_log_prob()
            q_next = torch.minimum(*(q(next_obs, next_a) for q in self.q_target))
            target = rewards + self.config.gamma * (1 - terminated) * (q_next - alpha * next_lp)
        critic_loss = sum(F.mse_loss(q(obs, actions), target) for q in self.q)
        self.critic_optimizer.zero_grad(set_to_none=True)
        critic_loss.backward()
        self.critic_optimizer.step()

        self.q.requires_grad_(False)  # the actor loss only needs gradients w.r.t. actions
        a, lp = self.policy(obs).rsample_and_log_prob()
        q_pi = torch.minimum(*(q(obs, a) for q in self.q))
        actor_loss = (alpha * lp - q_pi).mean()
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        self.actor_optimizer.step()
        self.q.requires_grad_(True)

        if self.alpha_optimizer is not None:
            alpha_loss = -(self.log_alpha * (lp.detach() + self.target_entropy)).mean()
            self.alpha_optimizer.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optimizer.step()
        polyak_update(self.q, self.q_target, self.config.tau)
        return {
            "critic_loss": critic_loss.item(),
            "actor_loss": actor_loss.item(),
            "entropy": -lp.detach().mean().item(),
        }

    def evaluate(
        self, episodes: int, deterministic: bool = True, seed: int | None = None
    ) -> list[float]:
        """Undiscounted returns of ``episodes`` episodes of the (deterministic) policy."""
        returns = []
        base = self.config.seed + 10_000 if seed is None else seed
        for k in range(episodes):
            obs, _ = self.eval_env.reset(seed=base + k)
            total, done = 0.0, False
            while not done:
                action = self.policy.act(obs, deterministic=deterministic)
                obs, reward, terminated, truncated, _ = self.eval_env.step(action)
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
        return returns

    def train(self, out_dir: str | os.PathLike | None = None, name: str = "sac") -> SACResult:
        """Run ``config.total_steps`` environment steps; write ``{name}_curve.csv`` and
        ``{name}_curve.png`` under ``out_dir`` when given. Returns a :class:`SACResult`; the
        policy is left in eval mode.

        Ctrl-C (KeyboardInterrupt), or ``config.max_time`` running out, stops training and
        returns the partial result (``interrupted=True`` for Ctrl-C; ``stop_reason``): the policy gets back the weights of its best evaluation so far
        (``best_step``; its last weights when no evaluation had run). The critics, optimizers
        and replay buffer are left as they were.
        """
        cfg = self.config
        start = time.perf_counter()
        curve: list[dict[str, float]] = []
        best: tuple[float, int, dict[str, Tensor], list[float]] | None = None
        returns: list[float] = []
        interrupted = False
        bar = tqdm(
            range(1, cfg.total_steps + 1), disable=not cfg.progress, desc=name, mininterval=1.0
        )
        try:
            for step, returns in self._steps(bar, start, curve):
                if best is None or curve[-1]["return_mean"] > best[0]:
                    state = {k: v.detach().clone() for k, v in self.policy.state_dict().items()}
                    best = (curve[-1]["return_mean"], step, state, returns)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
            self.policy.eval()
        timed_out = not interrupted and (not curve or curve[-1]["step"] < cfg.total_steps)
        stop_reason = "interrupted" if interrupted else "max_time" if timed_out else "steps"
        best_step = None
        if stop_reason != "steps" and best is not None:
            _, best_step, state, returns = best
            self.policy.load_state_dict(state)
        result = SACResult(
            curve,
            returns,
            time.perf_counter() - start,
            interrupted=interrupted,
            best_step=best_step,
            stop_reason=stop_reason,
        )
        if out_dir is not None and curve:
            result.csv_path, result.png_path = save_curve(curve, Path(out_dir), name)
        return result

    def _steps(self, bar: Any, start: float, curve: list[dict[str, float]]) -> Any:
        """The training loop; yields ``(step, returns)`` after each evaluation (appended to
        ``curve``)."""
        cfg = self.config
        losses: dict[str, float] = {}
        obs, _ = self.env.reset(seed=cfg.seed)
        self.policy.train()
        for step in bar:
            if cfg.max_time is not None and time.perf_counter() - start > cfg.max_time:
                return
            if step <= cfg.learning_starts:
                action = self.env.action_space.sample()
            else:
                action = self.policy.act(obs)
            next_obs, reward, terminated, truncated, _ = self.env.step(action)
            self.buffer.add(obs, action, float(reward), next_obs, terminated)
            obs = next_obs
            if terminated or truncated:
                obs, _ = self.env.reset()
            if step >= cfg.learning_starts:
                dtype = self.policy.low.dtype
                losses = self.update(self.buffer.sample(cfg.batch_size, self.device, dtype))
            if step % cfg.eval_every == 0 or step == cfg.total_steps:
                final = step == cfg.total_steps
                returns = self.evaluate(cfg.final_eval_episodes if final else cfg.eval_episodes)
                curve.append(
                    {
                        "step": step,
                        "return_mean": float(np.mean(returns)),
                        "return_std": float(np.std(returns)),
                        "alpha": self.alpha,
                        **losses,
                        "wall_time": time.perf_counter() - start,
                    }
                )
                bar.set_postfix(eval_return=f"{np.mean(returns):.1f}", alpha=f"{self.alpha:.3f}")
                yield step, returns


def save_curve(curve: list[dict[str, float]], out_dir: Path, name: str) -> tuple[Path, Path]:
    """Write the learning curve as ``{name}_curve.csv`` and ``{name}_curve.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = out_dir / f"{name}_curve.csv", out_dir / f"{name}_curve.png"
    fields = list(dict.fromkeys(k for row in curve for k in row))
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(curve)
    steps = np.array([row["step"] for row in curve])
    mean = np.array([row["return_mean"] for row in curve])
    std = np.array([row["return_std"] for row in curve])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(steps, mean, marker="o")
    ax.fill_between(steps, mean - std, mean + std, alpha=0.25)
    ax.set(xlabel="environment steps", ylabel="evaluation return", title=name)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return csv_path, png_path
