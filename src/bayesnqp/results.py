"""Thin result objects shared by the frequentist and Bayesian stages.

Every analysis returns an :class:`AnalysisResult`; ``summary()`` gives the JSON block stored under
``analyses.<id>`` in summary.json, and ``coefs`` is a tidy table (one row per term) in the style of
pyfixest's ``.tidy()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

COEF_COLUMNS = ("estimate", "std_error", "statistic", "p_value", "ci_low", "ci_high")

# ``tidy()`` of every result, frequentist and Bayesian alike: pyfixest's names where they fit. A
# Bayesian row has the posterior mean and sd in Estimate / Std. Error, no t value or p-value, and its
# HDI in conf_low / conf_high; ``interval`` says which interval the bounds are ("95% CI", "94% HDI").
# r_hat and ess_bulk are NaN for a frequentist row.
TIDY_COLUMNS = ("Estimate", "Std. Error", "t value", "Pr(>|t|)", "conf_low", "conf_high", "interval",
                "r_hat", "ess_bulk")
FREQUENTIST_INTERVAL = "95% CI"


def json_safe(value: Any) -> Any:
    """Turn numpy scalars / arrays / NaN into plain JSON values (NaN -> None)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return [json_safe(v) for v in value.tolist()]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, pd.DataFrame):
        return {str(i): json_safe(row.to_dict()) for i, row in value.iterrows()}
    return value



@dataclass(frozen=True)
class AnalysisResult:
    """One estimated model (a column of a paper-style table).

    ``coefs``: DataFrame indexed by term with columns ``COEF_COLUMNS`` (``statistic`` is t or z).
    ``key_term``: the coefficient reported as the analysis' headline (agglomeration by default).
    ``extra``: JSON-able diagnostics (first-stage F, rho bounds, effects tables as dicts, ...).
    """

    id: str
    title: str
    coefs: pd.DataFrame
    n_obs: int
    se_type: str
    r2: float | None = None
    fixed_effects: tuple[str, ...] = ()
    key_term: str = "agglomeration"
    dep_var: str = "nqp"
    notes: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)  # extra tables (first stage, effects)
    # (city, year) rows: the model's fitted values (fixed effects included) and the observed outcome
    fitted_values: pd.DataFrame | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        missing = [c for c in COEF_COLUMNS if c not in self.coefs.columns]
        if missing:
            raise ValueError(f"{self.id}: coefs lacks columns {missing}")

    @property
    def idata(self) -> None:
        """No posterior (present so that frequentist and Bayesian results read alike)."""
        return None

    @property
    def diagnostics(self) -> None:
        return None

    @property
    def agreement(self) -> None:
        return None

    def fitted(self) -> pd.DataFrame:
        """Fitted values (fixed effects included), one row per observation: columns ``fitted`` and
        ``observed``. Raises ValueError for a result that keeps none (only the panel regressions do)."""
        if self.fitted_values is None:
            raise ValueError(f"{self.id}: no fitted values kept (the panel regressions keep them; this "
                             "estimator's are not per observation of the outcome in its units)")
        return self.fitted_values

    def tidy(self) -> pd.DataFrame:
        """One row per term (index ``Coefficient``), columns ``TIDY_COLUMNS``; the interval is the 95% CI."""
        c = self.coefs
        frame = pd.DataFrame({"Estimate": c["estimate"], "Std. Error": c["std_error"], "t value": c["statistic"],
                              "Pr(>|t|)": c["p_value"], "conf_low": c["ci_low"], "conf_high": c["ci_high"],
                              "interval": FREQUENTIST_INTERVAL, "r_hat": np.nan, "ess_bulk": np.nan},
                             index=pd.Index([str(t) for t in c.index], name="Coefficient"))
        return frame[list(TIDY_COLUMNS)]

    def term(self, name: str) -> pd.Series:
        return self.coefs.loc[name]

    def summary(self) -> dict[str, Any]:
        """The ``analyses.<id>`` block: headline estimate plus every term."""
        block: dict[str, Any] = {"title": self.title, "n": int(self.n_obs), "se_type": self.se_type,
                                 "r2": self.r2, "fixed_effects": list(self.fixed_effects),
                                 "dep_var": self.dep_var, "key_term": self.key_term}
        if self.key_term in self.coefs.index:
            row = self.coefs.loc[self.key_term]
            block.update(estimate=row["estimate"], std_error=row["std_error"], p_value=row["p_value"],
                         ci=[row["ci_low"], row["ci_high"]])
        block["terms"] = {str(t): {c: r[c] for c in COEF_COLUMNS} for t, r in self.coefs.iterrows()}
        if self.notes:
            block["notes"] = list(self.notes)
        if self.extra:
            block["extra"] = self.extra
        return json_safe(block)


def coef_frame(terms: list[str], estimate, std_error, statistic, p_value, ci_low, ci_high) -> pd.DataFrame:
    """Build a tidy coefficient table from aligned arrays."""
    frame = pd.DataFrame({"estimate": estimate, "std_error": std_error, "statistic": statistic,
                          "p_value": p_value, "ci_low": ci_low, "ci_high": ci_high},
                         index=pd.Index(terms, name="term"))
    return frame.astype(float)


@dataclass(frozen=True)
class Skipped:
    """An analysis that the data did not allow, with the one-line reason shown in the report."""

    id: str
    reason: str
