"""Conditioner networks: MLP, residual MLP and MADE."""

from .activations import ACTIVATIONS, make_activation
from .amortized import AmortizedParameters
from .context import join_context
from .conv import ConvNet, ResidualConvNet
from .device import module_device_dtype
from .layers import residual_body, residual_width, zero_init
from .lipschitz import LipschitzLinear, LipschitzMLP, LipSwish
from .made import MADE, MaskedLinear, check_order
from .masked_conv import MaskedConv2d, PixelCNNConditioner, channel_groups, pixelcnn_mask
from .mlp import MLP, ResidualMLP, dense_stack
from .recurrent import CELLS, RecurrentConditioner, RecurrentLayer

__all__ = [
    "AmortizedParameters",
    "module_device_dtype",
    "ACTIVATIONS",
    "CELLS",
    "ConvNet",
    "LipSwish",
    "LipschitzLinear",
    "LipschitzMLP",
    "MADE",
    "MLP",
    "MaskedConv2d",
    "MaskedLinear",
    "PixelCNNConditioner",
    "RecurrentConditioner",
    "RecurrentLayer",
    "ResidualConvNet",
    "ResidualMLP",
    "channel_groups",
    "dense_stack",
    "check_order",
    "join_context",
    "make_activation",
    "pixelcnn_mask",
    "residual_body",
    "residual_width",
    "zero_init",
]
