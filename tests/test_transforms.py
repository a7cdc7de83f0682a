"""Unit tests of the building blocks: maps, splines, linear layers, ActNorm, permutations,
composition and inversion."""

from __future__ import annotations

import pytest
import torch
from helpers import jacobian_logdet, perturb

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
    Permutation,
    Reverse,
    SplineMap,
    random_permutation,
)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def randn(*shape, gen, device, dtype):  # noqa: ANN001, ANN002, ANN201
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(device, dtype)


# -- elementwise maps ---------------------------------------------------------------------------

MAPS = [
    AdditiveMap(),
    AffineMap(),
    SplineMap(bins=5, bound=3.0),
    SplineMap(bins=1, bound=1.0),
    SplineMap(bins=5, bound=3.0, tails="linear"),
    SplineMap(bins=1, bound=1.0, tails="linear"),
]


@pytest.mark.parametrize("m", MAPS, ids=lambda m: type(m).__name__ + str(m.num_params))
def test_map_round_trip_and_derivative(m, gen, device, dtype, tol):
    u = 4 * randn(200, 3, gen=gen, device=device, dtype=dtype)
    params = randn(200, 3, m.num_params, gen=gen, device=device, dtype=dtype)
    v, ladj = m(u, params)
    back, inv_ladj = m.inverse(v, params)
    assert (back - u).abs().max() < tol["roundtrip"]
    assert (ladj + inv_ladj).abs().max() < tol["logdet"]
    # Elementwise derivative against autograd (the map is elementwise, so the gradient of the
    # sum is the diagonal of the Jacobian).
    u_req = u.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(m(u_req, params)[0].sum(), u_req)
    assert (grad.log() - ladj).abs().max() < tol["logdet"]


@pytest.mark.parametrize("m", MAPS, ids=lambda m: type(m).__name__ + str(m.num_params))
def test_map_zero_params_is_identity(m, device, dtype):
    u = torch.linspace(-6, 6, 101, device=device, dtype=dtype).reshape(-1, 1)
    v, ladj = m(u, torch.zeros(101, 1, m.num_params, device=device, dtype=dtype))
    assert torch.allclose(v, u, atol=1e-6) and ladj.abs().max() < 1e-6


def test_map_is_increasing(gen, device, dtype):
    m = SplineMap(bins=6, bound=2.0)
    params = 2 * randn(1, 1, m.num_params, gen=gen, device=device, dtype=dtype).expand(400, 1, -1)
    u = torch.linspace(-3, 3, 400, device=device, dtype=dtype).reshape(-1, 1)
    v = m(u, params)[0].flatten()
    assert (v[1:] > v[:-1]).all()


def test_spline_tails_are_identity_and_finite_everywhere(gen, device, dtype):
    m = SplineMap(bins=8, bound=2.0)
    extremes = torch.tensor(
        [-1e30, -1e6, -2.0000001, 2.0000001, 1e6, 1e30], device=device, dtype=dtype
    )
    u = extremes.reshape(-1, 1)
    params = 3 * randn(6, 1, m.num_params, gen=gen, device=device, dtype=dtype)
    v, ladj = m(u, params)
    assert torch.equal(v, u) and torch.equal(ladj, torch.zeros_like(ladj))
    u_inv, ladj_inv = m.inverse(u, params)
    assert torch.equal(u_inv, u) and torch.equal(ladj_inv, torch.zeros_like(ladj_inv))
    # Gradients through the tails are finite too (no NaN from the unused spline branch).
    u_req = u.clone().requires_grad_(True)
    p_req = params.clone().requires_grad_(True)
    m(u_req, p_req)[0].sum().backward()
    assert torch.isfinite(u_req.grad).all() and torch.isfinite(p_req.grad).all()


def test_spline_is_continuous_at_the_bound(gen, device, dtype):
    m = SplineMap(bins=4, bound=1.5)
    params = randn(1, 1, m.num_params, gen=gen, device=device, dtype=dtype).expand(4, 1, -1)
    eps = 1e-7
    u = torch.tensor(
        [[-1.5 - eps], [-1.5 + eps], [1.5 - eps], [1.5 + eps]], device=device, dtype=dtype
    )
    v, ladj = m(u, params)
    assert (v[0] - v[1]).abs() < 1e-5 and (v[2] - v[3]).abs() < 1e-5
    assert ladj.abs().max() < 1e-4  # boundary derivatives are pinned to 1


