"""Flags: the one place where a check's result becomes a record in summary.json ``flagged``.

A flag is ``{"id": <analysis id>, "kind": <one of KINDS>, "message": <one plain sentence with the
numbers>}``. Every threshold a check is judged by is set in ``bayesnqp.conventions`` and applied here,
so the report, summary.json and ``--strict`` (exit 3 on any flag) all apply the same rule. This module is
a leaf: numpy, pandas and the conventions only, nothing from the Bayesian code, so any stage or check can
import it.

Thresholds and where they come from:

* convergence: r_hat, ESS, divergences, BFMI (judged by ``conventions.diagnose``; passed in as its messages);
* ppc: a posterior predictive p-value of a reported statistic below ``PPC_P_LOW`` or above
  ``PPC_P_HIGH`` (the model almost never, or almost always, reproduces that feature of the data);
* pareto_k: more than ``PARETO_K_SHARE`` of the observations with Pareto k above ``PARETO_K_MAX``
  (PSIS-LOO unreliable for them; Vehtari et al. 2017/2024);
* sd_ratio: posterior sd / the oracle's city-clustered SE outside [``SD_RATIO_LOW``, ``SD_RATIO_HIGH``]
  (the interval claims more, or less, precision than the design-based one);
* prior_sensitivity: power-scaling sensitivity (Kallioinen et al. 2023) of the prior at or above
  ``PSENS_THRESHOLD``; with likelihood sensitivity below it the posterior is prior-driven, with both
  above it there is prior-data conflict.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

# the thresholds are set once in the conventions; re-exported here for the flags' callers
from ..conventions import (FLAG_KINDS, PARETO_K_MAX, PARETO_K_SHARE, PPC_P_HIGH, PPC_P_LOW, PSENS_THRESHOLD,
                           SD_RATIO_HIGH, SD_RATIO_LOW)

KINDS = FLAG_KINDS


@dataclass(frozen=True)
class Flag:
    """One flagged check. ``as_dict()`` is the record written to summary.json ``flagged``."""

    id: str
    kind: str
    message: str

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"flag kind must be one of {KINDS}, got {self.kind!r}")
        if not self.message:
            raise ValueError("a flag needs a message")

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "kind": self.kind, "message": self.message}

    def __str__(self) -> str:
        return f"{self.id} [{self.kind}]: {self.message}"


def convergence_flags(analysis_id: str, problems: Iterable[str]) -> list[Flag]:
    """One record for a fit whose diagnostics failed (``Diagnostics.flags`` messages)."""
    problems = [p for p in problems if p]
    if not problems:
        return []
    return [Flag(analysis_id, "convergence", "Sampler diagnostics failed: " + "; ".join(problems) + ".")]


def ppc_outside(p: float) -> bool:
    """Whether a posterior predictive p-value is extreme (NaN is not judged)."""
    return bool(np.isfinite(p) and (p < PPC_P_LOW or p > PPC_P_HIGH))


def ppc_flags(analysis_id: str, p_values: Mapping[str, float], *, what: str = "") -> list[Flag]:
    """One record listing every statistic whose p-value lies outside [PPC_P_LOW, PPC_P_HIGH].

    ``p_values``: statistic label (e.g. "skewness", "inno_rd_staff kurtosis") -> Bayesian p-value.
    ``what``: the model or likelihood checked, put in the message ("Normal likelihood").
    """
    bad = {k: float(v) for k, v in p_values.items() if ppc_outside(float(v))}
    if not bad:
        return []
    listed = ", ".join(f"{k} p = {v:.3f}" for k, v in bad.items())
    where = f" under the {what}" if what else ""
    return [Flag(analysis_id, "ppc",
                 f"Posterior predictive check fails{where}: {listed} (outside [{PPC_P_LOW}, {PPC_P_HIGH}]); "
                 "the model does not reproduce these features of the data.")]


def ppc_statistics_flags(analysis_id: str, statistics: Mapping[str, Any], *, what: str = "") -> list[Flag]:
    """``ppc_flags`` on a ``checks.ppc.test_statistics`` result ({statistic: {"p_value": p, ...}}; other
    entries, such as a plain number, are not p-values and are skipped)."""
    p_values = {k: v["p_value"] for k, v in statistics.items() if isinstance(v, Mapping) and "p_value" in v}
    return ppc_flags(analysis_id, p_values, what=what)


def nested_ppc_flags(analysis_id: str, p_values: Mapping[str, Mapping[str, float]], *, what: str = "") -> list[Flag]:
    """``ppc_flags`` on {variable: {statistic: p}} (e.g. the mediation model's residualised variables)."""
    flat = {f"{var} {stat}": p for var, stats in p_values.items() for stat, p in stats.items()
            if p is not None}
    return ppc_flags(analysis_id, flat, what=what)


def pareto_k_share(k: np.ndarray | Iterable[float]) -> float:
    """Share of observations with Pareto k above PARETO_K_MAX."""
    arr = np.asarray(list(k) if not isinstance(k, np.ndarray) else k, dtype=float).ravel()
    return float(np.mean(arr > PARETO_K_MAX)) if arr.size else float("nan")


def pareto_k_flags(analysis_id: str, share: float, n: int | None = None, *, what: str = "") -> list[Flag]:
    """A record when more than PARETO_K_SHARE of the observations have k > PARETO_K_MAX."""
    if not (np.isfinite(share) and share > PARETO_K_SHARE):
        return []
    count = f" ({int(round(share * n))} of {n})" if n else ""
    where = f" for the {what}" if what else ""
    return [Flag(analysis_id, "pareto_k",
                 f"PSIS-LOO unreliable{where}: {share:.1%} of observations{count} have Pareto k > "
                 f"{PARETO_K_MAX} (threshold {PARETO_K_SHARE:.0%}); its elpd and model ranking are "
                 "approximate.")]


def pareto_counts_flags(analysis_id: str, counts: Mapping[str, Any], *, what: str = "") -> list[Flag]:
    """``pareto_k_flags`` on ``checks.compare.pareto_k_counts`` output (good / ok_or_unreliable / bad / n),
    whose bands split at the same k as PARETO_K_MAX."""
    n = int(counts.get("n", 0))
    if n <= 0:
        return []
    high = int(counts.get("ok_or_unreliable", 0)) + int(counts.get("bad", 0))
    return pareto_k_flags(analysis_id, high / n, n, what=what)


def sd_ratio_outside(ratio: float) -> bool:
    return bool(np.isfinite(ratio) and (ratio < SD_RATIO_LOW or ratio > SD_RATIO_HIGH))


def sd_ratio_flags(analysis_id: str, agreement: pd.DataFrame, terms: Iterable[str] | None = None,
                   *, reason_low: str = "", reason_high: str = "") -> list[Flag]:
    """A record when the posterior sd of a headline term is far from the oracle's clustered SE.

    ``agreement``: a ``checks.agreement`` table (columns post_sd, std_error, sd_ratio, optionally
    bootstrap_sd), indexed by term. ``terms``: the headline rows to judge (default: every row).
    ``reason_low`` / ``reason_high``: why the model's interval is narrower / wider, added to the message.
    """
    if agreement is None or "sd_ratio" not in agreement.columns:
        return []
    rows = agreement if terms is None else agreement.loc[[t for t in terms if t in agreement.index]]
    bad = rows[[sd_ratio_outside(float(r)) for r in rows["sd_ratio"]]]
    if bad.empty:
        return []
    parts = []
    for term, r in bad.iterrows():
        text = f"{term}: posterior sd {r['post_sd']:.3g} vs clustered SE {r['std_error']:.3g}, ratio {r['sd_ratio']:.2f}"
        if "bootstrap_sd" in r.index and np.isfinite(float(r["bootstrap_sd"])):
            text += f", city-level Bayesian bootstrap sd {r['bootstrap_sd']:.3g}"
        parts.append(text)
    low = bool((bad["sd_ratio"] < SD_RATIO_LOW).any())
    high = bool((bad["sd_ratio"] > SD_RATIO_HIGH).any())
    reasons = [x for x, on in ((reason_low, low), (reason_high, high)) if x and on]
    direction = ("too narrow" if low and not high else "too wide" if high and not low else "off")
    message = (f"Posterior interval {direction} against the design-based uncertainty "
               f"(sd ratio outside [{SD_RATIO_LOW}, {SD_RATIO_HIGH}]): " + "; ".join(parts) + "."
               + (" " + " ".join(reasons) if reasons else ""))
    return [Flag(analysis_id, "sd_ratio", message)]


def sensitivity_diagnosis(prior: float, likelihood: float) -> str:
    """Kallioinen et al. (2023): prior sensitivity >= threshold with likelihood sensitivity below it is a
    prior-driven posterior (strong prior or weak likelihood); with both at or above it, prior-data
    conflict; prior sensitivity below it is fine whatever the likelihood does (a low likelihood
    sensitivity alone says the data are weakly informative about the quantity, not that the prior drives
    it)."""
    if not (np.isfinite(prior) and prior >= PSENS_THRESHOLD):
        return "-"
    if np.isfinite(likelihood) and likelihood >= PSENS_THRESHOLD:
        return "prior-data conflict"
    return "prior-driven"


def prior_sensitivity_flags(analysis_id: str, table: pd.DataFrame) -> list[Flag]:
    """A record naming every quantity whose diagnosis is not '-' in a sensitivity table
    (index: quantity; columns prior, likelihood, diagnosis)."""
    if table is None or table.empty:
        return []
    bad = table[table["diagnosis"] != "-"]
    if bad.empty:
        return []
    parts = [f"{q} {r['diagnosis']} (prior sensitivity {r['prior']:.3f}, likelihood {r['likelihood']:.3f})"
             for q, r in bad.iterrows()]
    return [Flag(analysis_id, "prior_sensitivity",
                 f"Power-scaling sensitivity at or above {PSENS_THRESHOLD}: " + "; ".join(parts)
                 + ". These posteriors depend on the prior, not only on the data.")]


def failed_flag(analysis_id: str, message: str) -> Flag:
    return Flag(analysis_id, "failed", f"The analysis failed: {message}")


def records(flags: Iterable[Flag]) -> list[dict[str, Any]]:
    """summary.json ``flagged``: the records in order, duplicates dropped."""
    seen: set[Flag] = set()
    out = []
    for f in flags:
        if f not in seen:
            seen.add(f)
            out.append(f.as_dict())
    return out
