"""The ``pyroflows`` command, run in-process through ``main([...])``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import pyroflows
from pyroflows.cli import main
from pyroflows.data import load_array, save_array

TINY = ["--transforms", "1", "--hidden", "16,16", "--quiet"]


def run(capsys, *argv: str) -> tuple[int, str, str]:  # noqa: ANN001
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def fails(capsys, *argv: str) -> str:  # noqa: ANN001
    """Run a command that must fail with status 2 and one clear error line; return it."""
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pyroflows: error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def correlated() -> np.ndarray:
    """Strongly correlated, badly scaled 2-D data (a standard normal fits it poorly)."""
    g = np.random.default_rng(0)
    z = g.normal(size=(1500, 2))
    return z @ np.array([[3.0, 2.7], [0.0, 0.6]]) + np.array([10.0, -4.0])


@pytest.fixture(scope="module")
def model(tmp_path_factory, correlated) -> tuple:
    """A tiny fitted model file (fitted once, through the command line) and its data file."""
    folder = tmp_path_factory.mktemp("cli")
    save_array(folder / "train.csv", correlated)
    path = folder / "model.pt"
    assert (
        main(
            [
                "fit",
                str(folder / "train.csv"),
                "--flow",
                "maf",
                "--out",
                str(path),
                "--epochs",
                "15",
                "--lr",
                "5e-3",
                "--seed",
                "1",
                *TINY,
            ]
        )
        == 0
    )
    return path, folder / "train.csv"


def test_list(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == pyroflows.flows.available()
    nsf = next(line for line in lines if line.startswith("nsf "))
    assert "Neural spline flow" in nsf


def test_help_and_version(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "demo" in out and "score" in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and pyroflows.__version__ in out


def test_fit_then_score_beats_a_standard_normal(capsys, model, correlated, tmp_path):
    path, data = model
    flow = pyroflows.flows.load(path)
    assert flow.config["name"] == "maf" and flow.config["standardize"]
    code, out, err = run(capsys, "score", str(path), str(data))
    assert code == 0
    scores = np.array([float(v) for v in out.split()])
    assert scores.shape == (len(correlated),) and np.isfinite(scores).all()
    standard_normal = -math.log(2 * math.pi) - 0.5 * (correlated**2).sum(1)
    assert scores.mean() > standard_normal.mean() + 10
    # The data are Gaussian: the true density's mean log-likelihood is -log(2 pi e |det M|),
    # about -3.43 nats; a small fitted flow gets close to it.
    assert scores.mean() > -math.log(2 * math.pi * math.e * 3.0 * 0.6) - 0.15
    assert f"{scores.mean():.4f}" in err and "1500 rows" in err
    # The same numbers as the Python API.
    with torch.no_grad():
        direct = flow().log_prob(torch.as_tensor(correlated, dtype=torch.float32)).double().numpy()
    np.testing.assert_allclose(scores, direct, rtol=1e-5, atol=1e-5)
    # --out writes them to a file.
    assert main(["score", str(path), str(data), "--out", str(tmp_path / "s.npy")]) == 0
    np.testing.assert_allclose(load_array(tmp_path / "s.npy")[:, 0], scores, rtol=1e-6)


def test_fit_prints_logliks_and_accepts_npz(capsys, correlated, tmp_path):
    np.savez(tmp_path / "d.npz", train=correlated[:300], other=np.zeros((2, 5)))
    code, out, _ = run(
        capsys,
        "fit",
        str(tmp_path / "d.npz"),
        "--key",
        "train",
        "--flow",
        "realnvp",
        "--out",
        str(tmp_path / "m.pt"),
        "--epochs",
        "2",
        "--validation",
        "0.2",
        *TINY,
    )
    assert code == 0, out
    assert "300 rows x 2 features" in out
    train = float(out.split("train log-likelihood")[1].split()[0])
    val = float(out.split("validation log-likelihood")[1].split()[0])
    assert math.isfinite(train) and math.isfinite(val)
    assert (tmp_path / "m.pt").exists()


def test_sample_shape_stdout_and_files(capsys, model, tmp_path):
    path, _ = model
    code, out, _ = run(capsys, "sample", str(path), "-n", "7", "--seed", "3")
    assert code == 0
    rows = [line.split(",") for line in out.strip().splitlines()]
    assert len(rows) == 7 and all(len(r) == 2 for r in rows)
    code, again, _ = run(capsys, "sample", str(path), "-n", "7", "--seed", "3")
    assert again == out  # seeded
    for name in ("s.npy", "s.csv"):
        assert (
            main(["sample", str(path), "-n", "500", "--out", str(tmp_path / name), "--seed", "0"])
            == 0
        )
        samples = load_array(tmp_path / name)
        assert samples.shape == (500, 2)
    # Samples look like the training data (mean about (10, -4)).
    np.testing.assert_allclose(samples.mean(0), [10.0, -4.0], atol=0.6)


def test_demo_writes_a_figure_and_prints_logliks(capsys, tmp_path):
    out_png = tmp_path / "demo.png"
    code, out, err = run(
        capsys,
        "demo",
        "--epochs",
        "2",
        "--n-train",
        "1000",
        "--n-test",
        "500",
        "--out",
        str(out_png),
        "--quiet",
        "--dataset",
        "8gaussians",
    )
    assert code == 0, err
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    flow_line = next(line for line in out.splitlines() if line.strip().startswith("nsf flow"))
    gauss_line = next(line for line in out.splitlines() if "Gaussian" in line)
    flow_test, gauss_test = float(flow_line.split()[-1]), float(gauss_line.split()[-1])
    assert math.isfinite(flow_test) and math.isfinite(gauss_test)
    assert str(out_png) in out


def test_gaussian_baseline_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    from pyroflows.cli.demo import gaussian_loglik

    g = np.random.default_rng(1)
    train = g.normal(size=(400, 3)) @ g.normal(size=(3, 3))
    test = g.normal(size=(50, 3))
    mean, cov = train.mean(0), np.cov(train, rowvar=False, bias=True)
    expected = [stats.multivariate_normal(mean, cov).logpdf(x).mean() for x in (train, test)]
    np.testing.assert_allclose(gaussian_loglik(train, test), expected, rtol=1e-10)


# -- errors ------------------------------------------------------------------------------------


def test_unknown_flow(capsys, tmp_path):
    line = fails(
        capsys,
        "fit",
        str(tmp_path / "x.csv"),
        "--flow",
        "glowworm",
        "--out",
        str(tmp_path / "m.pt"),
    )
    assert "unknown flow 'glowworm'" in line and "nsf" in line
    assert "unknown flow" in fails(capsys, "demo", "--flow", "glowworm")
    # Image presets exist but take (C, H, W) events: named as such, not "unknown".
    assert "is an image flow" in fails(capsys, "demo", "--flow", "glow")


def test_bad_data_files(capsys, tmp_path):
    out = str(tmp_path / "m.pt")
    assert "no such file" in fails(capsys, "fit", str(tmp_path / "missing.csv"), "--out", out)
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n3,abc\n")
    assert "line 3, column 2: 'abc' is not a number" in fails(
        capsys, "fit", str(tmp_path / "bad.csv"), "--out", out
    )
    np.save(tmp_path / "img.npy", np.zeros((5, 2, 2)))
    assert "3 dimensions" in fails(capsys, "fit", str(tmp_path / "img.npy"), "--out", out)
    (tmp_path / "d.json").write_text("[]")
    assert "unknown file type" in fails(capsys, "fit", str(tmp_path / "d.json"), "--out", out)
    np.save(tmp_path / "const.npy", np.ones((50, 2)))
    assert "constant" in fails(capsys, "fit", str(tmp_path / "const.npy"), "--out", out)
    assert not (tmp_path / "m.pt").exists()


def test_dimension_mismatch(capsys, model, tmp_path):
    path, _ = model
    save_array(tmp_path / "three.csv", np.ones((4, 3)))
    line = fails(capsys, "score", str(path), str(tmp_path / "three.csv"))
    assert "3 columns" in line and "2 features" in line


def test_bad_option_values(capsys, tmp_path):
    save_array(tmp_path / "d.csv", np.random.default_rng(0).normal(size=(50, 2)))
    base = ["fit", str(tmp_path / "d.csv"), "--out", str(tmp_path / "m.pt")]
    assert "--hidden" in fails(capsys, *base, "--hidden", "64,x")
    assert "--epochs" in fails(capsys, *base, "--epochs", "0")
    assert "--lr" in fails(capsys, *base, "--lr", "-1")
    assert "--validation" in fails(capsys, *base, "--validation", "1.5")
    assert "--dataset" in fails(capsys, "demo", "--dataset", "mnist")
    assert "unknown options ['bins']" in fails(capsys, *base, "--flow", "maf", "--bins", "4")
    assert "-n" in fails(capsys, "sample", str(tmp_path / "m.pt"), "-n", "many")
    assert "required" in fails(capsys)
    assert "invalid choice" in fails(capsys, "frobnicate")


def test_bad_outputs_fail_before_work(capsys, model, tmp_path):
    path, data = model
    assert "does not exist" in fails(
        capsys, "fit", str(data), "--out", str(tmp_path / "no" / "m.pt")
    )
    assert "cannot write .json" in fails(
        capsys, "sample", str(path), "-n", "3", "--out", str(tmp_path / "s.json")
    )
    assert "cannot write" in fails(
        capsys, "score", str(path), str(data), "--out", str(tmp_path / "s")
    )
    assert "cannot write .gif" in fails(capsys, "demo", "--out", str(tmp_path / "d.gif"))


def test_bad_model_files(capsys, tmp_path):
    assert "no such model file" in fails(capsys, "sample", str(tmp_path / "none.pt"), "-n", "2")
    (tmp_path / "junk.pt").write_text("not a model")
    assert "cannot read a pyroflows model" in fails(
        capsys, "sample", str(tmp_path / "junk.pt"), "-n", "2"
    )
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    assert "not a pyroflows model" in fails(
        capsys, "score", str(tmp_path / "other.pt"), str(tmp_path / "x.csv")
    )
    conditional = pyroflows.flows.build("maf", 2, context=1, transforms=1, hidden=(4,))
    pyroflows.flows.save(conditional, tmp_path / "cond.pt")
    assert "conditional" in fails(capsys, "sample", str(tmp_path / "cond.pt"), "-n", "2")


def test_fit_max_time_bounds_the_run(capsys, correlated, tmp_path):
    """--max-time stops after the step at which the budget runs out (here: the first), keeps
    the best state, saves it and says why it stopped."""
    np.savetxt(tmp_path / "d.csv", correlated[:300], delimiter=",")
    code, out, _ = run(
        capsys,
        "fit",
        str(tmp_path / "d.csv"),
        "--out",
        str(tmp_path / "m.pt"),
        "--epochs",
        "50",
        "--max-time",
        "1e-9",
        *TINY,
    )
    assert code == 0, out
    assert "for at most 50 epochs or 1e-09 s" in out
    assert "best epoch 1 of 1, stopped by --max-time" in out
    assert (tmp_path / "m.pt").exists()
    code, _, err = run(capsys, "fit", str(tmp_path / "d.csv"), "--max-time", "-1")
    assert code != 0 and "--max-time" in err
