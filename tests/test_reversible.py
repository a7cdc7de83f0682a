"""Reversible training (RevNet-style recomputation) of coupling stacks: ``ReversibleCompose``.

Known answers: the reversible stack must give exactly the plain stack's outputs and
log-determinants and, in float64, the same gradients (parameters, inputs, contexts) to 1e-6 in
both directions, while the bytes autograd saves stay constant in the depth instead of growing
linearly.
"""

from __future__ import annotations

import pytest
import torch
from helpers import perturb

import pyroflows
from pyroflows.flows import build
from pyroflows.transforms import (
    ActNorm,
    AdditiveMap,
    AffineMap,
    Compose,
    Coupling,
    Elementwise,
    ElementwiseAffine,
    Inverse,
    LULinear,
    MaskedAutoregressive,
    Planar,
    Reverse,
    ReversibleCompose,
    SavedTensorMeter,
    SplineMap,
    UMNNMap,
    alternating_mask,
    is_exactly_invertible,
)

D, C = 4, 3


def deep_stack(depth: int, context: int, seed: int = 0) -> list:
    """Every accepted layer kind, ``depth`` blocks, perturbed away from the identity (float64)."""
    torch.manual_seed(seed)
    maps = [AffineMap, lambda: SplineMap(6, 4.0), AdditiveMap]
    layers = [ElementwiseAffine(D), ActNorm(D)]
    for i in range(depth):
        layers.append(LULinear(D, permute=True, seed=i) if i % 2 else Reverse(D))
        layers.append(
            Coupling(
                D, maps[i % 3](), alternating_mask(D, i), context if i % 2 == 0 else 0, (16, 16)
            )
        )
    layers.append(Inverse(Elementwise(AffineMap(), D)))
    stack = perturb(torch.nn.ModuleList(layers), scale=0.1, seed=seed).double()
    stack[1].initialize(torch.randn(256, D, dtype=torch.float64) * 2 + 1)  # ActNorm
    return list(stack)


def run(stack, h, context, inverse: bool, weights):  # noqa: ANN001, ANN201
    """Outputs, log-dets and the gradients of a random linear functional of both."""
    out, ladj = (stack.inverse_and_ladj if inverse else stack.call_and_ladj)(h, context)
    loss = (out * weights[0]).sum() + (ladj * weights[1]).sum()
    wrt = [h] + ([context] if context is not None else []) + list(stack.parameters())
    return out, ladj, torch.autograd.grad(loss, wrt)


