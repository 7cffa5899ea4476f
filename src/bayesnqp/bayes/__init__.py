"""Bayesian stage: PyMC models built from the TOML specs in top-level ``models/``, one sampling entry."""
