r"""Autoregressive density models as Pyro distributions: the shared machinery.

An autoregressive model factorises a density along an ordering :math:`\pi` of the features,

.. math:: \log p(x \mid c) = \sum_{t=1}^{d} \log p\big(x_{\pi_t} \mid x_{\pi_{<t}}, c\big),

with each one-dimensional conditional a simple family (:class:`Gaussian`,
:class:`MixtureOfGaussians`, :class:`Bernoulli`) whose parameters a network computes from the
features before it. A model (:class:`AutoregressiveModel`, an ``nn.Module``) is called like a
:class:`~pyroflows.Flow`: ``model(context)`` returns an :class:`AutoregressiveDistribution`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions import constraints

from ..checks import (
    check_batch,
    check_context,
    check_count,
    check_features,
    check_not_nan,
    check_real,
    validates,
)
from ..nn import check_order
from ..transforms.elementwise import soft_clamp

__all__ = [
    "AutoregressiveDistribution",
    "AutoregressiveModel",
    "Bernoulli",
    "Conditional",
    "DensityBase",
    "Gaussian",
    "MixtureOfGaussians",
    "make_orders",
]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def make_orders(
    features: int, order: str | Sequence, orderings: int = 1, seed: int = 0
) -> list[Tensor]:
    """Orderings as permutations (``order[i]`` is the position of feature ``i``).

    Args:
        features: number of features :math:`d`.
        order: ``"natural"``, ``"reversed"``, ``"random"`` (seeded), one permutation of
            ``range(d)`` or a list of them.
        orderings: how many distinct random orderings to draw for ``"random"`` (must be 1
            otherwise).
        seed: seed of the random orderings.

    Raises ValueError for an unknown name or a list that is not a permutation.
    """
    check_count("orderings", orderings)
    if isinstance(order, str):
        if order == "random":
            if orderings > math.factorial(min(features, 20)):
                raise ValueError(
                    f"{features} features have only {math.factorial(features)} "
                    f"orderings; got orderings={orderings}"
                )
            generator = torch.Generator().manual_seed(seed)
            drawn: dict[tuple[int, ...], Tensor] = {}
            while len(drawn) < orderings:  # distinct orderings
                perm = torch.randperm(features, generator=generator, device="cpu")
                drawn.setdefault(tuple(perm.tolist()), perm)
            return list(drawn.values())
        if orderings != 1:
            raise ValueError(
                f"orderings={orderings} needs order='random' or a list of permutations"
            )
        if order == "natural":
            return [torch.arange(features)]
        if order == "reversed":
            return [torch.arange(features).flip(0)]
        raise ValueError(
            f"order must be 'natural', 'reversed', 'random' or a permutation, got {order!r}"
        )
    if orderings != 1:
        raise ValueError(f"orderings={orderings} needs order='random' or a list of permutations")
    if isinstance(order, Tensor):
        items = list(order) if order.dim() == 2 else [order]
    else:
        order = list(order)
        items = order if any(isinstance(o, (Sequence, Tensor)) for o in order) else [order]
    return [check_order(item, features) for item in items]


class Conditional(nn.Module):
    """A one-dimensional conditional family with ``num_params`` parameters per feature.

    Subclasses implement ``log_prob(params, x)`` (params (..., P), x (...) -> (...)) and
    ``sample(params)`` ((..., P) -> (...)), and may override :meth:`check` and :meth:`init_bias`.
    """

    num_params: int = 0
    support: constraints.Constraint = constraints.real
    #: whether :meth:`sample` is differentiable in the parameters.
    has_rsample: bool = True

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """:math:`\\log q(x; \\theta)` elementwise: params (..., P), x (...) -> (...)."""
        raise NotImplementedError

    def sample(self, params: Tensor) -> Tensor:
        """One draw per parameter row: (..., P) -> (...)."""
        raise NotImplementedError

    def check(self, x: Tensor) -> None:
        """Raise ValueError when ``x`` is outside the family's support (default: no check)."""

    def init_bias(self) -> Tensor:
        """Initial output bias of one feature (zeros by default), shape ``(num_params,)``."""
        return torch.zeros(self.num_params)


class Gaussian(Conditional):
    r""":math:`\mathcal N(\mu, \sigma^2)` with parameters :math:`(\mu, \tilde s)` and
    :math:`\log\sigma = b\tanh(\tilde s / b)` (soft-clamped, :math:`b` = ``log_scale_bound``).
    Sampling is reparametrised: :math:`x = \mu + \sigma\varepsilon`."""

    num_params = 2

    def __init__(self, log_scale_bound: float = 7.0) -> None:
        super().__init__()
        self.log_scale_bound = check_real("log_scale_bound", log_scale_bound)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        mu, log_sigma = params[..., 0], soft_clamp(params[..., 1], self.log_scale_bound)
        return -0.5 * ((x - mu) * torch.exp(-log_sigma)).square() - log_sigma - _HALF_LOG_2PI

    def sample(self, params: Tensor) -> Tensor:
        mu, log_sigma = params[..., 0], soft_clamp(params[..., 1], self.log_scale_bound)
        return mu + log_sigma.exp() * torch.randn_like(mu)


