"""Frequentist panel regressions of the paper: Table 3, Table 4, robustness checks and median splits.

Every function takes a panel ``frame`` (sorted MultiIndex ``(city, year)``, columns named as in
:mod:`bayesnqp.names`) plus explicit column names, never modifies it, and returns
:class:`~bayesnqp.results.AnalysisResult` objects.  Estimation is done by pyfixest.

Standard errors (``se``):

- ``"cluster"`` (default): clustered by city, CRV1, small-sample factor G/(G-1) * (N-1)/(N-k) where k
  counts the slopes, the intercept, and the fixed effects that are *not* nested in the city clusters
  (pyfixest's and R fixest's default: city effects are nested and count only as the intercept they
  absorb; the T-1 year dummies count). t tests use G-1 degrees of freedom.
- ``"iid"``: classical OLS errors, k counts every slope and fixed effect (as Stata's ``areg``).
- ``"hetero"``: HC1 with the same k.

The paper does not say which errors it used; the choice is written into ``se_type``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyfixest as pf

from bayesnqp import names, panelops
from bayesnqp.errors import InputError, Problem
from bayesnqp.results import AnalysisResult, coef_frame

SeType = Literal["cluster", "iid", "hetero"]
SE_TYPES: tuple[str, ...] = ("cluster", "iid", "hetero")

SE_LABELS: dict[str, str] = {
    "cluster": "standard errors clustered by city (CRV1)",
    "iid": "classical (iid) standard errors",
    "hetero": "heteroskedasticity-robust (HC1) standard errors",
    "driscoll_kraay": "Driscoll-Kraay standard errors",
}

_CONST = "constant"
_CITY_ID = "_city_id"  # integer city code: pyfixest's HAC code needs numeric panel ids
_CITY = "_city"
_YEAR = "_year"


# --------------------------------------------------------------------------------------------------
# helpers shared with iv.py


def check_se(se: str) -> None:
    """Validate the ``se`` option early."""
    if se not in SE_TYPES:
        raise ValueError(f"se must be one of {SE_TYPES}, got {se!r}")


def vcov_spec(se: str) -> str | dict[str, str]:
    """The pyfixest ``vcov`` argument for an ``se`` option."""
    check_se(se)
    options: dict[str, str | dict[str, str]] = {"cluster": {"CRV1": _CITY_ID}, "iid": "iid", "hetero": "hetero"}
    return options[se]


def prepare(frame: pd.DataFrame, columns: Sequence[str], *, what: str = "panel") -> pd.DataFrame:
    """Copy the needed columns of a (city, year) panel into a flat frame with safe column names.

    Columns are renamed ``v0, v1, ...`` (formula-safe whatever the user's names are); the index becomes
    the columns ``_city`` (str), ``_city_id`` (int code) and ``_year`` (int).  Rows with a missing value
    in any needed column are an input error: the paper's panel is balanced and gap-filled.
    """
    if not isinstance(frame.index, pd.MultiIndex) or list(frame.index.names) != [names.CITY, names.YEAR]:
        raise InputError([Problem(what, f"index must be a MultiIndex named ({names.CITY}, {names.YEAR})")])
    cols = list(dict.fromkeys(columns))
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise InputError([Problem(what, "column not found", column=c) for c in missing])
    sub = frame[cols]
    problems = []
    for c in cols:
        bad = sub[c].isna() | ~np.isfinite(pd.to_numeric(sub[c], errors="coerce").astype(float))
        for city, year in sub.index[bad.to_numpy()][:5]:
            problems.append(Problem(what, "missing or non-finite value", column=c, city=str(city), year=int(year)))
    if problems:
        raise InputError(problems)
    data = pd.DataFrame({alias(i): sub[c].to_numpy(dtype=float) for i, c in enumerate(cols)})
    city = sub.index.get_level_values(0).astype(str).to_numpy()
    data[_CITY] = city
    data[_CITY_ID] = pd.factorize(city, sort=True)[0].astype(np.int64)
    data[_YEAR] = sub.index.get_level_values(1).astype(np.int64).to_numpy()
    data.attrs["aliases"] = {c: alias(i) for i, c in enumerate(cols)}
    return data


def alias(i: int) -> str:
    return f"v{i}"


def fixef_part(city_fe: bool, year_fe: bool) -> str:
    fes = ([_CITY_ID] if city_fe else []) + ([_YEAR] if year_fe else [])
    return " + ".join(fes)


def fe_names(city_fe: bool, year_fe: bool) -> tuple[str, ...]:
    return tuple(([names.CITY] if city_fe else []) + ([names.YEAR] if year_fe else []))


def feols(fml: str, data: pd.DataFrame, vcov: Any, vcov_kwargs: dict[str, Any] | None = None) -> Any:
    """pyfixest.feols, with its warnings (collinear regressors dropped, singletons removed) as errors.

    A silently dropped regressor or observation would make a paper column lie about its specification.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        try:
            return pf.feols(fml, data=data, vcov=vcov, vcov_kwargs=vcov_kwargs)
        except UserWarning as exc:  # pragma: no cover - depends on the user's data
            msg = " ".join(str(exc).split())
            raise InputError([Problem("panel", f"regression not estimable as specified: {msg}")]) from exc


def tidy_to_coefs(fit: Any, rename: dict[str, str], terms: Sequence[str] | None = None) -> pd.DataFrame:
    """pyfixest's tidy table -> a ``coef_frame`` with the user's term names."""
    tidy = fit.tidy()
    order = list(tidy.index) if terms is None else list(terms)
    tidy = tidy.loc[order]
    return coef_frame([rename.get(t, t) for t in order], tidy["Estimate"].to_numpy(),
                      tidy["Std. Error"].to_numpy(), tidy["t value"].to_numpy(), tidy["Pr(>|t|)"].to_numpy(),
                      tidy["2.5%"].to_numpy(), tidy["97.5%"].to_numpy())


def _within_plus_mean(data: pd.DataFrame, cols: list[str], city_fe: bool, year_fe: bool) -> pd.DataFrame:
    """Columns with the fixed effects swept out, then the grand mean added back (Stata's xtreg fe form)."""
    flist = np.column_stack(([data[_CITY_ID].to_numpy()] if city_fe else [])
                            + ([pd.factorize(data[_YEAR])[0]] if year_fe else [])).astype(np.uint64)
    x = data[cols].to_numpy(dtype=float)
    demeaned, converged = pf.estimation.demean(x, flist, np.ones(len(data)), tol=1e-12, maxiter=100_000)
    if not converged:  # pragma: no cover - two-way demeaning of a connected panel always converges
        raise RuntimeError("demeaning did not converge")
    out = pd.DataFrame(demeaned + x.mean(axis=0), columns=cols, index=data.index)
    for c in (_CITY, _CITY_ID, _YEAR):
        out[c] = data[c]
    return out


def fe_constant(data: pd.DataFrame, y: str, xs: list[str], city_fe: bool, year_fe: bool, se: str,
                dk_lag: int | None = None) -> pd.Series:
    """Stata-style ``_cons`` of a fixed-effects model: mean(y) - b' mean(x), with its standard error.

    Computed, as Stata's ``xtreg, fe`` does, from the pooled regression of the within-transformed
    variables plus their grand means on a constant and the transformed regressors.  Slopes of that
    regression equal the FE slopes (Frisch-Waugh-Lovell); its constant equals mean(y) - b' mean(x).
    The constant's standard error uses the same error type, with the small-sample factor of the pooled
    regression (fixed effects not counted).
    """
    aug = _within_plus_mean(data, [y, *xs], city_fe, year_fe)
    if se == "driscoll_kraay":
        fit = feols(f"{y} ~ {' + '.join(xs)}", aug, "DK",
                    {"lag": dk_lag, "time_id": _YEAR, "panel_id": _CITY_ID})
    else:
        fit = feols(f"{y} ~ {' + '.join(xs)}", aug, vcov_spec(se))
    row = fit.tidy().loc["Intercept"]
    return pd.Series({"estimate": row["Estimate"], "std_error": row["Std. Error"], "statistic": row["t value"],
                      "p_value": row["Pr(>|t|)"], "ci_low": row["2.5%"], "ci_high": row["97.5%"]})


def r2_stats(fit: Any, data: pd.DataFrame, y: str, has_fe: bool) -> dict[str, float]:
    """R-squared flavours.

    ``r2_full``: 1 - SSR/TSS of the model including the fitted fixed effects (Stata ``areg``'s R2);
    ``r2_within``: R2 of the within-transformed regression (Stata ``xtreg, fe`` "within");
    ``r2_overall``: squared correlation of y with x'b, fixed effects left out (``xtreg, fe`` "overall").
    """
    out = {"r2_full": float(fit._r2)}
    if has_fe:
        out["r2_within"] = float(fit._r2_within)
        coefs = fit.coef()
        xb = sum(data[name].to_numpy() * coefs[name] for name in coefs.index)
        out["r2_overall"] = float(np.corrcoef(data[y].to_numpy(), xb)[0, 1] ** 2)
    return out


# --------------------------------------------------------------------------------------------------
# the generic fit used by every panel analysis


def fit_panel(frame: pd.DataFrame, outcome: str, regressors: Sequence[str], *, city_fe: bool, year_fe: bool,
              se: str, id: str, title: str, key_term: str, dk_lag: int | None = None,
              notes: Sequence[str] = (), extra: dict[str, Any] | None = None,
              data: pd.DataFrame | None = None) -> AnalysisResult:
    """OLS of ``outcome`` on ``regressors`` with optional city / year effects, as one paper column.

    ``se`` may also be ``"driscoll_kraay"`` (then ``dk_lag`` is the Bartlett lag).  The constant is
    reported for every column (for FE columns as Stata's ``_cons``, see :func:`fe_constant`).  ``r2`` is
    the within R2 for FE columns and the ordinary R2 otherwise; all flavours go into ``extra``.
    """
    if se != "driscoll_kraay":
        check_se(se)
    cols = [outcome, *regressors]
    if data is None:
        data = prepare(frame, cols)
    amap = data.attrs["aliases"]
    y = amap[outcome]
    xs = [amap[c] for c in regressors]
    rename = {amap[c]: c for c in cols}
    fe = fixef_part(city_fe, year_fe)
    rhs = " + ".join(xs) if xs else "1"
    fml = f"{y} ~ {rhs}" + (f" | {fe}" if fe else "")
    if se == "driscoll_kraay":
        vc: Any = "DK"
        vkw: dict[str, Any] | None = {"lag": dk_lag, "time_id": _YEAR, "panel_id": _CITY_ID}
    else:
        vc, vkw = vcov_spec(se), None
    fit = feols(fml, data, vc, vkw)
    has_fe = bool(fe)
    if has_fe:
        coefs = tidy_to_coefs(fit, rename, xs)
        const = fe_constant(data, y, xs, city_fe, year_fe, se, dk_lag)
        coefs.loc[_CONST] = const[coefs.columns].to_numpy(dtype=float)
        note_const: tuple[str, ...] = ("constant: Stata-style _cons = mean(y) - b'mean(x), from the regression of the "
                      "within-transformed variables plus grand means (xtreg, fe convention)",)
    else:
        coefs = tidy_to_coefs(fit, {**rename, "Intercept": _CONST}, [*xs, "Intercept"])
        note_const = ()
    r2s = r2_stats(fit, data, y, has_fe)
    info = {"formula": f"{outcome} ~ {' + '.join(regressors) or '1'}"
                       + (f" | {' + '.join(fe_names(city_fe, year_fe))}" if fe else ""),
            "n_clusters": int(data[_CITY_ID].nunique()), "n_years": int(data[_YEAR].nunique()),
            "df_t": float(fit._df_t), "small_sample_factor": float(np.asarray(fit._ssc).ravel()[0]),
            **r2s}
    if extra:
        info.update(extra)
    r2 = r2s["r2_within"] if has_fe else r2s["r2_full"]
    r2_note = ("R2: within R2 for fixed-effects columns (r2_full and r2_overall in extra)",) if has_fe else ()
    return AnalysisResult(id=id, title=title, coefs=coefs, n_obs=int(fit._N),
                          se_type=se, r2=r2, fixed_effects=fe_names(city_fe, year_fe), key_term=key_term,
                          dep_var=outcome, notes=(*note_const, *r2_note, *notes), extra=info,
                          fitted_values=fitted_frame(fit, data, y))


def fitted_frame(fit: Any, data: pd.DataFrame, y: str) -> pd.DataFrame:
    """The rows pyfixest used, by (city, year): fitted values (fixed effects included) and the outcome."""
    dropped = sorted(getattr(fit, "_na_index", ()) or ())
    used = data.drop(index=data.index[dropped]) if dropped else data
    index = pd.MultiIndex.from_arrays([used[_CITY].to_numpy(), used[_YEAR].to_numpy()], names=[names.CITY, names.YEAR])
    return pd.DataFrame({"fitted": np.asarray(fit.predict(), dtype=float), "observed": used[y].to_numpy(float)},
                        index=index)


# --------------------------------------------------------------------------------------------------
# Table 3


def table3(frame: pd.DataFrame, outcome: str = names.NQP, treatment: str = names.AGGLOMERATION,
           controls: Sequence[str] = names.CONTROLS, se: SeType = "cluster") -> list[AnalysisResult]:
    """Table 3: (1) pooled OLS without controls, (2) pooled + controls, (3) + city FE, (4) + city and year FE."""
    check_se(se)
    data = prepare(frame, [outcome, treatment, *controls])
    specs = [
        ("table3_col1", "Table 3 (1): pooled OLS, no controls", [treatment], False, False),
        ("table3_col2", "Table 3 (2): pooled OLS with controls", [treatment, *controls], False, False),
        ("table3_col3", "Table 3 (3): controls + city FE", [treatment, *controls], True, False),
        ("table3_col4", "Table 3 (4): controls + city and year FE", [treatment, *controls], True, True),
    ]
    return [fit_panel(frame, outcome, regs, city_fe=cfe, year_fe=yfe, se=se, id=i, title=t,
                      key_term=treatment, data=data) for i, t, regs, cfe, yfe in specs]


# --------------------------------------------------------------------------------------------------
# Table 4 (mechanisms)


def mechanisms(frame: pd.DataFrame, treatment: str = names.AGGLOMERATION,
               indicators: Sequence[str] = names.MECHANISM_INDICATORS, controls: Sequence[str] = names.CONTROLS,
               se: SeType = "cluster") -> list[AnalysisResult]:
    """Table 4 (Jiang Ting 2022 two-step): each indicator on treatment + controls + city and year FE."""
    check_se(se)
    return [fit_panel(frame, ind, [treatment, *controls], city_fe=True, year_fe=True, se=se,
                      id=f"table4_{ind}", title=f"Table 4: {ind} on {treatment} (two-way FE)",
                      key_term=treatment)
            for ind in indicators]


# --------------------------------------------------------------------------------------------------
# robustness


def winsorise(values: pd.Series, lower: float = 0.01, upper: float = 0.99) -> pd.Series:
    """Clip at the pooled lower/upper quantiles (numpy's default linear interpolation)."""
    lo, hi = np.quantile(values.to_numpy(dtype=float), [lower, upper])
    return values.clip(lo, hi)


def lag_within_city(frame: pd.DataFrame, column: str, periods: int = 1) -> pd.Series:
    """``column`` of year t - periods for the same city (NaN where that city-year is absent).

    Matched on the year value, not on row position, so gaps in a city's years give NaN.
    """
    s = frame[column]
    shifted = s.copy()
    shifted.index = pd.MultiIndex.from_arrays([s.index.get_level_values(0),
                                               s.index.get_level_values(1) + periods],
                                              names=s.index.names)
    return shifted.reindex(s.index)


def dk_default_lag(n_years: int) -> int:
    """floor(4 (T/100)^(2/9)): the Newey-West plug-in rule used by Stata's ``xtscc`` (Hoechle 2007)."""
    return int(math.floor(4 * (n_years / 100) ** (2 / 9)))


def robustness(frame: pd.DataFrame, outcome: str = names.NQP, treatment: str = names.AGGLOMERATION,
               controls: Sequence[str] = names.CONTROLS, se: SeType = "cluster",
               municipalities: Sequence[str] = names.MUNICIPALITY_ADCODES,
               dk_lag: int | None = None) -> list[AnalysisResult]:
    """Robustness checks of Table 3 (4) (the paper gives no numbers for them).

    - ``robustness_winsorised``: outcome, treatment and controls clipped at their pooled 1st / 99th
      percentiles;
    - ``robustness_no_municipalities``: the four province-level municipalities dropped;
    - ``robustness_lagged``: treatment lagged one year within city (the first year drops out);
    - ``robustness_driscoll_kraay``: two-way FE with Driscoll-Kraay errors (Bartlett kernel, lag
      ``dk_lag``, default floor(4 (T/100)^(2/9)) as Stata's xtscc; pyfixest's small-sample factor).
    """
    check_se(se)
    cols = [outcome, treatment, *controls]
    regs = [treatment, *controls]
    out = []

    wins = frame[cols].copy()
    for c in cols:
        wins[c] = winsorise(wins[c])
    out.append(fit_panel(wins, outcome, regs, city_fe=True, year_fe=True, se=se, id="robustness_winsorised",
                         title="Robustness: variables winsorised at 1% / 99%", key_term=treatment,
                         notes=("outcome, treatment and controls clipped at their pooled 1st and 99th "
                                "percentiles",)))

    city = frame.index.get_level_values(0).astype(str)
    muni = {str(m) for m in municipalities}
    kept = frame.loc[~np.isin(city, list(muni)), cols]
    n_dropped = int(len(set(city) & muni))
    out.append(fit_panel(kept, outcome, regs, city_fe=True, year_fe=True, se=se,
                         id="robustness_no_municipalities",
                         title="Robustness: without the province-level municipalities", key_term=treatment,
                         notes=(f"dropped cities: {sorted(set(city) & muni)}",),
                         extra={"n_cities_dropped": n_dropped}))

    lagged = frame[cols].copy()
    lagged[treatment] = lag_within_city(frame, treatment)
    lagged = lagged.dropna(subset=[treatment])
    out.append(fit_panel(lagged, outcome, regs, city_fe=True, year_fe=True, se=se, id="robustness_lagged",
                         title="Robustness: treatment lagged one year", key_term=treatment,
                         notes=(f"{treatment} of year t-1 (same city); city-years without it dropped",)))

    n_years = frame.index.get_level_values(1).nunique()
    lag = dk_default_lag(n_years) if dk_lag is None else int(dk_lag)
    out.append(fit_panel(frame, outcome, regs, city_fe=True, year_fe=True, se="driscoll_kraay", dk_lag=lag,
                         id="robustness_driscoll_kraay",
                         title="Robustness: Driscoll-Kraay standard errors", key_term=treatment,
                         notes=(f"Driscoll-Kraay errors, Bartlett kernel, lag {lag} "
                                "(floor(4 (T/100)^(2/9)) unless set); t tests with T-1 degrees of freedom",),
                         extra={"dk_lag": lag}))
    return out


# --------------------------------------------------------------------------------------------------
# heterogeneity (median splits)


def median_split(frame: pd.DataFrame, splitter: str) -> tuple[pd.Series, float]:
    """Per-city high/low group: city mean of ``splitter`` over years above the median of city means.

    A city stays in one group for all years; ties with the median go to the low group (as the paper
    does for government dominance: "above the median" is high, "below or equal" is low).
    Returns (bool Series indexed by city, the median).
    """
    means = frame[splitter].groupby(level=0).mean()
    if means.isna().any():
        bad = list(means.index[means.isna()])[:5]
        raise InputError([Problem("panel", "splitter has no value for city", column=splitter, city=str(c))
                          for c in bad])
    high, med = panelops.median_split(means.to_numpy())
    return pd.Series(high, index=means.index, name=means.name), med


def heterogeneity(frame: pd.DataFrame, outcome: str = names.NQP, treatment: str = names.AGGLOMERATION,
                  controls: Sequence[str] = names.CONTROLS, splitters: Sequence[str] = names.SPLITTERS,
                  se: SeType = "cluster") -> list[AnalysisResult]:
    """Median splits: the two-way FE model in each group, and their difference from a fully interacted model.

    The interacted model puts the treatment, every control and the year effects separately in each
    group (city effects are within group already), so its treatment x high coefficient equals the
    difference of the two separate estimates exactly; its standard error is of the chosen type
    (clustered by city by default) and tests that difference.
    """
    check_se(se)
    regs = [treatment, *controls]
    out = []
    for sp in splitters:
        high, med = median_split(frame, sp)
        city = frame.index.get_level_values(0)
        is_high = high.reindex(city).to_numpy()
        groups = {"low": frame.loc[~is_high], "high": frame.loc[is_high]}
        fits = {g: fit_panel(sub, outcome, regs, city_fe=True, year_fe=True, se=se, id=f"hetero_{sp}_{g}",
                             title=f"{sp} {g}", key_term=treatment) for g, sub in groups.items()}
        diff = _interacted_difference(frame, outcome, treatment, controls, is_high, se)
        rows = [fits["low"].coefs.loc[treatment], fits["high"].coefs.loc[treatment], diff]
        coefs = pd.DataFrame(rows, index=pd.Index([f"{treatment}[low]", f"{treatment}[high]", "difference"],
                                                  name="term")).astype(float)
        n_cities = {g: int(sub.index.get_level_values(0).nunique()) for g, sub in groups.items()}
        extra = {"splitter": sp, "median_of_city_means": med,
                 "n_cities": n_cities, "n_obs": {g: int(r.n_obs) for g, r in fits.items()},
                 "r2_within": {g: r.r2 for g, r in fits.items()},
                 "test": ("treatment x high in a model with treatment, controls and year effects interacted "
                          "with the group dummy and city effects; " + SE_LABELS[se]),
                 "group_fits": {g: r.summary() for g, r in fits.items()}}
        out.append(AnalysisResult(
            id=f"hetero_{sp}", title=f"Heterogeneity by {sp} (median split of city means)", coefs=coefs,
            n_obs=int(sum(r.n_obs for r in fits.values())), se_type=se, r2=None,
            fixed_effects=(names.CITY, names.YEAR), key_term="difference", dep_var=outcome,
            notes=("groups: city mean of the splitter over years above the median of city means is high; "
                   "ties go to the low group; a city stays in one group",
                   "difference = high - low from the fully interacted model (equals the difference of the "
                   "separate estimates)"),
            extra=extra))
    return out


def _interacted_difference(frame: pd.DataFrame, outcome: str, treatment: str, controls: Sequence[str],
                           is_high: np.ndarray, se: str) -> pd.Series:
    data = prepare(frame, [outcome, treatment, *controls])
    amap = data.attrs["aliases"]
    data["_high"] = is_high.astype(float)
    xs = [amap[c] for c in [treatment, *controls]]
    inter = []
    for x in xs:
        data[f"{x}_h"] = data[x] * data["_high"]
        inter.append(f"{x}_h")
    data["_year_group"] = data[_YEAR].astype(str) + "_" + data["_high"].astype(int).astype(str)
    fml = f"{amap[outcome]} ~ {' + '.join(xs + inter)} | {_CITY_ID} + _year_group"
    fit = feols(fml, data, vcov_spec(se))
    row = fit.tidy().loc[f"{amap[treatment]}_h"]
    return pd.Series({"estimate": row["Estimate"], "std_error": row["Std. Error"], "statistic": row["t value"],
                      "p_value": row["Pr(>|t|)"], "ci_low": row["2.5%"], "ci_high": row["97.5%"]})

