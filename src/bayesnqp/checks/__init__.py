"""Checks stage: convergence diagnostics, posterior-vs-frequentist agreement, posterior predictive checks."""
