"""Ground-floor numerics shared by the transforms and destructors: batched root finding
(bisection, Newton-bisection, monotone inverses with implicit gradients) and quadrature rules."""
