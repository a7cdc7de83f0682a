"""Matplotlib figures for flows and destructors: densities, samples, layer-by-layer pictures and
learning curves.

Every function takes an optional ``ax`` (or a sequence of axes) to draw into and returns the
Axes (one panel) or the Figure (several panels). Nothing here calls ``plt.show()`` or picks a
backend, so the functions work the same in notebooks, scripts and headless runs (``Agg``).
Flows are evaluated under ``torch.no_grad()`` on their own device and dtype, in chunks.

Example:
    >>> import pyroflows, pyroflows.plots
    >>> flow = pyroflows.flows.build("nsf", 2, transforms=1, hidden=(8,))
    >>> ax = pyroflows.plots.plot_density(flow, bounds=(-3, 3, -3, 3), resolution=50)
    >>> ax.images[0].get_array().shape
    (50, 50)
"""

from .curves import plot_loglik_curve
from .distribution import plot_density, plot_samples
from .layers import plot_layers

__all__ = ["plot_density", "plot_layers", "plot_loglik_curve", "plot_samples"]