def test_spline_linear_tails_continue_with_the_boundary_derivatives(gen, device, dtype):
    m = SplineMap(bins=4, bound=1.5, tails="linear")
    params = randn(1, 1, m.num_params, gen=gen, device=device, dtype=dtype).expand(6, 1, -1)
    # The boundary derivatives are the first and last of the K + 1 derivatives' parameters.
    raw = params[0, 0, 2 * 4 :]
    slopes = m.min_derivative + torch.nn.functional.softplus(raw + m._derivative_offset)
    low, high = slopes[0], slopes[-1]
    eps = 1e-7
    u = torch.tensor(
        [[-1.5 - eps], [-1.5 + eps], [1.5 - eps], [1.5 + eps], [-4.0], [7.0]],
        device=device,
        dtype=dtype,
    )
    v, ladj = m(u, params)
    # Value and slope continuous at both ends (C1), the tails straight lines with those slopes.
    assert (v[0] - v[1]).abs() < 1e-5 and (v[2] - v[3]).abs() < 1e-5
    assert (ladj[0] - ladj[1]).abs() < 1e-4 and (ladj[2] - ladj[3]).abs() < 1e-4
    assert torch.allclose(v[4], -1.5 + low * (-4.0 + 1.5), atol=1e-5)
    assert torch.allclose(v[5], 1.5 + high * (7.0 - 1.5), atol=1e-5)
    assert torch.allclose(ladj[[4, 5], 0], torch.stack([low, high]).log(), atol=1e-5)
    assert not torch.allclose(low, high)  # a real test of which end is which


def test_spline_inverse_at_knots(device, dtype):
    m = SplineMap(bins=4, bound=2.0)
    params = torch.zeros(5, 1, m.num_params, device=device, dtype=dtype)
    params[..., :4] = torch.tensor([0.0, 1.0, -1.0, 0.5])
    xs = m._knots(params[0, 0, :4])
    v = m(xs.reshape(-1, 1), params)[0]
    assert torch.allclose(m.inverse(v, params)[0].flatten(), xs, atol=1e-6)


def test_spline_rejects_bad_options():
    with pytest.raises(ValueError, match="bins"):
        SplineMap(bins=0)
    with pytest.raises(ValueError, match="bound"):
        SplineMap(bound=-1.0)
    with pytest.raises(ValueError, match="min_bin_size"):
        SplineMap(bins=10, min_bin_size=0.2)
    with pytest.raises(ValueError, match="tails"):
        SplineMap(tails="cubic")


def test_affine_map_scale_is_bounded(device, dtype):
    m = AffineMap(log_scale_bound=2.0)
    params = torch.tensor([[[0.0, 1e6]], [[0.0, -1e6]]], device=device, dtype=dtype)
    _, ladj = m(torch.ones(2, 1, device=device, dtype=dtype), params)
    assert torch.allclose(ladj.flatten(), torch.tensor([2.0, -2.0], device=device, dtype=dtype))


# -- bijections -----------------------------------------------------------------------------------


def bijections(features: int = 4) -> list:
    return [
        ElementwiseAffine(features),
        Elementwise(SplineMap(bins=4), features),
        Elementwise(AffineMap(), features, context=2, hidden=(8,)),
        LULinear(features),
        LULinear(features, permute=True, seed=3),
        Permutation([1, 3, 0, 2]),
        Reverse(features),
        random_permutation(features, seed=1),
        Coupling(
            features,
            SplineMap(bins=3),
            mask=[True, True, False, False],
            hidden=(8,),
            conditioner="resnet",
        ),
        Inverse(MaskedAutoregressive(features, AffineMap(), hidden=(8, 8), residual=True)),
        Compose([LULinear(features), Coupling(features, AffineMap(), context=2, hidden=(8,))]),
    ]


