"""Posterior against its frequentist oracle: z = (posterior mean - estimate) / SE for each shared term,
sd_ratio = posterior sd / SE (the SE is the oracle's, city-clustered by default), and the sd of the
city-level Bayesian bootstrap of the oracle where one was run (NaN otherwise)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..results import AnalysisResult

# A model that rebuilds its oracle under weak priors must land within this many oracle SEs.
MATCH_TOLERANCE_Z = 0.1


def bootstrap_sd(extra: dict[str, Any], term: str) -> float:
    """The bootstrap sd of ``term`` recorded by ``frequentist.bootstrap.summarise`` in an oracle's
    ``extra["bootstrap"]`` (NaN where there is none)."""
    block = extra.get("bootstrap") if isinstance(extra, dict) else None
    if not isinstance(block, dict):
        return float("nan")
    value = block.get("sd", {}).get(term)
    return float(value) if value is not None else float("nan")


def agreement(posterior: pd.DataFrame, oracle: AnalysisResult, terms: dict[str, str]) -> pd.DataFrame:
    """``posterior``: rows labelled as in ``terms`` values with columns mean, sd.
    ``terms``: oracle term -> posterior row label. Returns one row per oracle term.
    """
    rows = []
    for term, label in terms.items():
        est = oracle.coefs.loc[term]
        post = posterior.loc[label]
        rows.append({"term": term, "estimate": est["estimate"], "std_error": est["std_error"],
                     "post_mean": post["mean"], "post_sd": post["sd"],
                     "z": (post["mean"] - est["estimate"]) / est["std_error"],
                     "sd_ratio": post["sd"] / est["std_error"],
                     "bootstrap_sd": bootstrap_sd(oracle.extra, term)})
    table = pd.DataFrame(rows).set_index("term")
    table.attrs["oracle"] = oracle.id
    return table
