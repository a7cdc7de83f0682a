"""Flow policies inside agents: the reference SAC, Stable-Baselines3's SAC, TorchRL's SACLoss."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from pyroflows.rl import FlowPolicy

gym = pytest.importorskip("gymnasium")


@pytest.mark.slow
def test_reference_sac_smoke_run_writes_its_learning_curve(tmp_path) -> None:  # noqa: ANN001
    from pyroflows.rl.sac import SAC, SACConfig

    config = SACConfig(
        total_steps=300,
        learning_starts=100,
        batch_size=32,
        eval_every=150,
        eval_episodes=1,
        final_eval_episodes=2,
        critic_hidden=(32, 32),
        progress=False,
        seed=0,
    )
    agent = SAC(
        "Pendulum-v1",
        config=config,
        policy_kwargs={"hidden": (32, 32), "flow_options": {"hidden": (16, 16)}},
    )
    before = [p.detach().clone() for p in agent.policy.parameters()]
    result = agent.train(tmp_path, name="smoke")
    assert result.csv_path.exists() and result.png_path.exists()
    with open(result.csv_path) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["step"]) for r in rows] == [150, 300]
    assert all(np.isfinite(float(r["return_mean"])) for r in rows)
    assert {"alpha", "critic_loss", "actor_loss", "entropy"} <= set(rows[0])
    assert len(result.final_returns) == 2 and len(agent.buffer) == 300
    assert agent.alpha != 1.0  # the temperature was tuned
    changed = [not torch.equal(a, b) for a, b in zip(before, agent.policy.parameters())]
    assert all(changed)  # every policy parameter was trained


def tiny_agent(**overrides: object):  # noqa: ANN201
    """A reference SAC agent small enough for a unit test (tanh-Gaussian policy)."""
    from pyroflows.rl.sac import SAC, SACConfig

    options = {
        "total_steps": 100,
        "learning_starts": 10,
        "batch_size": 8,
        "eval_every": 20,
        "critic_hidden": (8,),
        "progress": False,
        **overrides,
    }
    return SAC(
        "Pendulum-v1", config=SACConfig(**options), policy_kwargs={"hidden": (8,), "flow": None}
    )


def test_reference_sac_keyboard_interrupt_keeps_the_best_evaluated_policy(tmp_path) -> None:  # noqa: ANN001
    """Ctrl-C during training returns the partial result (interrupted=True), the policy back
    at the weights of its best evaluation and in eval mode; evaluations are scripted so the
    best one is known (the second of three)."""

    agent = tiny_agent()
    scripted = iter([[1.0], [5.0], [2.0]])
    states = []

    def evaluate(episodes: int, **kwargs: object) -> list[float]:
        states.append({k: v.clone() for k, v in agent.policy.state_dict().items()})
        if len(states) > 3:
            raise KeyboardInterrupt
        return next(scripted)

    agent.evaluate = evaluate  # type: ignore[method-assign]
    result = agent.train(tmp_path, name="stopped")
    assert result.interrupted and result.best_step == 40 and result.stop_reason == "interrupted"
    assert [row["step"] for row in result.curve] == [20, 40, 60]
    assert result.final_returns == [5.0] and result.csv_path.exists()
    assert not agent.policy.training
    for key, value in agent.policy.state_dict().items():
        assert torch.equal(value, states[1][key]), key
    assert not all(torch.equal(states[1][k], v) for k, v in states[3].items())  # it had moved on
    # Interrupted before any evaluation: the last weights, no curve, no file.
    agent = tiny_agent()
    agent.evaluate = lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt)  # type: ignore[method-assign]
    result = agent.train(tmp_path, name="early")
    assert result.interrupted and result.best_step is None and result.curve == []
    assert result.csv_path is None and np.isnan(result.final_mean)


def test_reference_sac_max_time_stops_like_an_interrupt(tmp_path) -> None:  # noqa: ANN001
    from pyroflows.rl.sac import SACConfig

    agent = tiny_agent(max_time=1e-9)
    result = agent.train(tmp_path)
    assert result.stop_reason == "max_time" and not result.interrupted
    assert result.curve == [] and len(agent.buffer) == 0 and not agent.policy.training
    with pytest.raises(ValueError, match="max_time"):
        SACConfig(max_time=-1.0)


def test_reference_sac_rejects_mismatched_policy() -> None:
    from pyroflows.rl.sac import SAC, SACConfig

    with pytest.raises(ValueError, match="obs_dim"):
        SAC("Pendulum-v1", policy=FlowPolicy(4, 1, -2.0, 2.0, hidden=(8,)))
    with pytest.raises(ValueError, match="total_steps"):
        SACConfig(total_steps=0)


@pytest.mark.slow
def test_sb3_sac_learns_with_a_flow_actor(tmp_path) -> None:  # noqa: ANN001
    sb3 = pytest.importorskip("stable_baselines3")
    from pyroflows.rl.sb3 import FlowActor, FlowSACPolicy

    torch.manual_seed(0)
    model = sb3.SAC(
        FlowSACPolicy,
        "Pendulum-v1",
        learning_starts=50,
        batch_size=32,
        seed=0,
        policy_kwargs={"net_arch": [32, 32], "flow": "nsf", "flow_options": {"hidden": (16, 16)}},
    )
    assert isinstance(model.actor, FlowActor)
    before = [p.detach().clone() for p in model.actor.parameters()]
    model.learn(100)
    assert model.logger.name_to_value["train/n_updates"] == 50
    assert all(not torch.equal(a, b) for a, b in zip(before, model.actor.parameters()))
    obs = model.env.reset()
    action, _ = model.predict(obs)
    assert model.action_space.contains(action[0])
    deterministic = model.predict(obs, deterministic=True)[0]
    model.save(tmp_path / "flow_sac.zip")
    loaded = sb3.SAC.load(tmp_path / "flow_sac.zip")
    assert isinstance(loaded.actor, FlowActor)
    assert np.allclose(loaded.predict(obs, deterministic=True)[0], deterministic, atol=1e-6)
    with pytest.raises(ValueError, match="gSDE"):
        sb3.SAC(FlowSACPolicy, "Pendulum-v1", use_sde=True)


def test_torchrl_sac_loss_trains_the_flow() -> None:
    pytest.importorskip("torchrl")
    from tensordict import TensorDict
    from torch import nn
    from torchrl.data import Bounded
    from torchrl.envs.utils import ExplorationType, set_exploration_type
    from torchrl.modules import ValueOperator
    from torchrl.objectives import SACLoss

    from pyroflows.rl.torchrl import torchrl_actor

    torch.manual_seed(0)
    policy = FlowPolicy(3, 2, -2.0, 2.0, hidden=(16, 16), flow_options={"hidden": (8, 8)})
    spec = Bounded(low=-2.0, high=2.0, shape=(2,))
    actor = torchrl_actor(policy, spec=spec)

    class Q(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 1))

        def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
            return self.net(torch.cat([obs, act], -1))

    loss = SACLoss(actor, ValueOperator(Q(), in_keys=["observation", "action"]), action_spec=spec)
    n = 8
    td = TensorDict(
        {
            "observation": torch.randn(n, 3),
            "action": torch.rand(n, 2) * 4 - 2,
            ("next", "observation"): torch.randn(n, 3),
            ("next", "reward"): torch.randn(n, 1),
            ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
            ("next", "terminated"): torch.zeros(n, 1, dtype=torch.bool),
        },
        batch_size=[n],
    )
    out = loss(td)
    (out["loss_actor"] + out["loss_qvalue"] + out["loss_alpha"]).backward()
    flow_grads = [p.grad for name, p in loss.named_parameters() if "policy.flow" in name]
    assert flow_grads and any(g is not None and g.abs().sum() > 0 for g in flow_grads)
    sampled = actor(td.clone())["action"]
    assert sampled.shape == (n, 2) and (sampled.abs() <= 2).all()
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        a = actor(td.clone())["action"]
    assert torch.allclose(a, policy(td["observation"]).deterministic_sample)