@pytest.mark.parametrize("index", range(len(bijections())))
def test_bijection_contract(index, gen, device, dtype, tol):
    t = perturb(bijections()[index], seed=index).to(device, dtype)
    context = randn(1, 2, gen=gen, device=device, dtype=dtype) if t.context_features else None
    z = randn(5, 4, gen=gen, device=device, dtype=dtype)
    x, ladj = t.call_and_ladj(z, context)
    z_back, inv_ladj = t.inverse_and_ladj(x, context)
    assert (z_back - z).abs().max() < tol["roundtrip"]
    expected = jacobian_logdet(lambda v: t.call_and_ladj(v, context)[0].reshape(-1), z)
    assert (ladj.reshape(-1) - expected).abs().max() < tol["logdet"]
    assert (ladj + inv_ladj).abs().max() < tol["logdet"]
    assert ladj.shape == (5,)
    # Batch dims broadcast.
    x3, ladj3 = t.call_and_ladj(z.reshape(5, 1, 4).expand(5, 3, 4), context)
    assert x3.shape == (5, 3, 4) and ladj3.shape == (5, 3)


def test_lu_weight_matches_forward(gen):
    t = perturb(LULinear(3, permute=True))
    z = torch.randn(4, 3, generator=gen)
    assert torch.allclose(t(z), z @ t.weight().T, atol=1e-5)
    assert torch.allclose(
        t.log_abs_det_jacobian(z, t(z)), torch.linalg.slogdet(t.weight())[1].expand(4), atol=1e-5
    )