class MixtureOfGaussians(Conditional):
    r"""A :math:`K`-component mixture :math:`\sum_k \alpha_k \mathcal N(\mu_k, \sigma_k^2)`
    with parameters ``[logits (K), means (K), raw log-scales (K)]`` (MADE MoG, Papamakarios
    et al. 2017; RNADE, Uria et al. 2013, https://arxiv.org/abs/1306.0186).

    Sampling draws the component by the Gumbel-max trick and is **implicitly reparametrised**
    (Figurnov, Mohamed & Mnih, NeurIPS 2018, https://arxiv.org/abs/1805.08498): with :math:`F` the conditional's CDF, the sample
    :math:`x` solves :math:`F(x; \theta) = u` for a fixed :math:`u`, so
    :math:`\partial x / \partial\theta = -(\partial F / \partial\theta) / p(x; \theta)`, which
    the returned tensor carries (its value is the exact sample).

    Args:
        components: :math:`K`.
        log_scale_bound: soft bound on each :math:`|\log\sigma_k|`.
        spread: the initial means (through the output bias) are ``linspace(-spread, spread, K)``,
            which breaks the symmetry between components.
    """

    def __init__(
        self, components: int = 10, log_scale_bound: float = 7.0, spread: float = 1.0
    ) -> None:
        super().__init__()
        self.components = check_count("components", components)
        self.num_params = 3 * components
        self.log_scale_bound = check_real("log_scale_bound", log_scale_bound)
        self.spread = float(spread)

    def init_bias(self) -> Tensor:
        bias = torch.zeros(3, self.components)
        if self.components > 1:
            bias[1] = torch.linspace(-self.spread, self.spread, self.components)
        return bias.reshape(-1)

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        logits, mu, raw = params.unflatten(-1, (3, self.components)).unbind(-2)
        return torch.log_softmax(logits, -1), mu, soft_clamp(raw, self.log_scale_bound)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        log_w, mu, log_sigma = self._split(params)
        z = (x.unsqueeze(-1) - mu) * torch.exp(-log_sigma)
        return torch.logsumexp(log_w - 0.5 * z.square() - log_sigma - _HALF_LOG_2PI, -1)

    def sample(self, params: Tensor) -> Tensor:
        log_w, mu, log_sigma = self._split(params)
        gumbel = -torch.log(
            -torch.log(torch.rand_like(log_w).clamp_min(torch.finfo(log_w.dtype).tiny))
        )
        pick = (log_w + gumbel).argmax(-1, keepdim=True)
        mu_k, sigma_k = mu.gather(-1, pick)[..., 0], log_sigma.gather(-1, pick)[..., 0].exp()
        x0 = (mu_k + sigma_k * torch.randn_like(mu_k)).detach()
        # Implicit reparametrisation: value x0, gradient -dF/dtheta / p(x0).
        cdf = (
            log_w.exp() * torch.special.ndtr((x0.unsqueeze(-1) - mu) * torch.exp(-log_sigma))
        ).sum(-1)
        density = self.log_prob(params, x0).exp().detach()
        return x0 - (cdf - cdf.detach()) / density

    def extra_repr(self) -> str:
        return f"components={self.components}"


class Bernoulli(Conditional):
    r""":math:`\mathrm{Bernoulli}(\sigma(\ell))` with one parameter, the logit :math:`\ell`:
    :math:`\log p(x) = x\ell - \log(1 + e^{\ell})` for :math:`x \in \{0, 1\}`."""

    num_params = 1
    support = constraints.boolean
    has_rsample = False

    def check(self, x: Tensor) -> None:
        if torch.compiler.is_compiling():
            return
        bad = (x != 0) & (x != 1)
        if bad.any():
            raise ValueError(
                "a Bernoulli model takes binary data (0 or 1), but the value holds "
                f"{int(bad.sum())} other entries, e.g. {float(x[bad][0])}; binarize the data, or use a "
                "model for real data ('rnade', 'made', 'made-mog')"
            )

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        logit = params[..., 0]
        return x * logit - nn.functional.softplus(logit)

    def sample(self, params: Tensor) -> Tensor:
        p = torch.sigmoid(params[..., 0])
        return (torch.rand_like(p) < p).to(p.dtype)


