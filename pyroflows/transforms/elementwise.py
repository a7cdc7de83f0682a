"""Elementwise monotone maps (the "transformers" of Papamakarios et al. 2021, https://arxiv.org/abs/1912.02762) and the
bijections that apply them with free parameters.

An :class:`ElementwiseMap` is a family of increasing scalar bijections :math:`v = \\tau(u;\\theta)`
applied to every feature, with its parameters :math:`\\theta` supplied from outside. Coupling
layers, autoregressive layers and the plain :class:`Elementwise` bijection all share these
maps, so each map (affine, additive, spline, ...) is written once.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..checks import check_real
from ..nn import MLP
from .base import Bijection

__all__ = [
    "AdditiveMap",
    "AffineMap",
    "Elementwise",
    "ElementwiseAffine",
    "ElementwiseMap",
    "InverseMap",
    "broadcast_params",
    "initial_tensor",
    "register_values",
    "soft_clamp",
]


def initial_tensor(value: object, default: Tensor) -> Tensor:
    """A detached copy of ``value`` as a tensor, or ``default`` when ``value`` is None (so
    that a layer never aliases the tensor its caller initialised it from)."""
    return default if value is None else torch.as_tensor(value).detach().clone()


def register_values(module: nn.Module, trainable: bool, **values: Tensor) -> None:
    """Store each of ``values`` on ``module`` in the default dtype (modules are created in it,
    like torch.nn layers; ``.to`` moves them): as a parameter when ``trainable``, else as a
    buffer, which is still saved in ``state_dict`` and moved by ``.to``."""
    for name, value in values.items():
        value = value.to(torch.get_default_dtype())
        if trainable:
            setattr(module, name, nn.Parameter(value))
        else:
            module.register_buffer(name, value)


def soft_clamp(x: Tensor, bound: float) -> Tensor:
    r""":math:`b \tanh(x / b)`: the identity near 0, always inside :math:`(-b, b)`; how every
    bounded log-scale and log-slope is parametrised. Written as :math:`b(2\sigma(2x/b) - 1)`,
    the same function, several times cheaper than ``tanh`` on CPU.

    Example:
        >>> soft_clamp(torch.tensor([0.0, 0.1, 100.0]), 3.0)
        tensor([0.0000, 0.1000, 3.0000])
    """
    return bound * (2 * torch.sigmoid(x * (2 / bound)) - 1)


def broadcast_params(u: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
    """Broadcast ``u`` (..., n) against ``params`` (..., n, p) over their batch dims."""
    shape = torch.broadcast_shapes(u.shape, params.shape[:-1])
    return u.expand(shape), params.expand(*shape, params.shape[-1])


class ElementwiseMap(nn.Module):
    """Base class: an increasing scalar bijection with externally supplied parameters.

    Subclasses set :attr:`num_params` and implement ``forward(u, params)`` and
    ``inverse(v, params)``, each returning the output and the *elementwise* log-derivative
    (same shape as the output). ``params`` has shape ``(..., n, num_params)`` for ``u`` of
    shape ``(..., n)``; all-zero parameters give the identity map.
    """

    num_params: int = 0

    def forward(self, u: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        raise NotImplementedError

    def inverse(self, v: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        raise NotImplementedError


class AdditiveMap(ElementwiseMap):
    r"""Shift only, :math:`v = u + t` (NICE, Dinh et al. 2014, https://arxiv.org/abs/1410.8516): volume preserving."""

    exact_inverse = True  # closed-form inverse: reversible stacks accept it

    num_params = 1

    def forward(self, u: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        v = u + params[..., 0]
        return v, torch.zeros_like(v)

    def inverse(self, v: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        u = v - params[..., 0]
        return u, torch.zeros_like(u)


class AffineMap(ElementwiseMap):
    r"""Affine map :math:`v = u\,e^{s} + t` with a soft-clamped log-scale.

    :math:`s = b \tanh(\tilde s / b)` keeps every layer's scale within :math:`[e^{-b}, e^{b}]`,
    which prevents the exploding scales that make affine flows diverge (RealNVP, Dinh et al.
    2017; MAF, Papamakarios et al. 2017, https://arxiv.org/abs/1705.07057) while staying smooth.

    Args:
        log_scale_bound: the bound :math:`b` on the log-scale.
    """

    exact_inverse = True  # closed-form inverse: reversible stacks accept it

    num_params = 2

    def __init__(self, log_scale_bound: float = 3.0) -> None:
        super().__init__()
        self.log_scale_bound = check_real("log_scale_bound", log_scale_bound)

    def _shift_log_scale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        return params[..., 0], soft_clamp(params[..., 1], self.log_scale_bound)

    def forward(self, u: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_log_scale(params)
        v = u * log_scale.exp() + shift
        return v, log_scale.expand_as(v)

    def inverse(self, v: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._shift_log_scale(params)
        u = (v - shift) * torch.exp(-log_scale)
        return u, (-log_scale).expand_as(u)

    def extra_repr(self) -> str:
        return f"log_scale_bound={self.log_scale_bound}"


class InverseMap(ElementwiseMap):
    r"""The inverse :math:`\tau^{-1}` of an :class:`ElementwiseMap` :math:`\tau`, as a map.

    Autoregressive layers evaluate :math:`\tau^{-1}` in their density direction, in one pass;
    wrapping a transformer whose explicit direction is the data-to-noise map of its paper
    (UMNN's integral, NAF's sigmoidal flow) makes that direction the fast one:
    ``MaskedAutoregressive(d, InverseMap(UMNNMap()))`` computes densities with the exact
    integral in one MADE pass and samples with the numerical inverse; and
    ``Inverse(MaskedAutoregressive(d, InverseMap(m)))`` is the inverse-autoregressive layer
    :math:`x_i = \tau(z_i; \theta_i(z_{<i}))` with ``m``'s explicit direction for sampling.
    """

    def __init__(self, map: ElementwiseMap) -> None:
        super().__init__()
        self.map = map
        self.num_params = map.num_params

    def forward(self, u: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self.map.inverse(u, params)

    def inverse(self, v: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        return self.map.forward(v, params)

    @property
    def exact_inverse(self) -> bool:
        """Whether both directions are closed-form: those of the wrapped map."""
        return bool(getattr(self.map, "exact_inverse", False))


class Elementwise(Bijection):
    r"""Apply an :class:`ElementwiseMap` to every feature with free (or context-given) parameters.

    Unconditional: the parameters are a learnable ``(features, num_params)`` tensor.
    Conditional: an :class:`~pyroflows.nn.MLP` maps the context to them, which gives, e.g., a
    context-dependent elementwise spline (Pyro's ``ConditionalSpline``).

    .. math:: x_i = \tau(z_i; \theta_i(c)), \qquad \log|\det J| = \sum_i \log \tau'(z_i).

    Example:
        >>> from pyroflows.transforms import SplineMap
        >>> t = Elementwise(SplineMap(bins=8), features=3)
        >>> t(torch.randn(5, 3)).shape
        torch.Size([5, 3])
    """

    def __init__(
        self,
        map: ElementwiseMap,
        features: int,
        context: int = 0,
        hidden: tuple[int, ...] = (64, 64),
        activation: str = "relu",
    ) -> None:
        super().__init__(features, context)
        self.map = map
        if context:
            self.conditioner = MLP(
                context, features * map.num_params, hidden, activation=activation
            )
        else:
            self.params = nn.Parameter(torch.zeros(features, map.num_params))

    def conditioner_params(self, context: Tensor | None) -> Tensor:
        """The map's raw parameters, ``(features, num_params)`` (or ``(..., features,
        num_params)`` from a context's conditioner)."""
        if self.context_features:
            return self.conditioner(context).unflatten(-1, (self.features, self.map.num_params))
        return self.params

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x, ladj = self.map(*broadcast_params(z, self.conditioner_params(context)))
        return x, ladj.sum(-1)

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z, ladj = self.map.inverse(*broadcast_params(x, self.conditioner_params(context)))
        return z, ladj.sum(-1)


class ElementwiseAffine(Bijection):
    r"""Diagonal affine map :math:`x = \mu + \sigma \odot z`, learnable or fixed.

    NICE's final scaling layer (Dinh et al. 2014), the standardisation layer of a flow fitted
    to raw data (``ElementwiseAffine.from_data(x, trainable=False)``), and the affine
    initialisation of autoguides all use it.

    Args:
        features: event size.
        loc: initial :math:`\mu` (default 0).
        scale: initial :math:`\sigma > 0` (default 1).
        trainable: learn :math:`\mu` and :math:`\log\sigma` (parameters) or keep them fixed
            (buffers, still saved in ``state_dict`` and moved by ``.to``).

    Example:
        >>> t = ElementwiseAffine(2, loc=torch.tensor([1.0, -1.0]), scale=torch.tensor([2.0, 0.5]))
        >>> t(torch.zeros(1, 2))
        tensor([[ 1., -1.]], grad_fn=<AddBackward0>)
    """

    exact_inverse = True  # closed-form inverse: reversible stacks accept it

    def __init__(
        self,
        features: int,
        loc: Tensor | None = None,
        scale: Tensor | None = None,
        trainable: bool = True,
    ) -> None:
        super().__init__(features)
        loc = initial_tensor(loc, torch.zeros(features))
        scale = initial_tensor(scale, torch.ones(features))
        if loc.shape != (features,) or scale.shape != (features,):
            raise ValueError(f"loc and scale must have shape ({features},)")
        if not (torch.isfinite(loc).all() and torch.isfinite(scale).all() and (scale > 0).all()):
            raise ValueError("loc must be finite and scale finite and positive")
        register_values(self, trainable, loc=loc, log_scale=scale.log())

    @classmethod
    def from_data(cls, x: Tensor, trainable: bool = False, eps: float = 1e-12) -> ElementwiseAffine:
        """Standardisation layer whose inverse maps ``x`` to zero mean and unit variance."""
        x = torch.as_tensor(x)
        if x.dim() != 2 or x.shape[0] < 2:
            raise ValueError(f"from_data needs a (n >= 2, features) array, got {tuple(x.shape)}")
        if not torch.isfinite(x).all():
            raise ValueError("from_data got NaN or infinite values")
        std = x.std(0)
        constant = (std <= eps * x.abs().amax(0).clamp_min(1.0)).nonzero().flatten().tolist()
        if constant:
            raise ValueError(f"columns {constant} are constant: a density over them is degenerate")
        return cls(x.shape[1], x.mean(0), std, trainable)

    def call_and_ladj(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = self.loc + self.log_scale.exp() * z
        return x, self.log_scale.sum().expand(x.shape[:-1])

    def inverse_and_ladj(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        z = (x - self.loc) * torch.exp(-self.log_scale)
        return z, (-self.log_scale.sum()).expand(z.shape[:-1])
