"""Flow presets by paper name and the registry: ``build(name, features, context=0, **options)``."""

from . import autoregressive, coupling, families  # noqa: F401  (registers the presets)
from .autoregressive import iaf, maf, nsf
from .coupling import nice, nsf_coupling, realnvp
from .registry import available, build, load, preset, register, save

__all__ = [
    "available",
    "build",
    "iaf",
    "load",
    "maf",
    "nice",
    "nsf",
    "nsf_coupling",
    "preset",
    "realnvp",
    "register",
    "save",
]