def test_actnorm_initialises_from_first_inverse_batch_only(gen):
    t = ActNorm(2)
    x = torch.randn(4000, 2, generator=gen) * torch.tensor([3.0, 0.5]) + torch.tensor([5.0, -1.0])
    z = t.inv(x)
    assert torch.allclose(z.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(z.std(0), torch.ones(2), atol=1e-4)
    before = {k: v.clone() for k, v in t.state_dict().items()}
    t.inv(x * 10)  # a second batch does not re-initialise
    assert all(torch.equal(before[k], v) for k, v in t.state_dict().items())
    # The flag survives a state_dict round trip: a loaded layer is not re-initialised.
    other = ActNorm(2)
    other.load_state_dict(t.state_dict())
    assert torch.allclose(other.inv(x * 10), t.inv(x * 10))
    with pytest.raises(ValueError, match="at least 2 points"):
        ActNorm(2).inv(torch.zeros(1, 2))


def test_elementwise_affine_from_data_and_errors():
    x = torch.tensor([[0.0, 10.0], [2.0, 30.0], [4.0, 20.0]])
    t = ElementwiseAffine.from_data(x)
    z = t.inv(x)
    assert torch.allclose(z.mean(0), torch.zeros(2), atol=1e-6)
    assert not any(p.requires_grad for p in t.parameters())
    with pytest.raises(ValueError, match="constant"):
        ElementwiseAffine.from_data(torch.tensor([[1.0, 2.0], [1.0, 3.0]]))
    with pytest.raises(ValueError, match="NaN"):
        ElementwiseAffine.from_data(torch.tensor([[1.0, float("nan")], [1.0, 3.0]]))
    with pytest.raises(ValueError, match="positive"):
        ElementwiseAffine(2, scale=torch.tensor([1.0, -1.0]))


def test_inverse_swaps_fast_direction():
    maf = MaskedAutoregressive(3, AffineMap())
    assert maf.fast_direction == "inverse" and Inverse(maf).fast_direction == "forward"
    assert Inverse(maf).inv is maf


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="permutation"):
        Permutation([0, 0, 1])
    with pytest.raises(ValueError, match="at least 2 features"):
        Coupling(1, AffineMap())
    with pytest.raises(ValueError, match="both True and False"):
        Coupling(3, AffineMap(), mask=[True, True, True])
    with pytest.raises(ValueError, match="conditioner"):
        Coupling(3, AffineMap(), conditioner="transformer")
    with pytest.raises(ValueError, match="features"):
        LULinear(0)
    with pytest.raises(ValueError, match="same features"):
        Compose([LULinear(2), LULinear(3)])
    with pytest.raises(TypeError, match="Bijections"):
        Compose([torch.nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="activation"):
        Coupling(3, AffineMap(), activation="swish2")


def test_caching_is_refused_not_silently_ignored():
    with pytest.raises(NotImplementedError, match="do not cache"):
        LULinear(2).with_cache(1)


# -- option checks (one helper, pyroflows.checks, behind every constructor) --------------------


def test_check_real_accepts_open_interval_numbers_only():
    import numpy as np

    from pyroflows.checks import check_real

    assert check_real("coefficient", np.float32(0.5), 0, 1) == 0.5
    assert check_real("time", 3) == 3.0 and isinstance(check_real("time", 3), float)
    for bad in (True, 0, 1.0, float("nan"), "0.5", None):
        with pytest.raises(ValueError, match=r"coefficient must be a number in \(0, 1\)"):
            check_real("coefficient", bad, 0, 1)
    with pytest.raises(ValueError, match="time must be a positive finite number"):
        check_real("time", float("inf"))


def _bad_options():  # noqa: ANN202
    from pyroflows.transforms.continuous import ContinuousFlow
    from pyroflows.transforms.gaussianization import GaussianizationMap
    from pyroflows.transforms.neural_autoregressive import BlockNeuralAutoregressive, SigmoidalMap
    from pyroflows.transforms.orthogonal import HouseholderRotation
    from pyroflows.transforms.recurrent import RecurrentAutoregressive
    from pyroflows.transforms.residual import ResidualBlock
    from pyroflows.transforms.reversible import ReversibleCompose
    from pyroflows.transforms.sylvester import Sylvester
    from pyroflows.transforms.umnn import UMNNMap

    return [
        (lambda: SplineMap(bins=True), "bins must be an integer >= 1"),
        (lambda: SplineMap(bound=float("inf")), "bound must be a positive finite number"),
        (lambda: SplineMap(min_derivative=1.0), r"min_derivative must be a number in \(0, 1\)"),
        (lambda: AffineMap(log_scale_bound=float("nan")), "log_scale_bound"),
        (lambda: GaussianizationMap(components=0), "components must be an integer >= 1"),
        (lambda: SigmoidalMap(depth=1.5), "depth must be an integer >= 1"),
        (lambda: SigmoidalMap(min_slope=0.0), "min_slope"),
        (lambda: BlockNeuralAutoregressive(2, param_scale=True), "param_scale"),
        (lambda: HouseholderRotation(3, reflections=0), "reflections must be an integer >= 1"),
        (lambda: Sylvester(3, reflections=-1), "reflections must be an integer >= 0"),
        (lambda: Sylvester(3, hidden=()), "hidden"),
        (lambda: UMNNMap(embedding=True), "embedding must be an integer >= 1"),
        (lambda: UMNNMap(log_slope_bound=0), "log_slope_bound"),
        (lambda: ResidualBlock(3, logdet="approx"), "logdet must be one of"),
        (lambda: ResidualBlock(3, roulette="binomial"), "roulette must be one of"),
        (lambda: ResidualBlock(3, extra_terms=0.0), "extra_terms"),
        (lambda: ResidualBlock(3, coefficient=1.0), "coefficient"),
        (lambda: ReversibleCompose([LULinear(2)], checkpoint_every=-1), "checkpoint_every"),
        (lambda: RecurrentAutoregressive(4, AffineMap(), step=0), "step must be an integer >= 1"),
        (lambda: RecurrentAutoregressive(4, AffineMap(), cell="lstm2"), "cell must be one of"),
        (lambda: ContinuousFlow(2, time=float("inf")), "time must be a positive finite number"),
        (lambda: ContinuousFlow(2, rtol=0.0), "rtol"),
        (lambda: ContinuousFlow(2, trace="approx"), "trace must be one of"),
        (lambda: ContinuousFlow(2, activation="relu"), "activation must be one of"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_options())))
def test_bad_options_name_the_argument(case):
    make, match = _bad_options()[case]
    with pytest.raises(ValueError, match=match):
        make()


def test_numpy_integers_are_counts():
    import numpy as np

    from pyroflows.transforms.orthogonal import HouseholderRotation

    assert SplineMap(bins=np.int64(4)).num_params == 11
    assert HouseholderRotation(3, reflections=np.int32(2)).reflections == 2


def test_fixed_and_trainable_values_keep_their_layout():
    # One helper stores the values of ElementwiseAffine and LowerTriangularAffine: parameters
    # or buffers, in the default dtype, never aliasing the caller's tensor.
    from pyroflows.transforms import LowerTriangularAffine

    loc = torch.ones(2, dtype=torch.float64)
    fixed = ElementwiseAffine(2, loc=loc, trainable=False)
    assert set(dict(fixed.named_buffers())) == {"loc", "log_scale"} and not list(fixed.parameters())
    assert fixed.loc.dtype == torch.get_default_dtype()
    loc += 1
    assert torch.equal(fixed.loc, torch.ones(2))
    tri = LowerTriangularAffine(2)
    assert {n for n, _ in tri.named_parameters()} == {"loc", "off_diag", "log_diag"}
