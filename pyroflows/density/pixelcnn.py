r"""PixelCNN density model for images (van den Oord, Kalchbrenner & Kavukcuoglu, "Pixel
Recurrent Neural Networks", ICML 2016; discretised logistic mixture from Salimans, Karpathy,
Chen & Kingma, "PixelCNN++", ICLR 2017, https://arxiv.org/abs/1701.05517).

.. math::
    \log p(x \mid c) = \sum_{i,j,k} \log p\big(x_{k,i,j} \mid \theta_{k,i,j}(x_{:,<(i,j)},
    x_{<k,i,j}, c)\big),

with all :math:`\theta` computed by one masked-convolution pass
(:class:`~pyroflows.nn.PixelCNNConditioner`); sampling fills the image pixel by pixel and, within
a pixel, channel by channel (:math:`C H W` passes).
"""

from __future__ import annotations

import math
from typing import Any

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import constraints

from ..checks import check_choice, check_count, validates
from ..nn.masked_conv import PixelCNNConditioner
from ..nn.options import passes_keywords_to
from ..transforms.conventions import check_image_shape
from .registry import register

__all__ = ["LIKELIHOODS", "PixelCNN", "PixelCNNDistribution", "pixelcnn"]

#: Pixel conditionals: binary images, categorical over ``levels`` values, or a discretised
#: mixture of logistics over ``levels`` values.
LIKELIHOODS = ("bernoulli", "categorical", "logistic")


def _log1mexp(x: Tensor) -> Tensor:
    """:math:`\\log(1 - e^{-x})` for :math:`x > 0`, accurate for small and large ``x``."""
    # Both branches are evaluated by torch.where, so each gets an argument that is safe for it
    # (an unsafe unused branch would still send inf * 0 = NaN into the gradient).
    small = x < math.log(2)
    x_small = torch.where(small, x, torch.ones_like(x))
    x_large = torch.where(small, torch.ones_like(x), x)
    return torch.where(small, torch.log(-torch.expm1(-x_small)), torch.log1p(-torch.exp(-x_large)))


