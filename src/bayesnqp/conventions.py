"""The package's conventions, written once: the credible interval (kind and probability), every threshold a
check is judged by, the posterior summary, convergence diagnostics, HDI helpers and the agreement of a
posterior with its frequentist oracle.

A leaf: numpy and pandas (arviz inside the functions that need it), nothing else from this package, so the Bayesian model families
(``bayes/``) and the checks (``checks/``) both import it without importing each other.
``checks.diagnostics``, ``checks.agreement`` and ``checks.flags`` re-export these names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # typing only (arviz is imported where it is used, so importing this module stays light)
    import arviz as az

    from .results import AnalysisResult

# ------------------------------------------------------------------------------------------------
# the credible interval: the one place where its kind and probability are set
CI_KIND = "hdi"
CI_PROB = 0.94
# Posterior draws behind fitted values (evenly spaced over the chains, so the answer is reproducible).
FITTED_DRAWS = 400


def fitted_draws(total: int) -> np.ndarray:
    """Indices of the ``FITTED_DRAWS`` draws (of ``total`` stacked chain x draw samples) fitted values use."""
    return np.unique(np.linspace(0, total - 1, FITTED_DRAWS).astype(int))

# ------------------------------------------------------------------------------------------------
# thresholds (checks.flags turns each into a record; see its notes for the sources)
# convergence: r_hat > 1.01, bulk/tail ESS < 400, any divergence; BFMI < 0.3 is a warning sign
MAX_R_HAT = 1.01
MIN_ESS = 400
MIN_BFMI = 0.3
# posterior predictive p-value outside [PPC_P_LOW, PPC_P_HIGH]
PPC_P_LOW = 0.01
PPC_P_HIGH = 0.99
# more than PARETO_K_SHARE of the observations with Pareto k above PARETO_K_MAX
PARETO_K_MAX = 0.7
PARETO_K_SHARE = 0.01
# posterior sd / the oracle's clustered SE outside [SD_RATIO_LOW, SD_RATIO_HIGH]
SD_RATIO_LOW = 0.75
SD_RATIO_HIGH = 1.33
# power-scaling prior / likelihood sensitivity at or above this
PSENS_THRESHOLD = 0.05
# a model that rebuilds its oracle under weak priors must land within this many oracle SEs
MATCH_TOLERANCE_Z = 0.1
# the kinds of flag record (summary.json ``flagged``), in the order the report lists them
FLAG_KINDS: tuple[str, ...] = ("convergence", "ppc", "pareto_k", "sd_ratio", "prior_sensitivity", "admissibility",
                               "failed")


# ------------------------------------------------------------------------------------------------
# convergence diagnostics
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


def _extreme(ds: Any, fn: Any) -> float:
    vals = [np.asarray(ds[v]).ravel() for v in ds.data_vars]
    vals = [v[np.isfinite(v)] for v in vals if v.size]
    vals = [v for v in vals if v.size]
    return float(fn([fn(v) for v in vals])) if vals else float("nan")


def diagnose(idata: az.InferenceData, var_names: list[str] | None = None) -> Diagnostics:
    """r_hat, bulk/tail ESS over ``var_names`` (default: every posterior variable), divergences, BFMI."""
    import arviz as az

    post = idata.posterior if var_names is None else idata.posterior[var_names]
    max_rhat = _extreme(az.rhat(post), np.max)
    min_bulk = _extreme(az.ess(post, method="bulk"), np.min)
    min_tail = _extreme(az.ess(post, method="tail"), np.min)
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


# ------------------------------------------------------------------------------------------------
# posterior summaries and intervals
def posterior_summary(idata: az.InferenceData, var_names: list[str]) -> pd.DataFrame:
    """mean, sd, the CI_PROB HDI, r_hat, ess_bulk, ess_tail; one row per scalar (labels as 'beta[develop]')."""
    import arviz as az

    table = az.summary(idata, var_names=var_names, kind="all", hdi_prob=CI_PROB, round_to="none")
    low, high = [c for c in table.columns if c.startswith("hdi_")]
    table = table.rename(columns={low: "ci_low", high: "ci_high"})
    return table[["mean", "sd", "ci_low", "ci_high", "r_hat", "ess_bulk", "ess_tail"]]


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


def hdi(samples: np.ndarray, prob: float = CI_PROB) -> tuple[float, float]:
    """The report's interval of all draws pooled (NaN if any draw is NaN)."""
    low, high = hdi_bounds(np.asarray(samples, dtype=float).reshape(-1, 1), prob)
    return float(low[0]), float(high[0])


def hdi_contains(idata: az.InferenceData, var: str, truth: float | np.ndarray, prob: float = CI_PROB) -> np.ndarray:
    """Whether the truth lies in the HDI of ``var`` (helper of the recovery tests)."""
    import arviz as az

    h = az.hdi(idata.posterior[var], hdi_prob=prob)[var]
    lo = np.asarray(h.sel(hdi="lower"))
    hi = np.asarray(h.sel(hdi="higher"))
    truth = np.asarray(truth)
    return (lo <= truth) & (truth <= hi)


# ------------------------------------------------------------------------------------------------
# a posterior against its frequentist oracle: z = (posterior mean - estimate) / SE for each shared term,
# sd_ratio = posterior sd / SE (the SE is the oracle's, city-clustered by default), and the sd of the
# city-level Bayesian bootstrap of the oracle where one was run (NaN otherwise)
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