class AutoregressiveModel(nn.Module):
    """Base class of the density models: ``model(context)`` is a Pyro distribution.

    Subclasses set ``features``, ``context_features``, ``conditional`` (a :class:`Conditional`)
    and implement ``_log_prob(x, context)`` ((..., d) -> (...)), ``_sample(shape, context)``
    (one draw of full ``shape``, d network passes) and ``conditional_params(x, context)``
    ((..., d) -> (..., d, P), each feature's parameters, feature order).
    """

    features: int
    context_features: int
    conditional: Conditional

    @property
    def event_shape(self) -> torch.Size:
        """``(features,)``, as the :class:`~pyroflows.protocol.DensityModel` protocol asks."""
        return torch.Size((self.features,))

    def forward(self, context: Tensor | None = None) -> AutoregressiveDistribution:
        """The distribution :math:`p(x \\mid c)`; batch shape ``context.shape[:-1]`` (``()``
        without context), event shape ``(features,)``. ValueError for a missing, unexpected or
        mis-shaped context."""
        check_context(context, self.context_features)
        batch_shape = torch.Size() if context is None else context.shape[:-1]
        return AutoregressiveDistribution(self, context, batch_shape)

    def _reference(self) -> Tensor:
        return next(self.parameters())

    def extra_repr(self) -> str:
        text = f"features={self.features}"
        if self.context_features:
            text += f", context={self.context_features}"
        return text


class AutoregressiveDistribution(dist.TorchDistribution):
    r"""The Pyro distribution of an :class:`AutoregressiveModel` for one context (batch).

    ``log_prob`` is exact and takes one network pass per ordering; ``sample`` draws feature by
    feature (``features`` passes). ``rsample`` is available when the conditionals are
    reparametrisable (Gaussian, mixture of Gaussians), not for Bernoulli models.

    Shapes: ``log_prob`` maps (..., d) to (...) broadcast with the batch shape;
    ``sample(sample_shape)`` is ``sample_shape + batch_shape + (d,)``.
    """

    arg_constraints: dict = {}

    def __init__(
        self, model: AutoregressiveModel, context: Tensor | None, batch_shape: torch.Size
    ) -> None:
        self.model = model
        self.context = context
        super().__init__(torch.Size(batch_shape), torch.Size([model.features]), validate_args=False)

    @property
    def support(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(self.model.conditional.support, 1)

    @property
    def has_rsample(self) -> bool:  # type: ignore[override]
        return self.model.conditional.has_rsample

    def log_prob(self, value: Tensor) -> Tensor:
        check_features(value, self.model.features, "value")
        discrete = self.model.conditional.support.is_discrete
        if value.is_complex() or not (value.is_floating_point() or discrete):
            raise TypeError(
                f"value has dtype {value.dtype}; this model takes real floating-point values"
            )
        check_batch(value.shape[:-1], self.batch_shape, "value")
        if validates(None):  # check_not_nan itself skips while compiling
            check_not_nan(value, "value")
        self.model.conditional.check(value)
        if not discrete:
            # An infinite entry: the density vanishes there (-inf), evaluated at a finite
            # stand-in (static shapes; the networks would give NaN at inf).
            infinite = torch.isinf(value)
            at_infinity = infinite.any(-1)
            value = torch.where(infinite, torch.zeros_like(value), value)
        log_prob = self.model._log_prob(value, self.context)
        if not discrete:
            log_prob = torch.where(at_infinity, torch.full_like(log_prob, -torch.inf), log_prob)
        if len(self.batch_shape):
            log_prob = log_prob.expand(torch.broadcast_shapes(log_prob.shape, self.batch_shape))
        return log_prob

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        if not self.has_rsample:
            raise NotImplementedError(
                f"{type(self.model).__name__} with {type(self.model.conditional).__name__} "
                "conditionals has no reparametrised sampler; use sample()"
            )
        return self.model._sample(self._extended_shape(sample_shape), self.context)

    def rsample_and_log_prob(
        self, sample_shape: torch.Size = torch.Size()
    ) -> tuple[Tensor, Tensor]:
        """:meth:`rsample` and the samples' ``log_prob`` (the DensityModel protocol)."""
        x = self.rsample(sample_shape)
        return x, self.log_prob(x)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.model._sample(self._extended_shape(sample_shape), self.context)

    def expand(self, batch_shape, _instance=None) -> AutoregressiveDistribution:  # noqa: ANN001
        batch_shape = torch.Size(batch_shape)
        context = self.context
        if context is not None:
            context = context.expand(batch_shape + context.shape[-1:])
        return AutoregressiveDistribution(self.model, context, batch_shape)


class DensityBase(nn.Module):
    """An unconditional density model used as a :class:`~pyroflows.Flow` base:
    ``base(batch_shape)`` returns ``model().expand(batch_shape)``.

    Example:
        >>> from pyroflows.density import build
        >>> base = DensityBase(build("made-mog", 2, components=3, hidden=(8,)))
        >>> base(torch.Size([4])).sample().shape
        torch.Size([4, 2])
    """

    def __init__(self, model: AutoregressiveModel) -> None:
        super().__init__()
        if not isinstance(model, AutoregressiveModel):
            raise TypeError(
                f"DensityBase takes an autoregressive density model, got {type(model).__name__}"
            )
        if model.context_features:
            raise ValueError(
                "a flow's base takes no context: build the density model with context=0"
            )
        self.model = model
        self.features = model.features

    def forward(self, batch_shape: torch.Size = torch.Size()) -> AutoregressiveDistribution:
        distribution = self.model()
        return distribution.expand(batch_shape) if len(batch_shape) else distribution
