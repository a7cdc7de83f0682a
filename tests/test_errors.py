"""Bad input gets a clear error that names the problem."""

from __future__ import annotations

import pytest
import torch

import pyroflows
from pyroflows.flows import available, build


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        build("glowww", 2)
    message = str(info.value)
    assert "glowww" in message and all(name in message for name in available())


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(TypeError, match="bins") as info:
        build("maf", 2, bins=8)
    assert "transforms" in str(info.value) and "hidden" in str(info.value)


@pytest.mark.parametrize("features, context", [(0, 0), (-1, 0), (2.5, 0), (2, -1), (True, 0)])
def test_bad_sizes(features, context):
    with pytest.raises(ValueError, match="features|context"):
        build("nsf", features, context=context)


@pytest.mark.parametrize("name", ["realnvp", "maf"])
def test_bad_option_values(name):
    with pytest.raises(ValueError, match="transforms"):
        build(name, 3, transforms=0)
    with pytest.raises(ValueError, match="hidden"):
        build(name, 3, hidden=(0,))


def test_bad_spline_options():
    with pytest.raises(ValueError, match="bins"):
        build("nsf", 3, bins=0)
    with pytest.raises(ValueError, match="bound"):
        build("nsf-coupling", 3, bound=0.0)
    with pytest.raises(ValueError, match="order"):
        build("nsf", 3, order="sideways")
    with pytest.raises(ValueError, match="at least 2 features"):
        build("realnvp", 1)


@pytest.mark.parametrize("name", available("vector"))
def test_wrong_feature_count(name):
    flow = build(name, 3, transforms=1, hidden=(8,))
    with pytest.raises(ValueError, match="3 features"):
        flow().log_prob(torch.zeros(5, 4))
    with pytest.raises(ValueError, match="3 features"):
        flow.transform()(torch.zeros(5, 2))
    with pytest.raises(ValueError, match="3 features"):
        flow.transform().inv(torch.zeros(5, 2))


@pytest.mark.parametrize("name", available("vector"))
def test_context_errors(name):
    conditional = build(name, 3, context=2, transforms=1, hidden=(8,))
    with pytest.raises(ValueError, match="conditional on a context of 2"):
        conditional()
    with pytest.raises(ValueError, match="conditional on a context of 2"):
        conditional.transform()(torch.zeros(5, 3))
    with pytest.raises(ValueError, match="context has shape"):
        conditional(torch.zeros(5, 3))
    with pytest.raises(TypeError, match="context must be a torch.Tensor"):
        conditional([[0.0, 1.0]])
    unconditional = build(name, 3, transforms=1, hidden=(8,))
    with pytest.raises(ValueError, match="takes no context"):
        unconditional(torch.zeros(5, 2))


def test_value_must_be_a_tensor():
    with pytest.raises(TypeError, match="torch.Tensor"):
        build("maf", 2)().log_prob([[0.0, 0.0]])


def test_standardize_errors():
    with pytest.raises(ValueError, match=r"shape \(n, 2\)"):
        build("maf", 2, standardize=torch.zeros(10, 3))
    with pytest.raises(ValueError, match="constant"):
        build("maf", 2, standardize=torch.ones(10, 2))


def test_load_rejects_foreign_files(tmp_path):
    from pyroflows.flows import load, save

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="cannot read"):
        load(bad)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a pyroflows model"):
        load(tmp_path / "other.pt")
    from pyroflows import Flow
    from pyroflows.transforms import LULinear

    with pytest.raises(ValueError, match="build"):
        save(Flow([LULinear(2)]), tmp_path / "x.pt")


def test_numpy_integer_sizes_are_accepted(tmp_path):
    import numpy as np

    from pyroflows.destructors import build as build_destructor
    from pyroflows.flows import load, save
    from pyroflows.transforms import LULinear

    flow = build("maf", np.int64(3), context=np.int64(2), transforms=1, hidden=(4,))
    assert flow.features == 3 and type(flow.config["features"]) is int
    assert build("nsf", np.int64(2), transforms=1, hidden=(np.int64(4),)).features == 2
    save(flow, tmp_path / "flow.pt")  # the config stays plain ints (weights_only loading)
    assert load(tmp_path / "flow.pt").features == 3
    assert LULinear(np.int64(3)).features == 3
    assert build_destructor("histogram", np.int64(3)).features == 3


def test_a_damaged_model_file_names_the_file(tmp_path):
    from pyroflows.flows import load, save

    flow = build("maf", 2, transforms=1, hidden=(4,))
    save(flow, tmp_path / "flow.pt")
    payload = torch.load(tmp_path / "flow.pt", weights_only=True)
    payload["state_dict"].popitem()
    torch.save(payload, tmp_path / "damaged.pt")
    with pytest.raises(ValueError, match="damaged.pt.*cannot be rebuilt"):
        load(tmp_path / "damaged.pt")


def test_numpy_sizes_in_options_survive_save_and_load(tmp_path) -> None:
    """A preset built with NumPy integers in its options saves a config that loads back
    (``torch.load(weights_only=True)`` refuses NumPy scalars)."""
    import numpy as np

    flow = pyroflows.flows.build("maf", np.int64(2), transforms=np.int64(1), hidden=(np.int64(4),))
    assert type(flow.config["options"]["hidden"][0]) is int
    path = tmp_path / "flow.pt"
    pyroflows.flows.save(flow, path)
    loaded = pyroflows.flows.load(path)
    x = torch.randn(3, 2, dtype=next(flow.parameters()).dtype)
    assert torch.equal(loaded().log_prob(x), flow().log_prob(x))


def test_load_puts_the_flow_on_map_location(tmp_path) -> None:
    """Parameters and buffers lie where ``map_location`` puts the file's tensors, in the file's
    dtype (copying them into a flow built on the CPU once left a CUDA load on the CPU; the
    meta device shows the same without a GPU)."""
    flow = pyroflows.flows.build("nsf", 3, transforms=1, hidden=(4,), standardize=torch.rand(9, 3))
    flow = flow.double()
    path = tmp_path / "flow.pt"
    pyroflows.flows.save(flow, path)
    loaded = pyroflows.flows.load(path, map_location="meta")
    tensors = [*loaded.parameters(), *loaded.buffers()]
    assert tensors and all(t.device.type == "meta" for t in tensors)
    assert all(t.dtype == torch.float64 for t in tensors if t.is_floating_point())
