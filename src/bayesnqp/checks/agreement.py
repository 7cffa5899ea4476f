"""Posterior against its frequentist oracle: z = (posterior mean - estimate) / SE for each shared term,
sd_ratio = posterior sd / SE (the SE is the oracle's, city-clustered by default), and the sd of the
city-level Bayesian bootstrap of the oracle where one was run (NaN otherwise).

Defined once in ``bayesnqp.conventions`` (the model families build their agreement tables with it);
re-exported here for the checks' callers."""

from __future__ import annotations

from ..conventions import MATCH_TOLERANCE_Z, agreement, bootstrap_sd

__all__ = ["MATCH_TOLERANCE_Z", "agreement", "bootstrap_sd"]