@passes_keywords_to(
    PixelCNNConditioner, "hidden", "blocks", "kernel_size", "first_kernel_size", "activation"
)
class PixelCNN(nn.Module):
    r"""A small PixelCNN density model :math:`p(x \mid c)` over images of a fixed shape.

    Calling the model, ``model(context)``, returns a :class:`PixelCNNDistribution`, a Pyro
    distribution with event shape ``(C, H, W)`` and batch shape ``context.shape[:-1]``.

    Pixel conditionals (``likelihood``):

    * ``"bernoulli"``: binary images, values 0/1, one logit per value.
    * ``"categorical"``: values :math:`0, \dots, L-1` (``levels``), :math:`L` logits per value.
    * ``"logistic"``: values :math:`0, \dots, L-1` rescaled to :math:`y_k = 2k/(L-1) - 1`,
      each value's mass is that of the bin :math:`[y_k - \delta, y_k + \delta]`,
      :math:`\delta = 1/(L-1)`, under a mixture of ``mixtures`` logistics (edge bins extend to
      :math:`\pm\infty`), as in PixelCNN++: :math:`3K` numbers per value.

    Args:
        shape: image shape ``(C, H, W)`` (``(1, 28, 28)`` for MNIST).
        likelihood: one of :data:`LIKELIHOODS`.
        levels: number of discrete values per channel for ``categorical``/``logistic``.
        mixtures: logistic components :math:`K` for ``logistic``.
        context: size of an optional conditioning vector (class label embedding, ...).
        network: the options of the :class:`~pyroflows.nn.PixelCNNConditioner` (``hidden``,
            ``blocks``, ``kernel_size``, ``first_kernel_size``, ``activation``).

    Example:
        >>> model = PixelCNN((1, 4, 4), "bernoulli", hidden=8, blocks=1)
        >>> x = model().sample((2,))
        >>> x.shape, model().log_prob(x).shape
        (torch.Size([2, 1, 4, 4]), torch.Size([2]))
    """

    def __init__(
        self,
        shape: tuple[int, int, int] = (1, 28, 28),
        likelihood: str = "bernoulli",
        levels: int = 256,
        mixtures: int = 5,
        *,
        context: int = 0,
        **network: Any,
    ) -> None:
        super().__init__()
        shape = check_image_shape(shape)
        check_choice("likelihood", likelihood, LIKELIHOODS)
        check_count("levels", levels, 2)
        check_count("mixtures", mixtures, 1)
        self.shape = shape
        self.event_shape = torch.Size(shape)  # the DensityModel protocol
        self.likelihood = likelihood
        self.levels = 2 if likelihood == "bernoulli" else levels
        self.mixtures = mixtures
        self.context_features = context
        params = {"bernoulli": 1, "categorical": levels, "logistic": 3 * mixtures}[likelihood]
        self.net = PixelCNNConditioner(shape[0], params, context=context, **network)

    def forward(self, context: Tensor | None = None) -> PixelCNNDistribution:
        """The distribution :math:`p(x \\mid c)`; batch shape ``context.shape[:-1]``."""
        if self.context_features == 0 and context is not None:
            raise ValueError("this PixelCNN takes no context (it was built with context=0)")
        if self.context_features and (
            context is None or context.dim() == 0 or context.shape[-1] != self.context_features
        ):
            got = None if context is None else tuple(context.shape)
            raise ValueError(
                f"this PixelCNN needs a context (..., {self.context_features}), got {got}"
            )
        batch_shape = torch.Size() if context is None else context.shape[:-1]
        return PixelCNNDistribution(self, context, batch_shape)

    # -- per-value conditionals, shared by log_prob and sampling ----------------------------------

    def scale_input(self, x: Tensor) -> Tensor:
        """Values 0..L-1 (or 0/1) to the network's input range [-1, 1]."""
        return x * (2.0 / (self.levels - 1)) - 1.0

    def value_log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """Log-mass of each value ``x`` (...) given its parameters ``params`` (..., P)."""
        if self.likelihood == "bernoulli":
            return -F.binary_cross_entropy_with_logits(params[..., 0], x, reduction="none")
        if self.likelihood == "categorical":
            log_p = params.log_softmax(-1)
            return log_p.gather(-1, x.long().unsqueeze(-1)).squeeze(-1)
        logits, mu, log_s = params.unflatten(-1, (3, self.mixtures)).unbind(-2)
        inv_s = torch.exp(-log_s.clamp_min(-7.0))
        y = self.scale_input(x).unsqueeze(-1)
        delta = 1.0 / (self.levels - 1)
        upper, lower = (y + delta - mu) * inv_s, (y - delta - mu) * inv_s
        interior = F.logsigmoid(upper) + F.logsigmoid(-lower) + _log1mexp(upper - lower)
        k = x.unsqueeze(-1)
        log_mass = torch.where(
            k <= 0,
            F.logsigmoid(upper),
            torch.where(k >= self.levels - 1, F.logsigmoid(-lower), interior),
        )
        return torch.logsumexp(logits.log_softmax(-1) + log_mass, -1)

    def sample_values(self, params: Tensor) -> Tensor:
        """Draw one value per parameter vector ``params`` (..., P)."""
        if self.likelihood == "bernoulli":
            return torch.bernoulli(torch.sigmoid(params[..., 0]))
        if self.likelihood == "categorical":
            return torch.distributions.Categorical(logits=params).sample().to(params.dtype)
        logits, mu, log_s = params.unflatten(-1, (3, self.mixtures)).unbind(-2)
        k = torch.distributions.Categorical(logits=logits).sample().unsqueeze(-1)
        mu, s = mu.gather(-1, k).squeeze(-1), log_s.clamp_min(-7.0).gather(-1, k).squeeze(-1).exp()
        u = torch.rand_like(mu).clamp(1e-12, 1 - 1e-12)
        y = mu + s * (torch.log(u) - torch.log1p(-u))
        # "+ 0.0" turns the -0.0 that rounding a small negative number gives into 0.0.
        return torch.round((y + 1) * ((self.levels - 1) / 2)).clamp(0, self.levels - 1) + 0.0

    def extra_repr(self) -> str:
        text = f"shape={self.shape}, likelihood={self.likelihood!r}"
        if self.likelihood != "bernoulli":
            text += f", levels={self.levels}"
        if self.likelihood == "logistic":
            text += f", mixtures={self.mixtures}"
        return text + (f", context={self.context_features}" if self.context_features else "")


