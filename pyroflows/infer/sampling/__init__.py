"""Flows as proposals: importance sampling with PSIS diagnostics, adaptive importance
sampling, rejection sampling and density ratios, over Pyro models or plain log-densities."""
