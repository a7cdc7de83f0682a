"""FlatParameters: a module's parameters as slices of one tensor (the flow guides' one
``pyro.param``)."""

from __future__ import annotations

import copy

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch

from pyroflows.infer import AutoFlow
from pyroflows.infer.guides.flat_parameters import FlatParameters


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def test_values_are_shared_both_ways():
    net = _net()
    before = [p.detach().clone() for p in net.parameters()]
    flat = FlatParameters(net)
    assert flat.flat.shape == (sum(p.numel() for p in before),)
    assert torch.equal(flat.flat.detach(), torch.cat([p.reshape(-1) for p in before]))
    with torch.no_grad():
        flat.flat.add_(1.0)  # what an optimizer step on the flat tensor does
    for p, old in zip(net.parameters(), before):
        assert torch.equal(p.detach(), old + 1.0)
    with torch.no_grad():
        net[0].bias.zero_()  # and the other way round
    assert torch.equal(flat.flat.detach()[12:16], torch.zeros(4))


def test_call_sends_gradients_to_the_flat_tensor_like_the_module_would():
    net = _net()
    x = torch.randn(5, 3)
    expected = torch.autograd.grad(net(x).square().sum(), list(net.parameters()))
    flat = FlatParameters(net)
    names = [n for n, _ in net.named_parameters()]
    out = flat.call(net, x)
    out.square().sum().backward()
    assert torch.allclose(flat.flat.grad, torch.cat([g.reshape(-1) for g in expected]))
    assert all(p.grad is None for p in net.parameters())
    # Put back: the same parameter objects, in the same order.
    assert [n for n, _ in net.named_parameters()] == names
    assert all(isinstance(p, torch.nn.Parameter) for p in net.parameters())


def test_call_puts_the_parameters_back_after_an_exception():
    net = _net()
    params = list(net.parameters())
    flat = FlatParameters(net)

    def fail() -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        flat.call(fail)
    assert all(a is b for a, b in zip(net.parameters(), params))


def test_adopt_and_regather():
    net = _net()
    flat = FlatParameters(net)
    loaded = torch.arange(flat.flat.numel(), dtype=torch.float32)
    flat.adopt(loaded)
    assert flat.flat is loaded
    assert torch.equal(net[2].bias.detach(), loaded[-2:])
    with pytest.raises(ValueError, match="another guide"):
        flat.adopt(torch.zeros(3))
    assert flat.flat is loaded  # unchanged by the failed adopt
    net.double()  # new storage: current() gathers the module's values again
    assert flat.current().dtype == torch.float64
    assert torch.equal(flat.flat.detach()[-2:], loaded[-2:].double())
    copied = copy.deepcopy(net)  # a copy shares nothing with the original
    assert copied[0].weight.data_ptr() != net[0].weight.data_ptr()


def test_errors():
    with pytest.raises(ValueError, match="with parameters"):
        FlatParameters(torch.nn.Tanh())
    mixed = _net()
    mixed[2].double()
    with pytest.raises(ValueError, match="one dtype"):
        FlatParameters(mixed)


def test_the_guide_registers_one_param_and_svi_trains_it():
    def model() -> None:
        pyro.sample("z", dist.Normal(torch.tensor([1.0, -2.0]), 0.5).to_event(1))

    pyro.clear_param_store()
    pyro.set_rng_seed(0)  # the guide's initial weights and the steps' draws
    guide = AutoFlow(model, init="loc", transforms=2, hidden=(8,))
    with poutine.trace(param_only=True) as capture:
        guide()
    assert list(capture.trace.nodes) == ["AutoFlow.flow_parameters"]
    # guide.parameters(): the flat tensor trainable, the flow's own frozen views of it.
    trainable = [p for p in guide.parameters() if p.requires_grad]
    assert len(trainable) == 1 and trainable[0].numel() == sum(
        p.numel() for p in guide.flow.parameters()
    )
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), pyro.infer.Trace_ELBO())
    before = [p.detach().clone() for p in guide.flow.parameters()]
    with torch.no_grad():
        start = guide.get_posterior().sample((4000,))
    for _ in range(300):
        svi.step()
    # The flow's own parameters moved with the flat tensor they share, to the posterior:
    # N((1, -2), 0.5^2 I) from the start's sd of 1 (measured over 12 seeds: mean errors below
    # 0.07, sds 0.42-0.52).
    assert any(not torch.equal(a, p) for a, p in zip(before, guide.flow.parameters()))
    with torch.no_grad():
        z = guide.get_posterior().sample((4000,))
    assert (start.std(0) > 0.9).all()
    assert torch.allclose(z.mean(0), torch.tensor([1.0, -2.0]), atol=0.1)
    assert ((z.std(0) - 0.5).abs() < 0.1).all()


def test_a_torch_optimizer_over_guide_parameters_trains_the_guide():
    """The PyTorch way (Pyro's differentiable_loss, torch.optim over the module's parameters)
    trains the same tensor SVI would."""

    def model() -> None:
        pyro.sample("z", dist.Normal(torch.tensor([1.0, -2.0]), 0.5).to_event(1))

    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = AutoFlow(model, init="loc", transforms=1, hidden=(8,), average=None)
    optimizer = torch.optim.Adam(guide.parameters(), lr=0.05)
    elbo = pyro.infer.Trace_ELBO()
    for _ in range(150):
        optimizer.zero_grad()
        elbo.differentiable_loss(model, guide).backward()
        optimizer.step()
    draws = guide.sample_posterior(2000)["z"]
    assert torch.allclose(draws.mean(0), torch.tensor([1.0, -2.0]), atol=0.1)
    assert torch.allclose(draws.std(0), torch.tensor([0.5, 0.5]), atol=0.1)
