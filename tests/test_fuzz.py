"""Fuzz test of the public API: malformed inputs (wrong shapes and dtypes, NaN and inf,
non-tensors, ints where tuples go, negative sizes, strings, None, huge values), drawn by
Hypothesis, to the main entry points: ``pyroflows.flows.build``, ``pyroflows.density.build``,
``pyroflows.destructors.build(...).fit/to_uniform``, ``flow(context).log_prob/sample/rsample``,
``flow.transform(context)(z)``/``.inv(x)`` and ``pyroflows.infer.fit``.

Each call must either be refused with a ValueError or TypeError whose message names the
argument, or give an answer without NaN: never NaN, never another exception type.
"""

from __future__ import annotations

import math
import warnings

import pyro
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyroflows
from pyroflows.flows import available, kind

SCALE = max(1, settings.default.max_examples // 10)


def fuzz_settings(examples: int):  # noqa: ANN201
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


def tensors(result: object) -> list[torch.Tensor]:
    if isinstance(result, torch.Tensor):
        return [result]
    if isinstance(result, tuple | list):
        return [t for r in result for t in tensors(r)]
    return []


def refused_or_fine(call, *names: str) -> object:  # noqa: ANN001
    """``call()``'s result (checked free of NaN), or None when it was refused with a
    ValueError/TypeError naming one of ``names``; any other exception fails the test."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = call()
    except (ValueError, TypeError) as error:
        message = str(error).lower()
        assert any(n.lower() in message for n in names), (
            f"{type(error).__name__} does not name {names}: {error}"
        )
        return None
    for t in tensors(result):
        if t.is_floating_point():
            assert not torch.isnan(t).any(), "NaN answer to a malformed input"
    return result


#: Malformed sizes: where a positive int (or, for images, a (C, H, W) tuple) goes.
bad_sizes = st.one_of(
    st.integers(max_value=0),
    st.sampled_from([None, "3", "", 2.5, math.nan, math.inf, True, False, [3], (3, 0), (-1,)]),
    st.floats(allow_nan=True),
    st.text(max_size=3),
)
#: Malformed ``hidden``: ints where tuples go, negative widths, strings, None.
bad_hidden = st.one_of(
    st.integers(max_value=0),
    st.sampled_from([None, "8", 2.5, math.nan, (), (0,), (-4,), (8, -1), ("8",), (2.5,), True]),
)


@fuzz_settings(40)
@given(
    name=st.sampled_from(available()),
    argument=st.sampled_from(["features", "context", "transforms", "hidden"]),
    data=st.data(),
)
def test_fuzz_flows_build(name, argument, data):  # noqa: ANN001
    features = (1, 4, 4) if kind(name) == "image" else 2
    options = {"features": features, "context": 0, "transforms": 1, "hidden": (4,)}
    if kind(name) == "image":
        options["levels"] = 1
    bad = data.draw(bad_hidden if argument == "hidden" else bad_sizes, label=argument)
    if argument == "context" and isinstance(bad, int) and not isinstance(bad, bool) and bad == 0:
        bad = -1  # context=0 is valid
    options[argument] = bad
    features = options.pop("features")
    context = options.pop("context")
    refused_or_fine(
        lambda: pyroflows.flows.build(name, features, context=context, **options),
        argument,
        "features" if argument == "features" else argument,
    )


def test_fuzz_build_names():
    for name in [None, 3, "", "nope", "MAF ", ("maf",)]:
        refused_or_fine(lambda name=name: pyroflows.flows.build(name, 2), "flow")
        refused_or_fine(lambda name=name: pyroflows.density.build(name, 2), "density", "model")
        refused_or_fine(lambda name=name: pyroflows.destructors.build(name, 2), "destructor")


@fuzz_settings(20)
@given(
    name=st.sampled_from(pyroflows.density.available("vector")),
    argument=st.sampled_from(["features", "context"]),
    bad=bad_sizes,
)
def test_fuzz_density_build(name, argument, bad):  # noqa: ANN001
    if argument == "context" and isinstance(bad, int) and not isinstance(bad, bool) and bad == 0:
        bad = -1
    args = {"features": 2, "context": 0, argument: bad}
    refused_or_fine(
        lambda: pyroflows.density.build(name, args["features"], args["context"]), argument
    )


@fuzz_settings(20)
@given(name=st.sampled_from(pyroflows.destructors.available()), bad=bad_sizes)
def test_fuzz_destructors_build(name, bad):  # noqa: ANN001
    refused_or_fine(lambda: pyroflows.destructors.build(name, bad), "features")


# -- a built flow, fed malformed values --------------------------------------------------------

FLOW = None


def small_flow():  # noqa: ANN201
    global FLOW  # noqa: PLW0603
    if FLOW is None:
        torch.manual_seed(0)
        FLOW = pyroflows.flows.build("maf", 3, context=2, transforms=1, hidden=(8,)).double()
    return FLOW


def bad_values(shape: tuple[int, ...]):  # noqa: ANN201
    """Malformed tensors and non-tensors for an input of (batch, *shape)."""
    f64 = torch.float64
    tensors_ = st.sampled_from(
        [
            lambda: torch.randn(4, shape[-1] + 2, dtype=f64),  # wrong event size
            lambda: torch.randn(4, *shape),  # float32
            lambda: torch.ones(4, *shape, dtype=torch.long),  # ints
            lambda: torch.ones(4, *shape, dtype=torch.bool),
            lambda: torch.randn(4, *shape, dtype=torch.complex128),
            lambda: torch.full((4, *shape), math.nan, dtype=f64),
            lambda: torch.full((4, *shape), math.inf, dtype=f64),
            lambda: torch.full((4, *shape), -math.inf, dtype=f64),
            lambda: torch.full((4, *shape), 1e300, dtype=f64),
            lambda: torch.full((4, *shape), -1e300, dtype=f64),
            lambda: torch.tensor(1.0, dtype=f64),  # a scalar
            lambda: torch.empty(0, *shape, dtype=f64),  # no rows
            lambda: torch.randn(3, 4, *shape, dtype=f64),  # a batch that does not broadcast
        ]
    ).map(lambda make: make())
    others = st.sampled_from([None, "x", 3, 2.5, [[0.0] * shape[-1]] * 4, (1, 2, 3)])
    return st.one_of(tensors_, others)


@fuzz_settings(80)
@given(x=bad_values((3,)), method=st.sampled_from(["log_prob", "transform", "inv"]))
def test_fuzz_flow_values(x, method):  # noqa: ANN001
    flow = small_flow()
    n = x.shape[0] if isinstance(x, torch.Tensor) and x.dim() >= 2 else 4
    c = torch.randn(n, 2, dtype=torch.float64)
    if method == "log_prob":
        out = refused_or_fine(lambda: flow(c).log_prob(x), "value")
        if out is not None:
            assert not (out == math.inf).any()
    elif method == "transform":
        refused_or_fine(lambda: flow.transform(c)(x), "input", "value")
    else:
        refused_or_fine(lambda: flow.transform(c).inv(x), "input", "value")


@fuzz_settings(40)
@given(c=bad_values((2,)), method=st.sampled_from(["log_prob", "sample"]))
def test_fuzz_flow_contexts(c, method):  # noqa: ANN001
    flow = small_flow()
    x = torch.randn(4, 3, dtype=torch.float64)
    if method == "log_prob":
        refused_or_fine(lambda: flow(c).log_prob(x), "context", "value")
    else:
        refused_or_fine(lambda: flow(c).sample(), "context")


@fuzz_settings(30)
@given(
    shape=st.one_of(
        st.integers(max_value=-1),
        st.sampled_from([(-1,), (2, -3), "5", 2.5, (2.5,), [None], (math.nan,), {"n": 2}]),
    ),
    method=st.sampled_from(["sample", "rsample", "rsample_and_log_prob"]),
)
def test_fuzz_sample_shapes(shape, method):  # noqa: ANN001
    d = small_flow()(torch.randn(4, 2, dtype=torch.float64))
    refused_or_fine(lambda: getattr(d, method)(shape), "sample_shape")


# -- fit and the destructors ------------------------------------------------------------------


@fuzz_settings(30)
@given(
    argument=st.sampled_from(["data", "epochs", "batch_size", "lr", "validation", "patience"]),
    data=st.data(),
)
def test_fuzz_fit(argument, data):  # noqa: ANN001
    torch.manual_seed(0)
    model = pyroflows.flows.build("maf", 2, transforms=1, hidden=(4,)).double()
    x = torch.randn(32, 2, dtype=torch.float64)
    options = {"epochs": 1, "batch_size": 16, "progress": False}
    if argument == "data":
        x = data.draw(bad_values((2,)), label="data")
    else:
        bad = data.draw(
            st.one_of(
                st.sampled_from([-1, 0, None, "1", math.nan, math.inf, -math.inf, 1e300, (1,)]),
                st.floats(max_value=0),
            ),
            label=argument,
        )
        if argument == "patience" and bad is None:
            bad = -1  # patience=None is valid (no early stopping)
        if argument == "validation" and bad == 0:
            bad = -1  # validation=0 is valid (no held-out data)
        options[argument] = bad
    try:
        refused_or_fine(lambda: pyroflows.infer.fit(model, x, **options), argument, "points")
    except FloatingPointError as error:
        # fit's documented divergence error (a finite lr too large for the data): it names
        # the remedy. Any other argument must not get this far.
        assert argument == "lr" and "lr" in str(error), error


DESTRUCTOR_OPTIONS = {
    "histogram": {"bins": 8},
    "mixture": {"components": 2, "max_iter": 5},
    "tree": {"max_leaves": 4, "min_leaf": 10},
    "copula": {"bins": 8},
    "deep": {"layer": "copula", "max_layers": 1, "layer_options": {"bins": 8}, "progress": False},
}


@pytest.mark.parametrize("name", pyroflows.destructors.available())
@fuzz_settings(8)
@given(data=st.data())
def test_fuzz_destructors(name, data):  # noqa: ANN001
    destructor = pyroflows.destructors.build(name, 2, **DESTRUCTOR_OPTIONS.get(name, {}))
    x = data.draw(bad_values((2,)), label="fit data")
    refused_or_fine(lambda: destructor.fit(x), "data", "x", "input", "points")
    g = torch.Generator().manual_seed(0)
    good = 0.05 + 0.9 * torch.rand(200, 2, generator=g, dtype=torch.float64)
    destructor = pyroflows.destructors.build(name, 2, **DESTRUCTOR_OPTIONS.get(name, {})).fit(good)
    x = data.draw(bad_values((2,)), label="to_uniform input")
    out = refused_or_fine(lambda: destructor.to_uniform(x), "input", "value", "x")
    if out is not None:
        assert ((out >= 0) & (out <= 1)).all()


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("method", ["transform", "inv"])
def test_nan_and_inf_through_transforms(method, value):  # noqa: ANN001
    """``flow.transform(c)(z)`` and ``.inv(x)`` with NaN or inf entries are refused under
    Pyro's validation (NaN out before), as an unconditional bijection's are; with validation
    off they are not checked (no host sync)."""
    flow = small_flow()
    c = torch.randn(4, 2, dtype=torch.float64)
    x = torch.full((4, 3), value, dtype=torch.float64)
    for T in (flow.transform(c), pyroflows.transforms.LULinear(3).double()):
        with pytest.raises(ValueError, match="input has NaN or infinite values"):
            T(x) if method == "transform" else T.inv(x)
    with pyro.validation_enabled(False):
        T = flow.transform(c)
        y = T(x) if method == "transform" else T.inv(x)
        assert y.shape == x.shape


def test_huge_sample_shape():
    """A sample_shape beyond the device's memory is refused by name, before the allocator."""
    d = small_flow()(torch.randn(4, 2, dtype=torch.float64))
    with pytest.raises(
        ValueError, match=r"sample_shape asks for a tensor of shape \(1000000000000000, 4, 3\)"
    ):
        d.sample((10**15,))
    with pytest.raises(ValueError, match="sample_shape"):
        pyroflows.flows.build("realnvp-image", (1, 4, 4))().sample((10**14,))
    assert d.sample((2,)).shape == (2, 4, 3)


DENSITY_OPTIONS = {
    "made": {"hidden": (8,)},
    "made-mog": {"hidden": (8,), "components": 2},
    "made-bernoulli": {"hidden": (8,)},
    "nade": {"hidden": 8},
    "rnade": {"hidden": 8, "components": 2},
}


@pytest.mark.parametrize("name", pyroflows.density.available("vector"))
@fuzz_settings(20)
@given(x=bad_values((3,)))
def test_fuzz_density_log_prob(name, x):  # noqa: ANN001
    torch.manual_seed(0)
    model = pyroflows.density.build(name, 3, 2, **DENSITY_OPTIONS.get(name, {})).double()
    n = x.shape[0] if isinstance(x, torch.Tensor) and x.dim() >= 2 else 4
    c = torch.randn(n, 2, dtype=torch.float64)
    out = refused_or_fine(lambda: model(c).log_prob(x), "value")
    if out is not None:
        assert not (out == math.inf).any()