class PixelCNNDistribution(dist.TorchDistribution):
    r"""The distribution of a :class:`PixelCNN` for one (batch of) context(s).

    ``log_prob(x)`` takes images (..., C, H, W) holding 0/1 (Bernoulli) or integers
    :math:`0..L-1` (any dtype) and returns (...) broadcast with the batch shape, from a single
    network pass. ``sample(shape)`` returns floating images ``shape + batch_shape + (C, H, W)``
    holding the same values, generated in raster order, channel by channel.

    Not reparametrisable (discrete values): ``has_rsample`` is False.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(
        self,
        model: PixelCNN,
        context: Tensor | None,
        batch_shape: torch.Size = torch.Size(),
        validate_args: bool | None = None,
    ) -> None:
        self.model = model
        self.context = context
        super().__init__(
            torch.Size(batch_shape), torch.Size(model.shape), validate_args=validate_args
        )
        # Pyro's switch, not torch's default (which the first torch.compile turns off).
        self.validates = validates(validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=3)
    def support(self) -> constraints.Constraint:
        if self.model.likelihood == "bernoulli":
            return constraints.independent(constraints.boolean, 3)
        return constraints.independent(constraints.integer_interval(0, self.model.levels - 1), 3)

    def _check(self, value: Tensor) -> None:
        if not isinstance(value, Tensor):
            raise TypeError(f"value must be a torch.Tensor, got {type(value).__name__}")
        if value.dim() < 3 or value.shape[-3:] != self.event_shape:
            raise ValueError(
                f"expected images of shape (..., C, H, W) = (..., {', '.join(map(str, self.model.shape))}), "
                f"got {tuple(value.shape)}"
            )
        if (
            self.validates
            and not torch.compiler.is_compiling()
            and not bool(self.support.check(value).all())
        ):
            allowed = (
                "0 or 1"
                if self.model.likelihood == "bernoulli"
                else f"integers 0..{self.model.levels - 1}"
            )
            raise ValueError(f"image values must be {allowed}")

    def pixel_params(self, x: Tensor) -> Tensor:
        """The network's per-pixel distribution parameters for images ``x`` (masked: each
        pixel's depend only on the pixels before it)."""
        dtype = next(self.model.parameters()).dtype
        return self.model.net(self.model.scale_input(x.to(dtype)), self.context)

    def pixel_log_prob(self, value: Tensor) -> Tensor:
        """Per-value log conditionals :math:`\\log p(x_{k,i,j} \\mid \\dots)`, shape (..., C, H, W)."""
        self._check(value)
        params = self.pixel_params(value)
        x = value.to(params.dtype).expand(params.shape[:-1])
        return self.model.value_log_prob(params, x)

    def log_prob(self, value: Tensor) -> Tensor:
        log_p = self.pixel_log_prob(value).sum((-3, -2, -1))
        return log_p.expand(torch.broadcast_shapes(log_p.shape, self.batch_shape))

    @torch.no_grad()
    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        param = next(self.model.parameters())
        x = torch.zeros(
            self._extended_shape(torch.Size(sample_shape)), dtype=param.dtype, device=param.device
        )
        C, H, W = self.model.shape
        for i in range(H):
            for j in range(W):
                for k in range(C):
                    params = self.pixel_params(x)[..., k, i, j, :]
                    x[..., k, i, j] = self.model.sample_values(params)
        return x

    def expand(self, batch_shape, _instance=None) -> PixelCNNDistribution:  # noqa: ANN001
        batch_shape = torch.Size(batch_shape)
        context = self.context
        if context is not None:
            context = context.expand(*batch_shape, context.shape[-1])
        return PixelCNNDistribution(self.model, context, batch_shape, self.validates)


@register("pixelcnn", event_dims=3)
def pixelcnn(shape: tuple[int, int, int], context: int = 0, **options: object) -> PixelCNN:
    """The registry entry of :class:`PixelCNN` (density family, image kind):
    ``pyroflows.density.build("pixelcnn", (C, H, W), context, **options)``; the options are
    :class:`PixelCNN`'s keywords (``likelihood``, ``levels``, ``hidden``, ...)."""
    return PixelCNN(shape, context=context, **options)  # type: ignore[arg-type]


pixelcnn.passes_options_to = PixelCNN  # type: ignore[attr-defined]  # its keywords are the options
