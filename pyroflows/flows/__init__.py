"""Flow presets by paper name and the registry: ``build(name, features, context=0, **options)``.

Importing the preset modules registers them in the one registry
(:data:`pyroflows.registry.REGISTRY`, family ``"flow"``); ``available("vector")`` lists the
presets over flat vectors, ``available("image")`` those over ``(C, H, W)`` images (``glow``,
``realnvp-image``). Every preset returns a :class:`~pyroflows.Flow`, whatever its event shape.
"""

from . import (  # noqa: F401  (the imports register the presets)
    autoregressive,
    continuous,
    coupling,
    gaussianization,
    mog,
    multiscale,
    neural_autoregressive,
    planar,
    recurrent,
    residual,
    variational,
)
from .autoregressive import iaf, maf, nsf
from .continuous import ffjord, regularized_log_prob
from .coupling import nice, nsf_coupling, realnvp
from .gaussianization import fit_logistic_mixture, gf, init_gf
from .multiscale import glow, realnvp_image
from .registry import available, build, kind, load, preset, register, save
from .residual import resflow

__all__ = [
    "available",
    "build",
    "ffjord",
    "fit_logistic_mixture",
    "gf",
    "glow",
    "iaf",
    "init_gf",
    "kind",
    "load",
    "maf",
    "nice",
    "nsf",
    "nsf_coupling",
    "preset",
    "realnvp",
    "realnvp_image",
    "regularized_log_prob",
    "register",
    "resflow",
    "save",
]
