"""Family-specific checks of planar, radial, Sylvester, UMNN, NAF and BNAF: invertibility
constraints that hold for any parameter value, accuracy of the numerical inverses, quadrature
against closed forms, monotonicity and BNAF's surjectivity. (The registry-wide properties are in
``test_registry_properties.py``.)"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import perturb

from pyroflows.flows import build, preset
from pyroflows.numerics.quadrature import quadrature_rule
from pyroflows.transforms import (
    BlockNeuralAutoregressive,
    InverseMap,
    Planar,
    Radial,
    SigmoidalMap,
    Sylvester,
    UMNNMap,
    clenshaw_curtis,
    gauss_legendre,
)

D = torch.float64


@torch.no_grad()
def randomize(module: torch.nn.Module, scale: float, seed: int = 0) -> torch.nn.Module:
    """Overwrite every parameter with N(0, scale^2) values: far from any initialisation."""
    generator = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        p.copy_(scale * torch.randn(p.shape, generator=generator, dtype=D))
    return module


# -- planar ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_planar_constraint_holds_for_any_parameters(seed):
    torch.manual_seed(seed)
    t = randomize(Planar(4, context=2, hidden=(8,)).double(), scale=3.0, seed=seed)
    c = torch.randn(50, 2, dtype=D)
    u_hat, w, b, q = t._uwb(c)
    # w . u_hat = q - 1 > -1 (q = softplus(w . u), never rounded to 0).
    assert (q > 0).all()
    assert torch.allclose((w * u_hat).sum(-1), q - 1, rtol=1e-8, atol=1e-8)
    x, ladj = t.call_and_ladj(3 * torch.randn(50, 4, dtype=D), c)
    assert torch.isfinite(x).all() and torch.isfinite(ladj).all()


@pytest.mark.parametrize("seed", range(5))
def test_planar_inverse_under_random_parameters(seed):
    torch.manual_seed(seed)
    t = randomize(Planar(4, context=2, hidden=(8,)).double(), scale=1.0, seed=seed)
    c = torch.randn(50, 2, dtype=D)
    z = 3 * torch.randn(50, 4, dtype=D)
    x, ladj = t.call_and_ladj(z, c)
    z_back, inv_ladj = t.inverse_and_ladj(x, c)
    assert (z_back - z).abs().max() < 1e-10
    assert (ladj + inv_ladj).abs().max() < 1e-10


def test_planar_inverse_has_implicit_gradients():
    torch.manual_seed(0)
    t = randomize(Planar(3).double(), scale=1.0)
    x = torch.randn(4, 3, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: t.inverse_and_ladj(v)[0], (x,))
    # Parameter gradients of the inverse equal finite differences of the solved inverse.
    p = t.params.free
    loss = lambda: t.inverse_and_ladj(x.detach())[0].square().sum()  # noqa: E731
    (grad,) = torch.autograd.grad(loss(), p)
    eps, fd = 1e-6, torch.zeros_like(p)
    with torch.no_grad():
        for i in range(p.numel()):
            p[i] += eps
            up = loss()
            p[i] -= 2 * eps
            down = loss()
            p[i] += eps
            fd[i] = (up - down) / (2 * eps)
    assert torch.allclose(grad, fd, atol=1e-6)


# -- radial ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_radial_constraint_and_exact_inverse_under_random_parameters(seed):
    torch.manual_seed(seed)
    extreme = randomize(Radial(3, context=2, hidden=(8,)).double(), scale=3.0, seed=seed)
    c = torch.randn(40, 2, dtype=D)
    z0, alpha, gamma = extreme.radial_params(c)
    assert (alpha > 0).all() and (gamma > 0).all()  # gamma = alpha + beta: beta > -alpha
    x, ladj = extreme.call_and_ladj(z0 + torch.randn(40, 3, dtype=D), c)
    assert torch.isfinite(ladj).all()
    t = randomize(Radial(3, context=2, hidden=(8,)).double(), scale=1.0, seed=seed)
    z0, _, _ = t.radial_params(c)
    # Points near and far from the centre, and the centre itself.
    z = torch.cat(
        [z0[:20] + 1e-9 * torch.randn(20, 3, dtype=D), z0[20:] + 5 * torch.randn(20, 3, dtype=D)]
    )
    x, ladj = t.call_and_ladj(z, c)
    assert torch.isfinite(ladj).all()
    z_back, inv_ladj = t.inverse_and_ladj(x, c)
    assert (z_back - z).abs().max() < 1e-11 * z.abs().max()
    # Log-dets agree away from the centre (at 1e-9 from it, x - z0 is below z0's resolution).
    assert (ladj + inv_ladj)[20:].abs().max() < 1e-10


def test_radial_identity_at_initialisation():
    t = Radial(3).double()
    z = torch.randn(5, 3, dtype=D)
    x, ladj = t.call_and_ladj(z)
    assert torch.allclose(x, z) and torch.allclose(ladj, torch.zeros(5, dtype=D))


# -- Sylvester ---------------------------------------------------------------------------------


@pytest.mark.parametrize("reflections, flip", [(0, False), (0, True), (3, False), (5, True)])
def test_sylvester_constraint_and_inverse_under_random_parameters(reflections, flip):
    torch.manual_seed(0)
    t = Sylvester(5, context=2, hidden=(8,), reflections=reflections, flip=flip).double()
    c = torch.randn(30, 2, dtype=D)
    randomize(t, scale=3.0, seed=reflections)
    v, R, Rt, b, r_diag, rt_diag, log_1pk = t._unpack(c)
    # r_ii r~_ii > -1, also where both tanh saturate (1 + r r~ is taken in log space).
    assert torch.isfinite(log_1pk).all()
    assert torch.allclose(log_1pk.exp(), 1 + r_diag * rt_diag, rtol=1e-9, atol=1e-12)
    assert torch.isfinite(t.call_and_ladj(torch.randn(30, 5, dtype=D), c)[1]).all()
    randomize(t, scale=1.0, seed=reflections)
    v, R, Rt, b, r_diag, rt_diag, log_1pk = t._unpack(c)
    assert torch.equal(R, R.triu()) and torch.equal(Rt, Rt.triu())
    # Q is orthogonal: it preserves norms, and Q^T undoes Q.
    y = torch.randn(30, 5, dtype=D)
    Qy = t._reflect(y, v, transpose=False)
    assert torch.allclose(Qy.norm(dim=-1), y.norm(dim=-1))
    assert torch.allclose(t._reflect(Qy, v, transpose=True), y)
    z = 2 * torch.randn(30, 5, dtype=D)
    x, ladj = t.call_and_ladj(z, c)
    z_back, inv_ladj = t.inverse_and_ladj(x, c)
    assert (z_back - z).abs().max() < 1e-10 * z.abs().max()
    assert (ladj + inv_ladj).abs().max() < 1e-9


def test_sylvester_inverse_gradients():
    torch.manual_seed(0)
    t = randomize(Sylvester(3, reflections=2).double(), scale=1.0)
    x = torch.randn(3, 3, dtype=D, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: t.inverse_and_ladj(v)[0], (x,))


# -- quadrature and UMNN -----------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 4, 9])
def test_gauss_legendre_exact_for_degree_2n_minus_1(n):
    s, w = gauss_legendre(n)
    for k in range(2 * n):
        assert abs((w * s**k).sum().item() - 1 / (k + 1)) < 1e-14


@pytest.mark.parametrize("n", [2, 5, 8])
def test_clenshaw_curtis_exact_for_degree_n_minus_1(n):
    s, w = clenshaw_curtis(n)
    assert s.min() == 0 and s.max() == 1
    for k in range(n):
        assert abs((w * s**k).sum().item() - 1 / (k + 1)) < 1e-14


def test_quadrature_rule_rejects_bad_input():
    with pytest.raises(ValueError, match="quadrature"):
        quadrature_rule("simpson", 5)
    with pytest.raises(ValueError, match="nodes"):
        gauss_legendre(0)
    with pytest.raises(ValueError, match="nodes"):
        clenshaw_curtis(1)


class _ExpIntegrand(UMNNMap):
    """UMNN with the integrand f(t) = exp(c t), whose integral is (e^{cu} - 1) / c."""

    def log_integrand(self, t, e_proj):  # noqa: ANN001, ANN201
        return 0.7 * t + 0 * e_proj[..., :1]


@pytest.mark.parametrize("quadrature", ["gauss-legendre", "clenshaw-curtis"])
def test_umnn_quadrature_matches_a_closed_form_integral(quadrature):
    m = _ExpIntegrand(embedding=2, hidden=(4,), nodes=20, quadrature=quadrature).double()
    u = torch.linspace(-3, 3, 25, dtype=D)[:, None]
    params = torch.zeros(25, 1, 3, dtype=D)
    params[..., 0] = 0.25  # the offset beta
    v, ladj = m(u, params)
    expected = 0.25 + torch.expm1(0.7 * u) / 0.7
    assert (v - expected).abs().max() < 1e-12
    assert torch.allclose(ladj, 0.7 * u)


def test_umnn_quadrature_converges_on_a_random_network():
    """The rule against a 120-node reference on generic networks: the default 20 nodes are below
    the property test's log-det tolerance for |u| <= 4 on a mildly perturbed network, and the
    error falls geometrically with ``nodes`` (a rougher network on |u| <= 6 needs about 60)."""
    u = torch.linspace(-1, 1, 101, dtype=D)[:, None].expand(-1, 3)
    params = torch.randn(101, 3, 9, dtype=D, generator=torch.Generator().manual_seed(0))
    reference = UMNNMap(nodes=120).double()
    rules = {n: UMNNMap(nodes=n).double() for n in (20, 40, 60)}
    for scale, span, nodes, bound in [
        (0.1, 4.0, 20, 1e-7),
        (0.3, 6.0, 20, 1e-4),
        (0.3, 6.0, 40, 1e-7),
        (0.3, 6.0, 60, 1e-10),
    ]:
        torch.manual_seed(0)
        base = perturb(UMNNMap().double(), scale=scale)
        # The rule itself is not in the state_dict: same network, different node counts.
        rules[nodes].load_state_dict(base.state_dict())
        reference.load_state_dict(base.state_dict())
        error = (rules[nodes](span * u, params)[0] - reference(span * u, params)[0]).abs().max()
        assert error < bound, (scale, nodes, error)


@pytest.mark.parametrize("newton", [True, False])
def test_umnn_monotone_onto_and_inverse_accuracy(newton):
    torch.manual_seed(0)
    m = randomize(UMNNMap(newton=newton).double(), scale=0.7)
    params = torch.randn(1, 2, m.num_params, dtype=D)
    grid = torch.linspace(-10, 10, 2001, dtype=D)[:, None].expand(-1, 2)
    v, log_slope = m(grid, params)
    assert (v.diff(dim=0) > 0).all()
    assert (log_slope.abs() <= m.log_slope_bound).all()
    targets = torch.tensor([[-1e3, -5.0], [0.3, 2.0], [40.0, 1e3]], dtype=D)
    u, _ = m.inverse(targets, params)
    assert ((m(u, params)[0] - targets).abs() / targets.abs().clamp_min(1)).max() < 1e-12


# -- NAF ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1, 3])
def test_sigmoidal_map_monotone_onto_and_inverse_accuracy(depth):
    torch.manual_seed(depth)
    m = SigmoidalMap(components=6, depth=depth).double()
    params = 2 * torch.randn(4, 3, m.num_params, dtype=D)
    grid = torch.linspace(-30, 30, 3001, dtype=D)[:, None, None].expand(-1, 4, 3)
    v, ladj = m(grid, params)
    assert torch.isfinite(v).all() and torch.isfinite(ladj).all()
    assert (v.diff(dim=0) > 0).all()
    # Log-space evaluation: extreme inputs stay finite, and far targets are reachable.
    far = torch.full((4, 3), 1e4, dtype=D)
    assert torch.isfinite(m(far, params)[0]).all() and torch.isfinite(m(-far, params)[0]).all()
    targets = torch.randn(4, 3, dtype=D) * torch.tensor([1.0, 20.0, 200.0], dtype=D)
    u, inv_ladj = m.inverse(targets, params)
    v_back, ladj_back = m(u, params)
    assert ((v_back - targets).abs() / targets.abs().clamp_min(1)).max() < 1e-11
    assert (ladj_back + inv_ladj).abs().max() < 1e-9


def test_inverse_map_swaps_directions():
    m = SigmoidalMap(components=3, depth=1).double()
    params = torch.randn(5, 2, m.num_params, dtype=D)
    u = torch.randn(5, 2, dtype=D)
    assert torch.equal(InverseMap(m).inverse(u, params)[0], m(u, params)[0])
    assert InverseMap(m).num_params == m.num_params


# -- BNAF --------------------------------------------------------------------------------------


def test_bnaf_jacobian_is_triangular_with_positive_diagonal():
    torch.manual_seed(0)
    t = perturb(BlockNeuralAutoregressive(4, hidden=(6, 6), param_scale=1).double(), scale=0.5)
    x = torch.randn(4, dtype=D)
    J = torch.autograd.functional.jacobian(lambda v: t.inverse_and_ladj(v)[0], x)
    assert torch.equal(J.triu(1), torch.zeros_like(J))
    assert (J.diagonal() > 0).all()
    assert torch.allclose(J.diagonal().log().sum(), t.inverse_and_ladj(x)[1])


def test_bnaf_is_onto_the_real_line():
    """Outputs far outside the network's bounded part are reached (the linear skip's tails)."""
    torch.manual_seed(0)
    t = perturb(
        BlockNeuralAutoregressive(3, context=2, hidden=(8,), param_scale=1).double(), scale=0.5
    )
    c = torch.randn(4, 2, dtype=D)
    z = torch.tensor(
        [[1e3, -1e3, 5.0], [-50.0, 50.0, -1e4], [0.0, 0.0, 0.0], [1e5, 1.0, -1.0]], dtype=D
    )
    x, ladj = t.call_and_ladj(z, c)
    assert torch.isfinite(x).all() and torch.isfinite(ladj).all()
    z_back, _ = t.inverse_and_ladj(x, c)
    assert ((z_back - z).abs() / z.abs().clamp_min(1)).max() < 1e-12


def test_bnaf_monotone_in_each_coordinate():
    torch.manual_seed(1)
    t = perturb(BlockNeuralAutoregressive(2, hidden=(8, 8), param_scale=1).double(), scale=0.5)
    grid = torch.linspace(-20, 20, 801, dtype=D)
    x = torch.stack([torch.full_like(grid, 0.3), grid], -1)
    z, _ = t.inverse_and_ladj(x)
    assert (z[:, 1].diff() > 0).all() and torch.allclose(z[:, 0], z[0, 0].expand(801))


def test_bnaf_param_scale_only_rescales_the_stored_parameters():
    """``param_scale`` c: the network's parameters are c times the stored ones, so the same
    initial network (same seed) and the same map once the stored values are matched."""
    torch.manual_seed(3)
    plain = BlockNeuralAutoregressive(3, context=2, hidden=(5, 4), param_scale=1)
    torch.manual_seed(3)
    scaled = BlockNeuralAutoregressive(3, context=2, hidden=(5, 4), param_scale=10)
    for a, b in zip([*plain.weights, *plain.biases], [*scaled.weights, *scaled.biases]):
        assert torch.allclose(10 * b, a, rtol=1e-6, atol=0)
    plain, scaled = perturb(plain.double(), 0.3), scaled.double()
    with torch.no_grad():
        for (name, p), q in zip(scaled.named_parameters(), plain.parameters()):
            p.copy_(q if name.startswith("context_net") else q / 10)
    x, c = torch.randn(6, 3, dtype=D), torch.randn(6, 2, dtype=D)
    z_plain, l_plain = plain.inverse_and_ladj(x, c)
    z_scaled, l_scaled = scaled.inverse_and_ladj(x, c)
    assert torch.allclose(z_scaled, z_plain, rtol=1e-13, atol=1e-13)
    assert torch.allclose(l_scaled, l_plain, rtol=1e-13, atol=1e-13)
    assert (scaled.call_and_ladj(z_scaled, c)[0] - x).abs().max() < 1e-10


@pytest.mark.parametrize("bad", [0, -1.0, math.inf, math.nan, True, "10"])
def test_bnaf_rejects_a_bad_param_scale(bad):
    with pytest.raises(ValueError, match="param_scale"):
        BlockNeuralAutoregressive(2, param_scale=bad)


@pytest.mark.slow
def test_bnaf_preset_fits_two_moons():
    """The benchmark protocol (benchmarks/density_toy.py: 10,000 / 5,000 points, 60 epochs,
    lr 1e-3, batch 512, patience 10): about -2.45 nats (a Gaussian: -3.28; before the
    symmetry-breaking init and ``param_scale``: -3.32)."""
    from pyroflows.data import toy
    from pyroflows.infer import fit

    torch.manual_seed(0)
    flow = build("bnaf", 2)
    fit(
        flow,
        toy("moons", 10000, seed=0),
        epochs=60,
        lr=1e-3,
        batch_size=512,
        patience=10,
        progress=False,
    )
    with torch.no_grad():
        assert flow().log_prob(toy("moons", 5000, seed=1000)).mean() > -2.55


# -- presets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["planar", "radial", "sylvester", "umnn", "naf", "bnaf"])
def test_presets_validate_their_options(name):
    with pytest.raises(ValueError, match="transforms"):
        build(name, 3, transforms=0)
    with pytest.raises(ValueError, match="hidden"):
        build(name, 3, hidden=(0,))


def test_preset_specific_option_errors():
    with pytest.raises(ValueError, match="quadrature"):
        build("umnn", 2, quadrature="simpson")
    with pytest.raises(ValueError, match="reflections"):
        build("sylvester", 2, reflections=-1)
    with pytest.raises(ValueError, match="components"):
        build("naf", 2, components=0)
    with pytest.raises(ValueError, match="log_slope_bound"):
        build("umnn", 2, log_slope_bound=0.0)


# One preset of each preset module, with the class its options go to and one of its options.
PASS_THROUGH = [
    ("maf", "log_scale_bound"),
    ("nsf-coupling", "bins"),
    ("ffjord", "trace"),
    ("resflow", "n_terms"),
    ("sylvester", "reflections"),
    ("umnn", "nodes"),
    ("maf-mog", "components"),
    ("maf-rnn", "cell"),
    ("gf", "reflections"),
]


@pytest.mark.parametrize(("name", "option"), PASS_THROUGH)
def test_presets_reject_an_unknown_option_listing_the_valid_ones(name, option):
    """A misspelt option fails at build time, before anything is built, with a TypeError that
    names it and lists the options, the classes' keywords included."""
    with pytest.raises(TypeError, match="hiden") as error:
        build(name, 4, hiden=(8,))
    message = str(error.value)
    assert "options are" in message and "'transforms'" in message
    assert "'hidden'" in message and f"'{option}'" in message
    # Called directly (not through build), the preset rejects it the same way.
    with pytest.raises(TypeError, match="hiden"):
        preset(name)(4, hiden=(8,))


