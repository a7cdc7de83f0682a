"""Posterior summaries of the flow autoguides over a latent vector, as Pyro's autoguides give
them: samples of every latent site, and their marginal medians and quantiles (Monte Carlo)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..model_density import LatentLayout

__all__ = ["PosteriorSummaries"]


class PosteriorSummaries:
    """Mixin of :class:`~pyroflows.infer.AutoFlow` and its subclasses: summaries of the guide's
    posterior, from draws of its latent vector (``_sample_latent_batch``) unpacked by its
    ``_layout``."""

    _layout: LatentLayout
    setup: Callable[..., Any]
    _sample_latent_batch: Callable[[int], Tensor]

    @torch.no_grad()
    def sample_posterior(
        self, num_samples: int = 1000, *args: Any, **kwargs: Any
    ) -> dict[str, Tensor]:
        """Draw ``num_samples`` posterior samples of every latent site, in the constrained space.

        Returns a dict ``name -> tensor (num_samples, *site shape)``.
        """
        self.setup(*args, **kwargs)
        return self._layout.unpack_batch(self._sample_latent_batch(num_samples))

    @torch.no_grad()
    def median(self, *args: Any, num_samples: int = 4000, **kwargs: Any) -> dict[str, Tensor]:
        """Posterior marginal medians of every latent site (Monte Carlo, ``num_samples`` draws)."""
        return {
            k: v[0]
            for k, v in self.quantiles([0.5], *args, num_samples=num_samples, **kwargs).items()
        }

    @torch.no_grad()
    def quantiles(
        self, quantiles: Any, *args: Any, num_samples: int = 4000, **kwargs: Any
    ) -> dict[str, Tensor]:
        """Posterior marginal quantiles of every latent site (Monte Carlo).

        Returns a dict ``name -> tensor (len(quantiles), *site shape)``, as Pyro's autoguides.
        """
        samples = self.sample_posterior(num_samples, *args, **kwargs)
        out = {}
        for name, value in samples.items():
            q = torch.as_tensor(quantiles, dtype=value.dtype, device=value.device)
            out[name] = torch.quantile(value, q, dim=0)
        return out
