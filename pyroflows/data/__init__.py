"""Data: 2-D toy generators and loaders for standard files."""

from .files import load_array, save_array
from .toy import TOY_DATASETS, checkerboard, circles, eight_gaussians, moons, pinwheel, spirals, toy

__all__ = [
    "TOY_DATASETS",
    "checkerboard",
    "circles",
    "eight_gaussians",
    "load_array",
    "moons",
    "pinwheel",
    "save_array",
    "spirals",
    "toy",
]
