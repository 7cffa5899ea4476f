"""Convergence diagnostics and posterior summaries, with the interval convention set in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import arviz as az
import numpy as np
import pandas as pd

# The one place where the credible-interval kind and probability are set.
CI_KIND = "hdi"
CI_PROB = 0.94

# Flag thresholds (issue: r_hat > 1.01, bulk/tail ESS < 400, any divergence; BFMI < 0.3 is a warning sign).
MAX_R_HAT = 1.01
MIN_ESS = 400
MIN_BFMI = 0.3


@dataclass(frozen=True)
class Diagnostics:
    max_r_hat: float
    min_ess_bulk: float
    min_ess_tail: float
    divergences: int
    min_bfmi: float
    n_draws: int
    n_chains: int
    flags: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.flags

    def to_dict(self) -> dict[str, Any]:
        return {"max_r_hat": self.max_r_hat, "min_ess_bulk": self.min_ess_bulk,
                "min_ess_tail": self.min_ess_tail, "divergences": self.divergences,
                "min_bfmi": self.min_bfmi, "draws": self.n_draws, "chains": self.n_chains,
                "flagged": not self.ok, "flags": list(self.flags)}


def diagnose(idata: az.InferenceData, var_names: list[str] | None = None) -> Diagnostics:
    """r_hat, bulk/tail ESS over ``var_names`` (default: every posterior variable), divergences, BFMI."""
    post = idata.posterior if var_names is None else idata.posterior[var_names]
    rhat = az.rhat(post)
    ess_bulk = az.ess(post, method="bulk")
    ess_tail = az.ess(post, method="tail")

    def _extreme(ds, fn) -> float:
        vals = [np.asarray(ds[v]).ravel() for v in ds.data_vars]
        vals = [v[np.isfinite(v)] for v in vals if v.size]
        vals = [v for v in vals if v.size]
        return float(fn([fn(v) for v in vals])) if vals else float("nan")

    max_rhat = _extreme(rhat, np.max)
    min_bulk = _extreme(ess_bulk, np.min)
    min_tail = _extreme(ess_tail, np.min)
    stats = idata.get("sample_stats")
    divergences = int(stats["diverging"].sum()) if stats is not None and "diverging" in stats else 0
    try:
        bfmi = float(np.min(az.bfmi(idata)))
    except (KeyError, AttributeError, TypeError, ValueError):
        bfmi = float("nan")
    flags = []
    if not max_rhat <= MAX_R_HAT:
        flags.append(f"r_hat {max_rhat:.3f} > {MAX_R_HAT}")
    if not min_bulk >= MIN_ESS:
        flags.append(f"bulk ESS {min_bulk:.0f} < {MIN_ESS}")
    if not min_tail >= MIN_ESS:
        flags.append(f"tail ESS {min_tail:.0f} < {MIN_ESS}")
    if divergences:
        flags.append(f"{divergences} divergent transitions")
    if np.isfinite(bfmi) and bfmi < MIN_BFMI:
        flags.append(f"BFMI {bfmi:.2f} < {MIN_BFMI}")
    n_chains, n_draws = idata.posterior.sizes["chain"], idata.posterior.sizes["draw"]
    return Diagnostics(max_rhat, min_bulk, min_tail, divergences, bfmi, int(n_draws), int(n_chains),
                       tuple(flags))


def hdi_bounds(draws: np.ndarray, prob: float = CI_PROB) -> tuple[np.ndarray, np.ndarray]:
    """Shortest interval holding ``prob`` of the draws along axis 0 (ArviZ's rule), for every element of
    the remaining axes; NaN where an element has a non-finite draw. For derived quantities computed from
    posterior draws in numpy (effects, indirect effects), so they use the report's one convention."""
    x = np.asarray(draws, dtype=float)
    flat = x.reshape(x.shape[0], -1)
    s = np.sort(flat, axis=0)
    m = s.shape[0]
    k = max(1, int(np.floor(prob * m)))
    best = np.argmin(s[k:] - s[: m - k], axis=0)
    cols = np.arange(flat.shape[1])
    low, high = s[best, cols], s[best + k, cols]
    bad = ~np.isfinite(flat).all(axis=0)
    low[bad], high[bad] = np.nan, np.nan
    return low.reshape(x.shape[1:]), high.reshape(x.shape[1:])


def posterior_summary(idata: az.InferenceData, var_names: list[str]) -> pd.DataFrame:
    """mean, sd, the CI_PROB HDI, r_hat, ess_bulk, ess_tail; one row per scalar (labels as 'beta[develop]')."""
    table = az.summary(idata, var_names=var_names, kind="all", hdi_prob=CI_PROB, round_to="none")
    low, high = [c for c in table.columns if c.startswith("hdi_")]
    table = table.rename(columns={low: "ci_low", high: "ci_high"})
    return table[["mean", "sd", "ci_low", "ci_high", "r_hat", "ess_bulk", "ess_tail"]]