def test_ffjord_names_a_misspelt_option():
    with pytest.raises(TypeError, match=r"\['hiden'\].*'hidden'.*'adjoint'"):
        build("ffjord", 2, hiden=(8,))


@pytest.mark.parametrize(
    ("name", "option"),
    [("maf", "map"), ("nice", "mask"), ("sylvester", "flip"), ("maf-rnn", "reverse")],
)
def test_presets_refuse_what_they_set_themselves(name, option):
    with pytest.raises(TypeError, match=option):
        build(name, 4, **{option: None})


@pytest.mark.parametrize(
    ("name", "option", "value", "count"),
    [
        ("planar", "iterations", 10, lambda f: f.transforms[0].iterations),
        ("nsf", "bins", 5, lambda f: f.transforms[0].map.bins),
        ("umnn", "nodes", 7, lambda f: f.transforms[0].map.map.nodes.numel()),
        ("maf-mog", "components", 3, lambda f: f.base.model.conditional.components),
    ],
)
def test_passed_options_reach_the_classes(name, option, value, count):
    assert count(build(name, 3, transforms=1, **{option: value})) == value


def test_ffjord_keeps_its_own_hidden_default():
    """The preset's field has three hidden layers (the class's default has two)."""
    widths = [layer.out_features for layer in build("ffjord", 2).transforms[0].net.layers]
    assert widths == [64, 64, 64]


@pytest.mark.parametrize("name", ["planar", "radial", "sylvester", "umnn", "naf", "bnaf"])
def test_presets_work_in_one_dimension(name):
    torch.manual_seed(0)
    flow = perturb(build(name, 1, transforms=2, hidden=(8,))).double()
    x = torch.linspace(-3, 3, 7, dtype=D)[:, None]
    z, _ = flow.transform().inverse_and_ladj(x)
    assert (flow.transform().call_and_ladj(z)[0] - x).abs().max() < 1e-9
    grid = torch.linspace(-12, 12, 4001, dtype=D)[:, None]
    with torch.no_grad():
        mass = flow().log_prob(grid).exp().sum() * (grid[1, 0] - grid[0, 0])
    assert abs(mass.item() - 1) < 1e-3
    assert math.isfinite(mass.item())
