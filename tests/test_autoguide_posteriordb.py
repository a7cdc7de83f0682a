"""The posteriordb loader: any path, clean errors or skips when the files are absent."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pyroflows.data.posteriordb import find_root, list_posteriors, load_posterior


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_root(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no posterior"):
        load_posterior("absent", tmp_path)


def test_loads_any_folder(tmp_path):
    folder = tmp_path / "toy-model"
    folder.mkdir()
    (folder / "data.json").write_text(json.dumps({"N": 3, "y": [1.0, 2.0, 3.0]}))
    np.savez(
        folder / "reference_draws.npz",
        draws=np.arange(24.0).reshape(2, 4, 3),
        param_names=np.array(["a", "b[1]", "b[2]"]),
    )
    assert list_posteriors(tmp_path) == ["toy-model"]
    post = load_posterior("toy-model", tmp_path)
    assert post.data["N"] == 3 and post.data["y"].shape == (3,)
    assert post.draws.shape == (2, 4, 3) and post.param_names == ["a", "b[1]", "b[2]"]
    assert post.flat_draws.shape == (8, 3)
    mean, sd = post.reference_mean_sd()
    assert mean.shape == (3,) and (sd > 0).all()


def test_shared_data_when_present():
    try:
        root = find_root()
    except FileNotFoundError:
        pytest.skip("posteriordb data not available")
    names = list_posteriors(root, with_draws=True)
    assert "kidiq-kidscore_momiq" in names
    post = load_posterior("kidiq-kidscore_momiq", root)
    assert post.param_names == ["beta[1]", "beta[2]", "sigma"]
