"""Variational inference with flows: the flow autoguides (:class:`AutoFlow`,
:class:`AutoMeanFieldFlow`, :class:`AutoAmortizedFlow`), variational EM, and the Laplace start."""