@pytest.mark.parametrize("inverse", [True, False], ids=["density", "sampling"])
@pytest.mark.parametrize("context", [0, C], ids=["unconditional", "conditional"])
def test_same_outputs_and_gradients_as_plain_stack(inverse: bool, context: int) -> None:
    layers = deep_stack(16, context)
    plain, rev = Compose(layers), ReversibleCompose(layers)
    generator = torch.Generator().manual_seed(1)
    # A data-shaped input broadcast against a (7, C) batch of contexts: (5, 1, D) -> (5, 7, D).
    h = torch.randn(
        5, 1 if context else 7, D, generator=generator, dtype=torch.float64
    ).requires_grad_()
    c = (
        torch.randn(7, context, generator=generator, dtype=torch.float64).requires_grad_()
        if context
        else None
    )
    weights = (
        torch.randn(5, 7, D, generator=generator, dtype=torch.float64),
        torch.randn(5, 7, generator=generator, dtype=torch.float64),
    )
    out, ladj, grads = run(plain, h, c, inverse, weights)
    out_r, ladj_r, grads_r = run(rev, h, c, inverse, weights)
    if context:
        # The reversible stack expands h to the context's batch before the first layer, the
        # plain one broadcasts inside it: the same products in another memory layout, which
        # some CPUs' BLAS rounds differently in the last bit (seen on the H200 host's CPU).
        torch.testing.assert_close(out_r, out, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(ladj_r, ladj, rtol=1e-13, atol=1e-13)
    else:
        assert torch.equal(out_r, out) and torch.equal(ladj_r, ladj)
    assert len(grads_r) == len(grads) == 1 + (context > 0) + len(list(plain.parameters()))
    for g, g_r in zip(grads, grads_r):
        assert g_r.shape == g.shape
        assert (g_r - g).abs().max() < 1e-6 * max(1.0, g.abs().max().item())
    assert all(g.abs().sum() > 0 for g in grads_r)  # every parameter, the input and the context


@pytest.mark.parametrize("name", ["nice", "realnvp", "nsf-coupling"])
def test_presets_reversible_option(name: str) -> None:
    """``reversible=True`` gives the same flow (same initialisation), same log_prob, samples and
    gradients, for a deep conditional preset trained both ways (density and sampling loss)."""
    flows = []
    for reversible in (False, True):
        torch.manual_seed(0)
        flow = build(name, D, context=C, transforms=12, hidden=(16, 16), reversible=reversible)
        flows.append(perturb(flow, seed=0).double())
    plain, rev = flows
    assert isinstance(rev.transforms[0], ReversibleCompose) and len(rev.transforms) == 1
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(32, D, generator=generator, dtype=torch.float64)
    c = torch.randn(32, C, generator=generator, dtype=torch.float64)
    results = []
    for flow in flows:
        flow.zero_grad()
        torch.manual_seed(3)
        xs, lp = flow(c).rsample_and_log_prob()
        log_prob = flow(c).log_prob(x)
        (-log_prob.mean() + (lp + xs.square().sum(-1)).mean()).backward()
        results.append((log_prob.detach(), xs.detach(), [p.grad for p in flow.parameters()]))
    (lp0, xs0, g0), (lp1, xs1, g1) = results
    assert torch.equal(lp0, lp1) and torch.equal(xs0, xs1)
    for a, b in zip(g0, g1):
        assert (a - b).abs().max() < 1e-6 * max(1.0, a.abs().max().item())


def test_round_trip_with_gradients() -> None:
    rev = ReversibleCompose(deep_stack(12, C))
    z = torch.randn(64, D, dtype=torch.float64, requires_grad=True)
    c = torch.randn(64, C, dtype=torch.float64)
    x, ladj = rev.call_and_ladj(z, c)
    z_back, inv_ladj = rev.inverse_and_ladj(x, c)
    assert (z_back - z).abs().max() < 1e-10 and (ladj + inv_ladj).abs().max() < 1e-10
    # The composition is the identity, so its gradient is the identity too.
    (grad,) = torch.autograd.grad(z_back.sum(), z)
    assert (grad - 1).abs().max() < 1e-10


def test_saved_activations_are_flat_in_depth() -> None:
    """Peak bytes autograd holds during a whole training step (forward and backward): linear in
    the depth for the plain stack, constant for the reversible one."""
    peaks: dict[bool, list[int]] = {False: [], True: []}
    x = torch.randn(64, D, dtype=torch.float64)
    for depth in (2, 4, 8):
        for reversible in (False, True):
            flow = build(
                "realnvp", D, transforms=depth, hidden=(16, 16), reversible=reversible
            ).double()
            with SavedTensorMeter(exclude=flow.parameters()) as meter:
                flow().log_prob(x).mean().backward()
            assert meter.current == 0  # everything saved was released by the backward pass
            peaks[reversible].append(meter.peak)
    plain, rev = peaks[False], peaks[True]
    assert plain[1] - plain[0] > 0 and plain[2] - plain[1] == 2 * (plain[1] - plain[0])
    assert rev[0] == rev[1] == rev[2]
    assert rev[2] < plain[2] / 5


def test_refuses_layers_without_exact_inverse() -> None:
    for layer, name in [
        (Planar(D), "Planar"),
        (Coupling(D, UMNNMap(hidden=(4,))), "Coupling"),
        (MaskedAutoregressive(D, AffineMap()), "MaskedAutoregressive"),
    ]:
        with pytest.raises(TypeError, match=f"part 1, {name}"):
            ReversibleCompose([LULinear(D), layer])
    with pytest.raises(TypeError, match="Bijection"):
        ReversibleCompose([LULinear(D), torch.nn.Linear(D, D)])
    with pytest.raises(TypeError, match="reversible must be True or False"):
        build("realnvp", D, reversible="yes")
    # A layer opts in (or out) with an ``exact_inverse`` attribute.
    planar = Planar(D)
    planar.exact_inverse = True
    assert is_exactly_invertible(planar) and is_exactly_invertible(
        Compose([LULinear(D), Reverse(D)])
    )
    coupling = Coupling(D, AffineMap())
    coupling.exact_inverse = False
    assert not is_exactly_invertible(Inverse(coupling))


def test_actnorm_initialisation() -> None:
    """Density direction: ActNorm initialises from the data in the forward pass, as in a plain
    stack. Sampling direction before initialisation would initialise it during backward: refused."""
    x = torch.randn(100, D, dtype=torch.float64) * 3 + 2
    rev = ReversibleCompose([LULinear(D), ActNorm(D)]).double()
    z, _ = rev.inverse_and_ladj(x)
    z.sum().backward()
    assert rev.parts[1]._is_initialized and z.mean(0).abs().max() < 1e-3
    fresh = ReversibleCompose([ActNorm(D), LULinear(D)]).double()
    with pytest.raises(ValueError, match="ActNorm layer is not initialised"):
        fresh.call_and_ladj(torch.randn(8, D, dtype=torch.float64))
    with torch.no_grad():  # nothing to reconstruct without gradients: a plain pass
        assert fresh.call_and_ladj(torch.randn(8, D, dtype=torch.float64))[0].shape == (8, D)


def test_save_load_and_no_grad_path(tmp_path) -> None:  # noqa: ANN001
    flow = perturb(
        build("nsf-coupling", D, context=C, transforms=3, hidden=(8, 8), reversible=True)
    )
    x, c = torch.randn(6, D), torch.randn(6, C)
    with torch.no_grad():
        expected = flow(c).log_prob(x)
    assert torch.equal(flow(c).log_prob(x).detach(), expected)
    pyroflows.flows.save(flow, tmp_path / "flow.pt")
    loaded = pyroflows.flows.load(tmp_path / "flow.pt")
    assert isinstance(loaded.transforms[0], ReversibleCompose)
    assert torch.equal(loaded(c).log_prob(x), flow(c).log_prob(x))


def test_checkpoints_bound_the_reconstruction_error() -> None:
    """``checkpoint_every=1`` stores every layer's input: no inverse is used, so even in float32
    the gradients are bitwise those of backpropagation; ``k > 1`` stores one ``(batch, features)``
    tensor per ``k`` layers and still matches in float64."""
    layers = [layer.float() for layer in deep_stack(8, C)]
    x, c = torch.randn(32, D), torch.randn(32, C, requires_grad=True)
    weights = (torch.randn(32, D), torch.randn(32))
    for inverse in (True, False):
        _, _, grads = run(Compose(layers), x.clone().requires_grad_(), c, inverse, weights)
        _, _, grads_1 = run(
            ReversibleCompose(layers, checkpoint_every=1),
            x.clone().requires_grad_(),
            c,
            inverse,
            weights,
        )
        assert all(torch.equal(a, b) for a, b in zip(grads, grads_1))
    layers = deep_stack(8, C)
    x, c = x.double().requires_grad_(), c.detach().double().requires_grad_()
    weights = tuple(w.double() for w in weights)
    _, _, grads = run(Compose(layers), x, c, True, weights)
    _, _, grads_3 = run(ReversibleCompose(layers, checkpoint_every=3), x, c, True, weights)
    for a, b in zip(grads, grads_3):
        assert (a - b).abs().max() < 1e-6 * max(1.0, a.abs().max().item())
    # Memory: the stored layer inputs (64 x D doubles each) are all that is added (peak in bytes).
    x = torch.randn(64, D, dtype=torch.float64)
    peaks = {}
    for every in (0, 2, 1):
        stack = ReversibleCompose(deep_stack(8, 0), checkpoint_every=every)
        with SavedTensorMeter(exclude=stack.parameters()) as meter:
            stack.inverse_and_ladj(x)[1].sum().backward()
        peaks[every] = meter.peak
    layers_run = len(stack.parts)
    assert peaks[2] - peaks[0] == (layers_run + 1) // 2 * 64 * D * 8  # layers 0, 2, 4, ... (x too)
    with pytest.raises(ValueError, match="checkpoint_every"):
        ReversibleCompose([LULinear(D)], checkpoint_every=-1)


@pytest.mark.slow
def test_compiles_without_graph_breaks() -> None:
    """Under torch.compile the stack runs as a plain Compose, so fullgraph tracing works."""
    torch._dynamo.reset()
    flow = perturb(build("realnvp", D, context=C, transforms=2, hidden=(8, 8), reversible=True))
    x, c = torch.randn(4, D), torch.randn(4, C)

    def log_prob(x, c):  # noqa: ANN001, ANN202
        return flow(c).log_prob(x)

    compiled = torch.compile(log_prob, backend="eager", fullgraph=True)
    assert torch.allclose(compiled(x, c), log_prob(x, c))
    xs, lp = torch.compile(
        lambda c: flow(c).rsample_and_log_prob((5,)), backend="eager", fullgraph=True
    )(c)
    assert xs.shape == (5, 4, D) and torch.isfinite(lp).all()
