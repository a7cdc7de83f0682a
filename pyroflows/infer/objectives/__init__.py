r"""Variational objectives beyond the ELBO, for any reparameterised guide (pyroflows' flow guides
included): the importance-weighted bound, Rényi's :math:`\alpha` bounds and the
:math:`\chi^2` upper bound, vectorised over particles, with doubly-reparameterised gradients.

For :math:`K` particles :math:`z_k = g_\theta(\epsilon_k) \sim q_\theta` (drawn at once in a
particle plate) and their log-weights :math:`\ell_k = \log w_k = \log p(x, z_k) - \log
q_\theta(z_k)`, each objective is a function :math:`f(\ell_1, \dots, \ell_K)`:

* :class:`Renyi` — the variational Rényi bound (Li & Turner, NeurIPS 2016,
  https://arxiv.org/abs/1602.02311), for :math:`\alpha \ge 0,\ \alpha \ne 1`,

  .. math:: \mathcal L_\alpha^K = \frac{1}{1-\alpha}
     \log \frac1K \sum_{k=1}^K w_k^{1-\alpha} \;\le\; \log p(x) \quad\text{in expectation;}

  :math:`K = 1` (or :math:`\alpha \to 1`) is the ELBO; as :math:`K \to \infty` it tends to
  :math:`\log p(x) - D_\alpha(q \,\|\, p(\cdot \mid x))`. For :math:`\alpha < 1` it tightens
  with :math:`K`, for :math:`\alpha > 1` it loosens towards a bound below the ELBO (more
  mode-seeking). The loss is :math:`-\mathcal L_\alpha^K`.
* :class:`IWAE` — :math:`\alpha = 0`, the importance-weighted bound of Burda, Grosse &
  Salakhutdinov (ICLR 2016, https://arxiv.org/abs/1509.00519), increasing in :math:`K` to
  :math:`\log p(x)`. For large :math:`K` its gap is about :math:`\chi^2(p \,\|\, q)/(2K)`
  (Maddison et al., NeurIPS 2017, https://arxiv.org/abs/1705.09279), so its optimum in a family that cannot hold the posterior moves from
  the ELBO's towards the :math:`\chi^2` optimum as :math:`K` grows.
* :class:`ChiSquare` — the :math:`\chi` upper bound of CHIVI (Dieng et al., NeurIPS 2017,
  https://arxiv.org/abs/1611.00328), minimised:

  .. math:: \mathrm{CUBO}_2 = \tfrac12 \log \mathbb E_q\big[w^2\big]
     = \log p(x) + \tfrac12 \log\big(1 + \chi^2(p(\cdot \mid x) \,\|\, q)\big) \ge \log p(x),

  the mass-covering direction (:math:`\alpha = 2` in :math:`D_\alpha(p \,\|\, q)`, i.e.
  :math:`\alpha = -1` in Li & Turner's :math:`D_\alpha(q \,\|\, p)`). As in CHIVI the gradient
  is that of :math:`\mathbb E_q[w^2]` (unbiased for every :math:`K`, where the log of a
  :math:`K`-sample mean is not even an upper bound for small :math:`K`), scaled by
  :math:`e^{-2C}` with :math:`C` a running average of past :math:`\mathrm{CUBO}` estimates
  (a step-size scale chosen before the draws, so it leaves the estimator unbiased); the
  reported loss is the estimate :math:`\tfrac12 \log \frac1K \sum_k w_k^2`.

**Gradient estimator** (``gradient="dreg"``, the default): the generalised
doubly-reparameterised estimator (Tucker, Lawson, Gu & Maddison, ICLR 2019,
https://arxiv.org/abs/1810.04152; Bauer & Mnih, ICML 2021, https://arxiv.org/abs/2101.11046).
The score part of :math:`\nabla_\theta \ell_k` is rewritten by reparameterisation, so only the
path derivative :math:`\partial_z \ell_k\, \partial_\theta z_k` (what "sticking the landing"
computes) remains:

.. math:: \nabla_\theta\, \mathbb E\, f = \mathbb E \sum_k
   \Big(\frac{\partial f}{\partial \ell_k} - \frac{\partial^2 f}{\partial \ell_k^2}\Big)
   \frac{\partial \ell_k}{\partial z_k} \frac{\partial z_k}{\partial \theta},

which is :math:`\sum_k \tilde w_k^2\, \partial \ell_k` for IWAE (DReG),
:math:`\sum_k (\alpha \hat w_k + (1-\alpha) \hat w_k^2)\, \partial \ell_k` for Rényi
(:math:`\hat w = \mathrm{softmax}((1-\alpha)\ell)`) and :math:`-2\sum_k w_k^2\, \partial
\ell_k / K` for :math:`\mathbb E[w^2]`. It is unbiased, and exactly zero for every draw when
:math:`q` is the posterior. The model's own parameters (``pyro.param`` in the model) get the
ordinary gradient :math:`\sum_k \partial f / \partial \ell_k\, \nabla_\psi \log p(x, z_k)`.
The path derivative needs :math:`\log q` with the guide's parameters held fixed: pyroflows'
guides with ``stl`` on give it as they are (no extra cost); otherwise the score term
:math:`\nabla_\theta \log q_\theta(\bar z)` at the detached draws is computed and subtracted
(one more evaluation of :math:`\log q`: for a flow guide without STL, a pass of its inverse;
for any other Pyro guide, a replay of the guide on the detached draws). So the guides' STL
switch never biases these objectives and need not be touched.

``gradient="total"``: the plain reparameterisation gradient
:math:`\sum_k \partial f/\partial \ell_k\, \nabla_\theta \ell_k` (Pyro's ``RenyiELBO``'s), which
needs :math:`\log q` with live parameters: a guide that evaluates it with STL is refused
(``ValueError``), since dropping the score term biases every bound but the ELBO. It is cheaper
for a flow guide whose inverse is slow, but its signal-to-noise ratio for the guide falls as
:math:`K` grows (Rainforth et al., ICML 2018, https://arxiv.org/abs/1802.04537).

All objectives are Pyro :class:`~pyro.infer.ELBO` s (virtual subclasses, registered with the
ABC's ``ELBO.register``, since ``ELBO``'s abstract hooks are private to Pyro): pass them to
:class:`pyro.infer.SVI` or to :func:`~pyroflows.infer.fit_guide` as ``loss=``; calling one on a
``(model, guide)`` pair gives Pyro's ``ELBOModule``. Guide sites must
be reparameterisable and the guide must sample every latent site of the model. With a
subsampled data plate the log-likelihood is scaled up inside the log-mean-exp, as in Pyro's
``RenyiELBO`` (a biased estimate of the bound).

Example:
    >>> def model():
    ...     pyro.sample("z", dist.Normal(0.0, 1.0))
    >>> guide = pyro.infer.autoguide.AutoNormal(model)
    >>> svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.01}), IWAE(num_particles=8))
    >>> isinstance(svi.step(), float)
    True
"""

from .chi_square import ChiSquare
from .particles import GRADIENTS, ParticleObjective
from .renyi import IWAE, Renyi

__all__ = ["GRADIENTS", "ChiSquare", "IWAE", "ParticleObjective", "Renyi"]
