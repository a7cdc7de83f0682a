"""Data: 2-D toy generators and loaders for standard files."""

from .files import load_array, save_array
from .mnist import bits_per_dim, load_mnist, preprocess
from .toy import TOY_DATASETS, checkerboard, circles, eight_gaussians, moons, pinwheel, spirals, toy

__all__ = [
    "TOY_DATASETS",
    "bits_per_dim",
    "checkerboard",
    "circles",
    "eight_gaussians",
    "load_array",
    "load_mnist",
    "moons",
    "pinwheel",
    "preprocess",
    "save_array",
    "spirals",
    "toy",
]
