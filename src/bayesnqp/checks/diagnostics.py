"""Convergence diagnostics and posterior summaries. Defined once in ``bayesnqp.conventions`` (with the
interval convention ``CI_KIND`` / ``CI_PROB``); re-exported here for the checks' callers."""

from __future__ import annotations

from ..conventions import (CI_KIND, CI_PROB, MAX_R_HAT, MIN_BFMI, MIN_ESS, Diagnostics, diagnose, hdi_bounds,
                           posterior_summary)

__all__ = ["CI_KIND", "CI_PROB", "MAX_R_HAT", "MIN_ESS", "MIN_BFMI", "Diagnostics", "diagnose", "hdi_bounds",
           "posterior_summary"]
