"""Frank (2000) / Frank et al. (2013) sensitivity of an inference to omitted variables and bias.

Follows ``test_sensitivity`` of the R package ``konfound`` (called by ``pkonfound``), with a null of
zero and no effect threshold:

- df = n_obs - n_covariates - 2, where ``n_covariates`` counts the covariates other than the
  treatment and the intercept;
- t_crit = qt(1 - alpha / tails, df), signed like the estimate; threshold = t_crit * std_error;
- percent bias to invalidate (significant estimate) = 100 (1 - threshold / estimate); to sustain
  (non-significant estimate) = 100 (1 - estimate / threshold);
- RIR = round(n_obs * percent / 100) with R's ``round`` (IEC 60559 half-to-even, as Python's ``round``);
- correlation route: obs_r = t / sqrt(t^2 + df), crit_r = t_crit / sqrt(t_crit^2 + df);
  ITCV = sign * |obs_r - crit_r| / (1 + mp |crit_r|) with mp = -1 when |obs_r| > |crit_r| (same sign),
  else +1; sign = +1 for a significant positive or non-significant negative estimate, -1 otherwise;
  r_con = round(sqrt(|ITCV|), 3): the correlation of the omitted variable with both the treatment and
  the outcome (conditional on the covariates) that would change the inference.

Releases of the package differ in the df of the correlation step: older READMEs print r = 0.568 and
impact 0.568^2 = 0.323 for ``pkonfound(2, .4, 100, 3)`` (df = n - q - 3 there), the package's own tests
expect 0.566 and 0.321 (df = n - q - 2, used here).  Percent bias and RIR agree across releases.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd
from scipy import stats

from bayesnqp.results import AnalysisResult


@dataclass(frozen=True)
class KonfoundResult:
    """Output of :func:`konfound` (names as in the R package's raw output where one exists)."""

    estimate: float
    std_error: float
    n_obs: int
    n_covariates: int
    df: int
    t_critical: float
    threshold: float  # beta_threshold
    significant: bool  # True: numbers say what invalidates; False: what would sustain
    percent_bias: float  # perc_bias_to_change, in percent
    rir: int  # robustness of inference to replacement (cases)
    obs_r: float
    critical_r: float
    itcv: float  # itcvGz: impact threshold for a confounding variable
    r_con: float  # rxcvGz = |rycvGz|, rounded to 3 decimals as the package does
    r_xcv: float
    r_ycv: float

    def sentence(self) -> str:
        """The package's printed verdict, in one line."""
        verb = "invalidate" if self.significant else "sustain"
        return (f"To {verb} the inference, {self.percent_bias:.2f}% of the estimate would have to be due to "
                f"bias ({self.rir} of {self.n_obs} cases replaced); an omitted variable correlated at "
                f"{self.r_con:.3f} with both treatment and outcome (impact {self.itcv:.4f}) would {verb} it.")


def konfound(estimate: float, std_error: float, n_obs: int, n_covariates: int, alpha: float = 0.05,
             tails: int = 2) -> KonfoundResult:
    """Sensitivity of a regression coefficient's significance (pkonfound conventions, null of zero)."""
    if not std_error > 0:
        raise ValueError("std_error must be positive")
    if not n_obs > n_covariates + 3:
        raise ValueError("too few observations for the number of covariates")
    if tails not in (1, 2):
        raise ValueError("tails must be 1 or 2")
    df = int(n_obs - n_covariates - 2)
    t_crit = float(stats.t.ppf(1 - alpha / tails, df))
    if estimate < 0:
        t_crit = -t_crit
    threshold = t_crit * std_error
    if abs(estimate) > abs(threshold):
        significant = True
        pct = 100 * (1 - threshold / estimate)
    elif abs(estimate) < abs(threshold):
        significant = False
        pct = 100 * (1 - estimate / threshold)
    else:
        raise ValueError("the estimate equals the threshold exactly")
    rir = int(round(n_obs * pct / 100))
    t = estimate / std_error
    obs_r = t / math.sqrt(df + t * t)
    crit_r = t_crit / math.sqrt(t_crit * t_crit + df)
    mp = -1 if (abs(obs_r) > abs(crit_r) and obs_r * crit_r > 0) else 1
    if estimate >= 0:
        sign = 1 if estimate > threshold else -1
    else:
        sign = -1 if estimate < threshold else 1
    itcv = sign * abs(obs_r - crit_r) / (1 + mp * abs(crit_r))
    r_con = round(math.sqrt(abs(itcv)), 3)
    return KonfoundResult(estimate=float(estimate), std_error=float(std_error), n_obs=int(n_obs),
                          n_covariates=int(n_covariates), df=df, t_critical=t_crit, threshold=threshold,
                          significant=significant, percent_bias=pct, rir=rir, obs_r=obs_r, critical_r=crit_r,
                          itcv=itcv, r_con=r_con, r_xcv=r_con, r_ycv=sign * r_con)


def fe_covariate_count(result: AnalysisResult) -> int:
    """Covariates of a fitted panel column besides the treatment and the intercept, absorbed dummies included.

    The t-to-r conversion of the correlation route uses the regression's residual degrees of freedom;
    with city and year effects those are N - k - (G - 1) - (T - 1) - 1, so q counts the controls plus
    G - 1 city and T - 1 year dummies (q = 6 + 279 + 9 = 294 for the paper's Table 3 column 4).
    """
    slopes = [t for t in result.coefs.index if t not in (result.key_term, "constant")]
    q = len(slopes)
    if "city" in result.fixed_effects:
        q += int(result.extra["n_clusters"]) - 1
    if "year" in result.fixed_effects:
        q += int(result.extra["n_years"]) - 1
    return q


def konfound_result(result: AnalysisResult, n_covariates: int | None = None, alpha: float = 0.05,
                    tails: int = 2, id: str = "konfound") -> AnalysisResult:
    """KonFound applied to the key term of ``result`` (e.g. Table 3 column 4) as a report entry.

    ``n_covariates``: covariates other than the treatment and the intercept; None counts the controls
    and the absorbed fixed-effect dummies (:func:`fe_covariate_count`).
    """
    q = fe_covariate_count(result) if n_covariates is None else int(n_covariates)
    row = result.coefs.loc[result.key_term]
    k = konfound(float(row["estimate"]), float(row["std_error"]), int(result.n_obs), q, alpha, tails)
    extra = {f: getattr(k, f) for f in KonfoundResult.__dataclass_fields__}
    extra["source"] = result.id
    extra["sentence"] = k.sentence()
    coefs = pd.DataFrame([row], index=pd.Index([result.key_term], name="term")).astype(float)
    return AnalysisResult(id=id, title=f"KonFound sensitivity of {result.key_term} ({result.id})", coefs=coefs,
                          n_obs=result.n_obs, se_type=result.se_type, r2=result.r2,
                          fixed_effects=result.fixed_effects, key_term=result.key_term, dep_var=result.dep_var,
                          notes=(f"Frank (2000) / Frank et al. (2013), pkonfound conventions: df = n - q - 2 "
                                 f"with q = {q} covariates besides the treatment and intercept"
                                 + (" (controls plus absorbed fixed-effect dummies)" if n_covariates is None
                                    else ""),),
                          extra=extra)


__all__ = ["KonfoundResult", "fe_covariate_count", "konfound", "konfound_result"]
