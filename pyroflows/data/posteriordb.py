"""Loader of posteriordb reference posteriors (model data and MCMC reference draws).

The files live outside the package (``../shared/data/posteriordb`` next to the project, or any
folder you pass): one folder per posterior with ``data.json``, ``info.json`` and, where one
exists, ``reference_draws.npz`` (``draws`` of shape (chains, draws, P) in the constrained space
and ``param_names``).

Example:
    >>> from pyroflows.data.posteriordb import find_root, load_posterior
    >>> root = find_root()                              # doctest: +SKIP
    >>> post = load_posterior("kidiq-kidscore_momiq")   # doctest: +SKIP
    >>> post.draws.shape, post.param_names              # doctest: +SKIP
    ((10, 1000, 3), ['beta[1]', 'beta[2]', 'sigma'])
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ENV_VAR", "Posterior", "find_root", "list_posteriors", "load_posterior"]

ENV_VAR = "PYROFLOWS_POSTERIORDB"


@dataclass
class Posterior:
    """One posteriordb posterior.

    Attributes:
        name: folder name, e.g. ``"kidiq-kidscore_momiq"``.
        data: the model's data (``data.json``), lists turned into numpy arrays.
        info: metadata (``info.json``).
        draws: reference draws (chains, draws, P) or ``None`` when the posterior has none.
        param_names: names of the P columns (Stan style, ``beta[1]``), ``[]`` without draws.
        path: the folder.
    """

    name: str
    data: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    draws: np.ndarray | None = None
    param_names: list[str] = field(default_factory=list)
    path: Path | None = None

    @property
    def flat_draws(self) -> np.ndarray:
        """Draws with chains merged, shape (chains * draws, P)."""
        if self.draws is None:
            raise ValueError(f"posterior {self.name!r} has no reference draws")
        return self.draws.reshape(-1, self.draws.shape[-1])

    def reference_mean_sd(self) -> tuple[np.ndarray, np.ndarray]:
        """Reference posterior mean and standard deviation per parameter."""
        flat = self.flat_draws
        return flat.mean(0), flat.std(0, ddof=1)


def _candidates() -> list[Path]:
    here = Path(__file__).resolve()
    out = []
    if os.environ.get(ENV_VAR):
        out.append(Path(os.environ[ENV_VAR]))
    out += [
        Path.cwd() / ".." / "shared" / "data" / "posteriordb",
        Path.cwd() / "shared" / "data" / "posteriordb",
        here.parents[3] / "shared" / "data" / "posteriordb",
    ]
    return out


def find_root(root: str | os.PathLike | None = None) -> Path:
    """The posteriordb folder: ``root`` if given, else ``$PYROFLOWS_POSTERIORDB``, else
    ``../shared/data/posteriordb`` (from the working directory or the project).

    Raises:
        FileNotFoundError: with the places searched, when no folder exists.
    """
    if root is not None:
        path = Path(root)
        if not path.is_dir():
            raise FileNotFoundError(f"posteriordb folder {os.fspath(path)!r} does not exist")
        return path
    tried = _candidates()
    for path in tried:
        if path.is_dir():
            return path.resolve()
    raise FileNotFoundError(
        "no posteriordb folder found; pass root=... or set $"
        + ENV_VAR
        + " (searched: "
        + ", ".join(os.fspath(p) for p in tried)
        + ")"
    )


def list_posteriors(root: str | os.PathLike | None = None, with_draws: bool = False) -> list[str]:
    """Names of the posteriors under ``root`` (only those with reference draws if asked)."""
    base = find_root(root)
    names = sorted(p.name for p in base.iterdir() if (p / "data.json").is_file())
    if with_draws:
        names = [n for n in names if (base / n / "reference_draws.npz").is_file()]
    return names


def load_posterior(name: str, root: str | os.PathLike | None = None) -> Posterior:
    """Load the data, metadata and reference draws of posterior ``name``.

    Raises:
        FileNotFoundError: when the folder or its ``data.json`` is missing.
    """
    folder = find_root(root) / name
    data_file = folder / "data.json"
    if not data_file.is_file():
        raise FileNotFoundError(f"no posterior {name!r}: {os.fspath(data_file)!r} is missing")
    with open(data_file) as handle:
        data = {
            k: np.asarray(v) if isinstance(v, list) else v for k, v in json.load(handle).items()
        }
    info: dict[str, Any] = {}
    if (folder / "info.json").is_file():
        with open(folder / "info.json") as handle:
            info = json.load(handle)
    draws, names = None, []
    if (folder / "reference_draws.npz").is_file():
        with np.load(folder / "reference_draws.npz", allow_pickle=False) as npz:
            draws = np.asarray(npz["draws"], dtype=np.float64)
            names = [str(n) for n in npz["param_names"]]
    return Posterior(name, data, info, draws, names, folder)
