"""Bayesian stage: PyMC models built from the TOML specs in top-level ``models/``, one sampling entry."""

from .nutpie_disk_cache import order_broadcast_checks

# Before any model is built: graphs whose broadcast checks come out in one order in every process keep
# one compile-cache key across processes (see order_broadcast_checks).
order_broadcast_checks()
