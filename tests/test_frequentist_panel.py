"""Panel regressions (Table 3, Table 4, robustness, median splits) against independent references:
statsmodels OLS with explicit city/year dummies, hand-computed within transformations and
Driscoll-Kraay sandwiches, linearmodels PanelOLS."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from linearmodels import PanelOLS

from bayesnqp.frequentist import heterogeneity, mechanisms, median_split, robustness, table3
from bayesnqp.frequentist.panel import dk_default_lag, lag_within_city, winsorise

G, T = 40, 6
CONTROLS = ["develop", "finance", "support"]
YEARS = np.arange(2013, 2013 + T)


def make_panel(seed: int = 7, n_cities: int = G, n_years: int = T) -> pd.DataFrame:
    """Simulated (city, year) panel with city effects correlated with the treatment, year shocks,
    three controls, two mechanism indicators and a splitter; the true treatment effect is 0.2 in the
    low group of ``marketization`` and 0.5 in the high group."""
    rng = np.random.default_rng(seed)
    cities = ["110000", "310000"] + [f"{130100 + 100 * i}" for i in range(n_cities - 2)]
    idx = pd.MultiIndex.from_product([sorted(cities), np.arange(2013, 2013 + n_years)], names=["city", "year"])
    ci = np.repeat(np.arange(n_cities), n_years)
    ti = np.tile(np.arange(n_years), n_cities)
    alpha = rng.normal(size=n_cities)[ci]
    tau = rng.normal(size=n_years)[ti]
    market_city = rng.normal(size=n_cities)
    market = market_city[ci] + 0.1 * rng.normal(size=ci.size)
    high = (market_city > np.median(market_city))[ci]
    x = 1 + 0.5 * alpha + 0.3 * tau + rng.normal(size=ci.size)
    ctrl = {c: rng.normal(size=ci.size) + 0.3 * alpha for c in CONTROLS}
    beta = np.where(high, 0.5, 0.2)
    y = (0.5 + beta * x + 0.1 * ctrl["develop"] - 0.2 * ctrl["finance"] + 0.3 * ctrl["support"] + alpha + tau
         + rng.normal(size=ci.size) * (0.5 + 0.5 * rng.random(n_cities)[ci]))
    m1 = 2 + 0.8 * x + alpha + tau + rng.normal(size=ci.size)
    m2 = -1 + 0.1 * x - alpha + rng.normal(size=ci.size)
    frame = pd.DataFrame({"nqp": y, "agglomeration": x, **ctrl, "inno_rd_staff": m1, "factor_pilots": m2,
                          "marketization": market}, index=idx)
    return frame.sort_index()


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    return make_panel()


def dummies_design(frame: pd.DataFrame, regressors: list[str], city: bool, year: bool) -> pd.DataFrame:
    X = frame[regressors].reset_index(drop=True).astype(float)
    parts = [sm.add_constant(X, has_constant="add")]
    if city:
        parts.append(pd.get_dummies(frame.index.get_level_values(0), prefix="c", drop_first=True, dtype=float))
    if year:
        parts.append(pd.get_dummies(frame.index.get_level_values(1), prefix="y", drop_first=True, dtype=float))
    return pd.concat(parts, axis=1)


def city_codes(frame: pd.DataFrame) -> np.ndarray:
    return pd.factorize(frame.index.get_level_values(0))[0]


def twoway_within(frame: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """Balanced-panel two-way within transformation y - mean_i - mean_t + mean (by hand)."""
    sub = frame[cols]
    return (sub - sub.groupby(level=0).transform("mean") - sub.groupby(level=1).transform("mean") + sub.mean())


# --------------------------------------------------------------------------------------------------
# Table 3


@pytest.mark.parametrize("col,city,year", [(0, False, False), (1, False, False), (2, True, False), (3, True, True)])
def test_table3_coefficients_and_cluster_se_match_statsmodels_dummies(panel, col, city, year):
    res = table3(panel, "nqp", "agglomeration", CONTROLS)[col]
    regs = ["agglomeration"] + (CONTROLS if col > 0 else [])
    X = dummies_design(panel, regs, city, year)
    y = panel["nqp"].to_numpy()
    N, K = X.shape[0], len(regs)
    # raw cluster sandwich from statsmodels, then the documented small-sample factor:
    # G/(G-1) (N-1)/(N-k), k = slopes + intercept, plus the non-nested (year) dummies in column 4; the
    # city dummies, nested in the clusters, count only as the intercept they absorb
    raw = sm.OLS(y, X).fit(cov_type="cluster", cov_kwds={"groups": city_codes(panel), "use_correction": False})
    k = K + 1 + (T - 1 if year else 0)
    factor = G / (G - 1) * (N - 1) / (N - k)
    assert res.extra["small_sample_factor"] == pytest.approx(factor, rel=1e-12)
    for t in regs:
        assert res.coefs.loc[t, "estimate"] == pytest.approx(raw.params[t], abs=1e-8)
        assert res.coefs.loc[t, "std_error"] == pytest.approx(raw.bse[t] * np.sqrt(factor), rel=1e-6)
    assert res.n_obs == N
    assert res.se_type == "cluster"
    assert res.fixed_effects == tuple(n for n, f in (("city", city), ("year", year)) if f)
    # cluster t tests use G - 1 degrees of freedom
    assert res.extra["df_t"] == G - 1
    if not city:
        assert res.coefs.loc["constant", "estimate"] == pytest.approx(raw.params["const"], abs=1e-8)
        assert res.r2 == pytest.approx(raw.rsquared, abs=1e-10)
    else:
        assert res.extra["r2_full"] == pytest.approx(raw.rsquared, abs=1e-10)


def test_table3_iid_and_hetero_match_statsmodels_dummies(panel):
    X = dummies_design(panel, ["agglomeration", *CONTROLS], True, True)
    y = panel["nqp"].to_numpy()
    iid = table3(panel, "nqp", "agglomeration", CONTROLS, se="iid")[3]
    het = table3(panel, "nqp", "agglomeration", CONTROLS, se="hetero")[3]
    ref_iid = sm.OLS(y, X).fit()
    ref_het = sm.OLS(y, X).fit(cov_type="HC1")
    for t in ["agglomeration", *CONTROLS]:
        assert iid.coefs.loc[t, "std_error"] == pytest.approx(ref_iid.bse[t], rel=1e-6)
        assert iid.coefs.loc[t, "p_value"] == pytest.approx(ref_iid.pvalues[t], rel=1e-6)
        assert het.coefs.loc[t, "std_error"] == pytest.approx(ref_het.bse[t], rel=1e-6)
    assert iid.se_type == "iid" and het.se_type == "hetero"


def test_fe_constant_and_r2_follow_the_xtreg_convention(panel):
    res = table3(panel, "nqp", "agglomeration", CONTROLS)[3]
    regs = ["agglomeration", *CONTROLS]
    b = res.coefs.loc[regs, "estimate"].to_numpy()
    const = panel["nqp"].mean() - panel[regs].mean().to_numpy() @ b
    assert res.coefs.loc["constant", "estimate"] == pytest.approx(const, abs=1e-8)
    # the constant's SE: pooled regression of (within + grand mean) variables with a constant
    w = twoway_within(panel, ["nqp", *regs]) + panel[["nqp", *regs]].mean()
    ref = sm.OLS(w["nqp"].to_numpy(), sm.add_constant(w[regs].reset_index(drop=True))).fit(
        cov_type="cluster", cov_kwds={"groups": city_codes(panel)})
    assert ref.params[regs].to_numpy() == pytest.approx(b, abs=1e-8)
    assert res.coefs.loc["constant", "std_error"] == pytest.approx(ref.bse["const"], rel=1e-6)
    # within R2 = 1 - SSR / sum of squared within-transformed y
    d = twoway_within(panel, ["nqp", *regs])
    e = d["nqp"].to_numpy() - d[regs].to_numpy() @ b
    assert res.r2 == pytest.approx(1 - e @ e / (d["nqp"].to_numpy() ** 2).sum(), abs=1e-10)
    assert res.extra["r2_within"] == res.r2
    assert res.extra["r2_overall"] == pytest.approx(
        np.corrcoef(panel["nqp"], panel[regs].to_numpy() @ b)[0, 1] ** 2, abs=1e-10)


def test_table3_matches_linearmodels_panelols(panel):
    res = table3(panel, "nqp", "agglomeration", CONTROLS)[3]
    p = panel.copy()
    p.index = pd.MultiIndex.from_arrays([city_codes(panel), panel.index.get_level_values(1)])
    ref = PanelOLS(p["nqp"], p[["agglomeration", *CONTROLS]], entity_effects=True, time_effects=True).fit()
    assert np.max(np.abs(res.coefs.loc[["agglomeration", *CONTROLS], "estimate"].to_numpy()
                         - ref.params.to_numpy())) < 1e-8
    # linearmodels' rsquared is the R2 after both effects are swept out (its rsquared_within is one-way)
    assert res.r2 == pytest.approx(ref.rsquared, abs=1e-10)


def test_functions_do_not_modify_the_frame(panel):
    before = panel.copy()
    table3(panel, "nqp", "agglomeration", CONTROLS)
    robustness(panel, "nqp", "agglomeration", CONTROLS, municipalities=("110000",))
    heterogeneity(panel, "nqp", "agglomeration", CONTROLS, splitters=["marketization"])
    pd.testing.assert_frame_equal(panel, before)


def test_bad_inputs_are_rejected(panel):
    from bayesnqp.errors import InputError

    with pytest.raises(ValueError, match="se must be"):
        table3(panel, "nqp", "agglomeration", CONTROLS, se="robust")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="column not found"):
        table3(panel, "nqp", "agglomeration", ["nope"])
    holed = panel.copy()
    holed.iloc[3, 0] = np.nan
    with pytest.raises(InputError, match="missing"):
        table3(holed, "nqp", "agglomeration", CONTROLS)


# --------------------------------------------------------------------------------------------------
# Table 4


def test_mechanisms_match_statsmodels(panel):
    res = mechanisms(panel, "agglomeration", ["inno_rd_staff", "factor_pilots"], CONTROLS)
    assert [r.id for r in res] == ["table4_inno_rd_staff", "table4_factor_pilots"]
    X = dummies_design(panel, ["agglomeration", *CONTROLS], True, True)
    for r, ind in zip(res, ["inno_rd_staff", "factor_pilots"]):
        ref = sm.OLS(panel[ind].to_numpy(), X).fit()
        assert r.dep_var == ind
        assert r.coefs.loc["agglomeration", "estimate"] == pytest.approx(ref.params["agglomeration"], abs=1e-8)
        assert r.extra["r2_full"] == pytest.approx(ref.rsquared, abs=1e-10)
    # the simulated mechanism slope is 0.8
    assert abs(res[0].coefs.loc["agglomeration", "estimate"] - 0.8) < 3 * res[0].coefs.loc["agglomeration",
                                                                                            "std_error"]


# --------------------------------------------------------------------------------------------------
# robustness


def test_robustness_variants(panel):
    res = {r.id: r for r in robustness(panel, "nqp", "agglomeration", CONTROLS)}
    assert list(res) == ["robustness_winsorised", "robustness_no_municipalities", "robustness_lagged",
                         "robustness_driscoll_kraay"]
    cols = ["nqp", "agglomeration", *CONTROLS]
    # winsorised: same as the two-way model on a frame clipped by hand at the 1% / 99% quantiles
    clipped = panel[cols].copy()
    for c in cols:
        lo, hi = np.quantile(panel[c], [0.01, 0.99])
        clipped[c] = panel[c].clip(lo, hi)
    assert clipped["nqp"].max() < panel["nqp"].max()
    ref = sm.OLS(clipped["nqp"].to_numpy(), dummies_design(clipped, cols[1:], True, True)).fit()
    assert res["robustness_winsorised"].coefs.loc["agglomeration", "estimate"] == pytest.approx(
        ref.params["agglomeration"], abs=1e-8)
    # municipalities: the two in the fixture are dropped
    assert res["robustness_no_municipalities"].n_obs == (G - 2) * T
    assert res["robustness_no_municipalities"].extra["n_cities_dropped"] == 2
    # lagged: first year drops out; the lag is the previous year's value of the same city
    assert res["robustness_lagged"].n_obs == G * (T - 1)
    lagged = lag_within_city(panel, "agglomeration")
    assert lagged.isna().sum() == G
    np.testing.assert_allclose(lagged.dropna().to_numpy(),
                               panel.groupby(level=0)["agglomeration"].shift(1).dropna().to_numpy())
    lagged_frame = panel[cols].assign(agglomeration=lagged).dropna()
    ref = sm.OLS(lagged_frame["nqp"].to_numpy(), dummies_design(lagged_frame, cols[1:], True, True)).fit()
    assert res["robustness_lagged"].coefs.loc["agglomeration", "estimate"] == pytest.approx(
        ref.params["agglomeration"], abs=1e-8)


def test_lag_within_city_respects_year_gaps():
    idx = pd.MultiIndex.from_tuples([("a", 2013), ("a", 2015), ("a", 2016), ("b", 2013)], names=["city", "year"])
    f = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0]}, index=idx)
    out = lag_within_city(f, "x")
    assert np.isnan(out.iloc[0]) and np.isnan(out.iloc[1]) and out.iloc[2] == 2.0 and np.isnan(out.iloc[3])


def test_winsorise_clips_at_quantiles():
    s = pd.Series(np.arange(101, dtype=float))
    w = winsorise(s)
    assert w.min() == 1.0 and w.max() == 99.0 and (w[1:100] == s[1:100]).all()


def test_driscoll_kraay_matches_hand_sandwich_and_linearmodels(panel):
    res = robustness(panel, "nqp", "agglomeration", CONTROLS)[3]
    lag = dk_default_lag(T)
    assert lag == 2 and res.extra["dk_lag"] == 2
    regs = ["agglomeration", *CONTROLS]
    d = twoway_within(panel, ["nqp", *regs])
    X, y = d[regs].to_numpy(), d["nqp"].to_numpy()
    b = np.linalg.solve(X.T @ X, X.T @ y)
    u = y - X @ b
    scores = X * u[:, None]
    h = pd.DataFrame(scores).groupby(panel.index.get_level_values(1).to_numpy()).sum().to_numpy()  # by year
    S = h.T @ h
    for lg in range(1, lag + 1):
        w = 1 - lg / (lag + 1)
        g = h[lg:].T @ h[:-lg]
        S += w * (g + g.T)
    bread = np.linalg.inv(X.T @ X)
    raw = bread @ S @ bread
    # pyfixest's small-sample factor for DK: (N-1)/(N-k) with all slopes and dummies, times T/(T-1)
    N, K = len(y), len(regs)
    factor = (N - 1) / (N - K - (G - 1) - (T - 1) - 1) * T / (T - 1)
    assert res.extra["small_sample_factor"] == pytest.approx(factor, rel=1e-12)
    se = np.sqrt(np.diag(raw) * factor)
    np.testing.assert_allclose(res.coefs.loc[regs, "std_error"].to_numpy(), se, rtol=1e-6)
    np.testing.assert_allclose(res.coefs.loc[regs, "estimate"].to_numpy(), b, atol=1e-8)
    # linearmodels' Driscoll-Kraay (Bartlett, same bandwidth) is the same sandwich up to one scalar:
    # it scales by N / (N - absorbed effects); the ratio is the same for every coefficient
    p = panel.copy()
    p.index = pd.MultiIndex.from_arrays([city_codes(panel), panel.index.get_level_values(1)])
    lm = PanelOLS(p["nqp"], p[regs], entity_effects=True, time_effects=True).fit(
        cov_type="kernel", kernel="bartlett", bandwidth=lag, debiased=False)
    ratio = np.diag(raw) / lm.std_errors.to_numpy() ** 2
    np.testing.assert_allclose(ratio, (N - G - T + 1) / N, rtol=1e-6)


# --------------------------------------------------------------------------------------------------
# heterogeneity


def test_heterogeneity_difference_equals_difference_of_group_fits(panel):
    (res,) = heterogeneity(panel, "nqp", "agglomeration", CONTROLS, splitters=["marketization"])
    assert res.id == "hetero_marketization" and res.key_term == "difference"
    assert list(res.coefs.index) == ["agglomeration[low]", "agglomeration[high]", "difference"]
    c = res.coefs["estimate"]
    assert c["difference"] == pytest.approx(c["agglomeration[high]"] - c["agglomeration[low]"], abs=1e-8)
    assert res.extra["n_cities"] == {"low": G // 2, "high": G // 2}
    # each group's estimate against statsmodels with dummies on that group's rows
    high, med = median_split(panel, "marketization")
    means = panel["marketization"].groupby(level=0).mean()
    assert med == pytest.approx(np.median(means))
    for grp, mask in (("low", ~high), ("high", high)):
        sub = panel.loc[panel.index.get_level_values(0).isin(mask[mask].index)]
        ref = sm.OLS(sub["nqp"].to_numpy(), dummies_design(sub, ["agglomeration", *CONTROLS], True, True)).fit()
        assert c[f"agglomeration[{grp}]"] == pytest.approx(ref.params["agglomeration"], abs=1e-8)
    # simulated truth: 0.2 (low) and 0.5 (high)
    assert abs(c["difference"] - 0.3) < 3 * res.coefs.loc["difference", "std_error"]
    assert res.coefs.loc["difference", "std_error"] > 0


def test_median_split_ties_go_low():
    idx = pd.MultiIndex.from_product([["a", "b", "c", "d", "e"], [2013, 2014]], names=["city", "year"])
    f = pd.DataFrame({"s": [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]}, index=idx, dtype=float)
    high, med = median_split(f, "s")
    assert med == 3.0
    assert high.to_dict() == {"a": False, "b": False, "c": False, "d": True, "e": True}
