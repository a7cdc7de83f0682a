"""Data: 2-D toy generators and loaders for standard files."""

from .toy import TOY_DATASETS, checkerboard, circles, eight_gaussians, moons, pinwheel, spirals, toy

__all__ = ["TOY_DATASETS", "checkerboard", "circles", "eight_gaussians", "moons", "pinwheel", "spirals", "toy"]
