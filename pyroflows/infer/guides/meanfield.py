r"""``AutoMeanFieldFlow``: one flow per latent site, independent across sites.

.. math:: q(z) = \prod_{\text{sites } s} q_s(u_s), \qquad q_s = \text{a flow over site } s

Each site's unconstrained value (all its elements, plates included) gets its own flow and its
own auxiliary sample site, so the guide factorises over sites exactly, as the mean-field ELBO
(``TraceMeanField_ELBO``) assumes, while each factor can be as rich as any flow. The options,
the initialisation (the per-site blocks of the joint Laplace approximation) and the summaries
are those of :class:`~pyroflows.infer.AutoFlow`.
"""

from __future__ import annotations

from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions import constraints

from ...core import Flow
from .autoguide import AutoFlow
from .guide_distribution import GuideFlowDistribution

__all__ = ["AutoMeanFieldFlow", "BlockProduct"]


class BlockProduct(dist.TorchDistribution):
    r""":math:`q(u) = \prod_b q_b(u_{[b]})` over vectors (D,): independent distributions over
    consecutive blocks of coordinates (``slices``, covering ``0..D`` in order).

    Example:
        >>> q = BlockProduct([dist.Normal(0.0, 1.0).expand([2]).to_event(1),
        ...                   dist.Normal(0.0, 1.0).expand([1]).to_event(1)], [slice(0, 2), slice(2, 3)])
        >>> q.sample((5,)).shape, q.log_prob(torch.zeros(3)).shape
        (torch.Size([5, 3]), torch.Size([]))
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, parts: list[dist.TorchDistribution], slices: list[slice]) -> None:
        self.parts, self.slices = parts, list(slices)
        super().__init__(torch.Size(), torch.Size([self.slices[-1].stop]), validate_args=False)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return torch.cat([part.rsample(sample_shape) for part in self.parts], dim=-1)

    def log_prob(self, value: Tensor) -> Tensor:
        return sum(part.log_prob(value[..., s]) for part, s in zip(self.parts, self.slices))


class AutoMeanFieldFlow(AutoFlow):
    r"""Mean-field flow autoguide: an independent flow for each continuous latent site.

    Takes the same arguments as :class:`~pyroflows.infer.AutoFlow`; ``flow`` and
    ``**flow_options`` are applied to every site (a :class:`~pyroflows.Flow` object cannot be
    shared between sites, so pass a registry name or a factory ``features -> Flow``).

    Example:
        >>> def model():
        ...     pyro.sample("a", dist.Normal(0.0, 1.0))
        ...     pyro.sample("b", dist.LogNormal(0.0, 1.0).expand([3]).to_event(1))
        >>> guide = AutoMeanFieldFlow(model, transforms=1, hidden=(8, 8))
        >>> [f.features for f in guide.flows]
        [1, 3]
    """

    def _build_flows(self, loc: Tensor) -> None:
        if isinstance(self._flow_spec_box[0], Flow):
            raise TypeError(
                "AutoMeanFieldFlow builds one flow per site: pass a registry name or "
                "a factory features -> Flow, not a single Flow"
            )
        self._site_names = []
        self._slices = []
        flows = []
        pos = 0
        for site in self._layout.sites:
            size = site["size"]
            flows.append(self._make_flow(size))
            self._site_names.append(site["name"])
            self._slices.append(slice(pos, pos + size))
            pos += size
        self.flows = nn.ModuleList(flows)

    def _flows_and_slices(self) -> list[tuple[Flow, slice]]:
        return list(zip(self._modules["flows"], self._slices))

    def get_posterior(self, *args: Any, **kwargs: Any) -> BlockProduct:
        """The product of the sites' flows as one distribution over the latent vector (D,),
        in the order of :class:`~pyroflows.infer.AutoFlow`'s (so importance and rejection
        sampling take this guide as a proposal); :meth:`site_posteriors` gives the factors."""
        self.setup(*args, **kwargs)
        return BlockProduct(list(self.site_posteriors().values()), self._slices)

    def site_posteriors(self) -> dict[str, GuideFlowDistribution]:
        """The flow distribution of each site's unconstrained (flattened) value."""
        return {
            name: self._flow_posterior(flow)
            for name, flow in zip(self._site_names, self._posterior_flows())
        }

    def _sample_latent(self, prefix: str | None) -> Tensor:
        """Sample every site's unconstrained value from its own flow (one auxiliary site each)
        and concatenate them, in the order of the model's sites."""
        parts = []
        for name, flow in zip(self._site_names, self._posterior_flows(prefix)):
            parts.append(
                pyro.sample(
                    f"_{prefix or type(self).__name__}_{name}_latent",
                    self._flow_posterior(flow),
                    infer={"is_auxiliary": True},
                )
            )
        shape = torch.broadcast_shapes(*(p.shape[:-1] for p in parts))
        return torch.cat([p.expand(shape + p.shape[-1:]) for p in parts], dim=-1)
