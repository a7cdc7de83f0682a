r"""MNIST for density estimation: loading, dequantisation, the logit transform, and the exact
log-Jacobian of that preprocessing, so likelihoods can be reported in pixel space.

Protocol (``../shared/data/README.md``, as in the MAF and RealNVP papers): pixel values
:math:`k \in \{0..255\}` are dequantised to :math:`x = (k + v)/256` with :math:`v \sim U(0,1)`,
then mapped to :math:`y = \operatorname{logit}(\alpha + (1 - 2\alpha) x)` with
:math:`\alpha = 10^{-6}`. A model of :math:`y` gives the density of :math:`x` on
:math:`[0,1]^{784}` by adding

.. math:: \log\left|\frac{dy}{dx}\right| = \sum_i \log(1 - 2\alpha) - \log s_i - \log(1 - s_i),
          \qquad s_i = \alpha + (1-2\alpha) x_i,

and :func:`bits_per_dim` converts that to bits per dimension on the 256-level pixel scale.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "DEFAULT_DIR",
    "MNISTNotFoundError",
    "bits_per_dim",
    "dequantize",
    "load_mnist",
    "logit_transform",
    "preprocess",
]

#: Where the project's copy lives, relative to the project root (``../shared/data/mnist``).
DEFAULT_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"
_FILES = {"train": "mnist_train_5k.npz", "test": "mnist_test_10k.npz"}


class MNISTNotFoundError(FileNotFoundError):
    """Raised when the MNIST ``.npz`` files are not where they were looked for."""


def load_mnist(
    split: str = "train", path: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST images (n, 28, 28) uint8 and labels (n,) from an ``.npz`` file.

    Args:
        split: ``"train"`` (the 5000 training digits, ``mnist_train_5k.npz``) or ``"test"``
            (the official 10 000 test digits, ``mnist_test_10k.npz``).
        path: a directory holding those files, or the ``.npz`` file itself; default
            :data:`DEFAULT_DIR` (or the ``PYROFLOWS_MNIST`` environment variable).

    Raises:
        MNISTNotFoundError: the file is absent (the message says where it looked).
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    base = Path(path if path is not None else os.environ.get("PYROFLOWS_MNIST", DEFAULT_DIR))
    file = base if base.suffix == ".npz" else base / _FILES[split]
    if not file.is_file():
        raise MNISTNotFoundError(
            f"MNIST file not found: {file}. Put {_FILES[split]} there, or pass path=... (a directory "
            "or the .npz file) or set PYROFLOWS_MNIST; the project's copy lives in ../shared/data/mnist/"
        )
    with np.load(file) as archive:
        if "images" not in archive:
            raise ValueError(f"{file} has no 'images' array (found {list(archive.keys())})")
        images = np.asarray(archive["images"])
        labels = (
            np.asarray(archive["labels"])
            if "labels" in archive
            else np.zeros(len(images), np.uint8)
        )
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(
            f"{file}: expected uint8 images (n, 28, 28), got {images.dtype} {images.shape}"
        )
    return images, labels


def dequantize(
    images: np.ndarray | Tensor,
    seed: int | torch.Generator | None = 0,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Flatten uint8 images and add uniform noise: ``(k + U(0,1)) / 256`` in ``(0, 1)``.

    Returns (n, pixels). The scaling by 1/256 has log-Jacobian ``-pixels * log 256`` (see
    :func:`bits_per_dim`, which accounts for it).
    """
    values = torch.as_tensor(np.asarray(images)).reshape(len(images), -1).to(dtype)
    if values.min() < 0 or values.max() > 255:
        raise ValueError("images must hold integer pixel values in 0..255")
    generator = (
        seed
        if isinstance(seed, torch.Generator)
        else torch.Generator().manual_seed(0 if seed is None else seed)
    )
    noise = torch.rand(values.shape, generator=generator, device="cpu", dtype=dtype)
    return (values + noise) / 256


def logit_transform(x: Tensor, alpha: float = 1e-6) -> tuple[Tensor, Tensor]:
    r"""``y = logit(alpha + (1 - 2 alpha) x)`` and its log-Jacobian ``log|dy/dx|`` per row."""
    if not 0 <= alpha < 0.5:
        raise ValueError(f"alpha must lie in [0, 0.5), got {alpha!r}")
    if (x < 0).any() or (x > 1).any():
        raise ValueError("logit_transform takes values in [0, 1]")
    s = alpha + (1 - 2 * alpha) * x
    y = torch.log(s) - torch.log1p(-s)
    ladj = (math.log(1 - 2 * alpha) - torch.log(s) - torch.log1p(-s)).sum(-1)
    return y, ladj


def preprocess(
    images: np.ndarray | Tensor,
    seed: int | torch.Generator | None = 0,
    logit: bool = True,
    alpha: float = 1e-6,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor]:
    """Dequantise (and logit-transform) images.

    Returns:
        ``(y, ladj)``: the model-space data (n, pixels) and ``log|dy/dx|`` (n,) with ``x``
        the dequantised values in ``[0, 1]``; ``log p(x) = log p(y) + ladj``.
    """
    x = dequantize(images, seed, dtype)
    if not logit:
        return x, torch.zeros(x.shape[0], dtype=dtype)
    return logit_transform(x, alpha)


def bits_per_dim(loglik_unit: Tensor | float, pixels: int = 784) -> float:
    """Bits per dimension on the 0..255 pixel scale from a mean log-likelihood (nats) of the
    dequantised data on ``[0, 1]^pixels``: ``(-loglik + pixels * log 256) / (pixels * log 2)``."""
    value = float(torch.as_tensor(loglik_unit).double().mean())
    return (-value + pixels * math.log(256)) / (pixels * math.log(2))
