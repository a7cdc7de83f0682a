"""Autoregressive density models as Pyro distributions: ``build(name, features, context=0,
**options)`` and ``available(kind=None)`` (a view of the one registry,
:data:`pyroflows.registry.REGISTRY`; ``"pixelcnn"`` is its image entry).

A model is an ``nn.Module``; ``model(context)`` returns a Pyro ``TorchDistribution`` with an
exact ``log_prob`` and sequential sampling, usable in ``pyro.sample`` and as a flow's base
(:class:`DensityBase`).
"""

from . import base, made, nade, pixelcnn  # noqa: F401  (registers the models)
from .base import *  # noqa: F403  (re-exports base.__all__)
from .made import MADEDensity
from .nade import NADE
from .pixelcnn import PixelCNN, PixelCNNDistribution
from .registry import available, build, preset, register

__all__ = [
    *base.__all__,  # the conditionals, AutoregressiveModel, DensityBase, make_orders
    "MADEDensity",
    "NADE",
    "PixelCNN",
    "PixelCNNDistribution",
    "available",
    "build",
    "preset",
    "register",
]
