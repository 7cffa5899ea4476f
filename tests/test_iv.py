"""2SLS with the distance x time instrument, and the hand-written weak-IV statistics, against
linearmodels IV2SLS, statsmodels OLS with explicit dummies and dense hand computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from linearmodels.iv import IV2SLS
from scipy import stats

from bayesnqp.frequentist import iv_2sls
from bayesnqp.frequentist.iv import anderson_rubin_set, cragg_donald_f, kp_rk_statistic, partial_out
from bayesnqp.frequentist.panel import feols, prepare

G, T = 50, 6
CONTROLS = ["develop", "finance"]


def make_iv_panel(seed: int = 3, strength: float = 1.0) -> pd.DataFrame:
    """City-year panel where distance x time shifts the treatment (first stage slope ``strength`` per
    1000 km per year) and an unobserved shock u moves both treatment and outcome (true effect 0.3)."""
    rng = np.random.default_rng(seed)
    cities = sorted(f"{130100 + 100 * i}" for i in range(G))
    idx = pd.MultiIndex.from_product([cities, np.arange(2013, 2013 + T)], names=["city", "year"])
    ci = np.repeat(np.arange(G), T)
    ti = np.tile(np.arange(T), G)
    alpha = rng.normal(size=G)[ci]
    tau = rng.normal(size=T)[ti]
    dist = np.repeat(rng.uniform(50, 3000, G), T)
    u = rng.normal(size=ci.size)
    c = {k: rng.normal(size=ci.size) + 0.2 * alpha for k in CONTROLS}
    x = (0.5 * alpha + tau - strength * dist / 1000 * ti * (1 + 0.3 * (ti == 2)) + 0.3 * c["develop"] + u
         + rng.normal(size=ci.size))
    y = 1 + 0.3 * x + 0.2 * c["develop"] - 0.1 * c["finance"] + alpha + tau + u + rng.normal(size=ci.size)
    return pd.DataFrame({"nqp": y, "agglomeration": x, **c, "dist_hangzhou": dist}, index=idx)


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    return make_iv_panel()


@pytest.fixture(scope="module")
def results(panel):
    return {r.id: r for r in iv_2sls(panel, "nqp", "agglomeration", CONTROLS, "dist_hangzhou")}


def instruments(panel: pd.DataFrame, kind: str) -> pd.DataFrame:
    d = panel["dist_hangzhou"].to_numpy() / 1000
    yr = panel.index.get_level_values(1).to_numpy()
    if kind == "trend":
        return pd.DataFrame({"z": d * (yr - yr.min())})
    return pd.DataFrame({f"z{t}": d * (yr == t) for t in np.unique(yr)[1:]})


def dummies(panel: pd.DataFrame) -> np.ndarray:
    """Constant + city and year dummies (dense): the reference partials these out by least squares."""
    c = pd.get_dummies(panel.index.get_level_values(0), drop_first=True, dtype=float).to_numpy()
    y = pd.get_dummies(panel.index.get_level_values(1), drop_first=True, dtype=float).to_numpy()
    return np.column_stack([np.ones(len(panel)), c, y])


def dense_partial(panel: pd.DataFrame, cols: np.ndarray) -> np.ndarray:
    """Residuals on [dummies, controls] by dense least squares (independent of the within transform)."""
    W = np.column_stack([dummies(panel), panel[CONTROLS].to_numpy()])
    return partial_out(cols, W)


def clusters(panel):
    return pd.factorize(panel.index.get_level_values(0))[0]


@pytest.mark.parametrize("rid,kind", [("iv_2sls", "years"), ("iv_2sls_trend", "trend")])
def test_2sls_matches_linearmodels_on_demeaned_data(panel, results, rid, kind):
    res = results[rid]
    Z = instruments(panel, kind)
    cols = np.column_stack([panel[["nqp", "agglomeration", *CONTROLS]].to_numpy(), Z.to_numpy()])
    dem = partial_out(cols, dummies(panel))  # two-way FE swept out by dense dummies
    y, x, w, z = dem[:, 0], dem[:, [1]], dem[:, 2:4], dem[:, 4:]
    ref = IV2SLS(y, pd.DataFrame(w, columns=CONTROLS), pd.DataFrame(x, columns=["agglomeration"]),
                 pd.DataFrame(z)).fit(cov_type="clustered", clusters=clusters(panel), debiased=False)
    names = ["agglomeration", *CONTROLS]
    b = res.coefs.loc[names, "estimate"].to_numpy()
    np.testing.assert_allclose(b, ref.params[names].to_numpy(), atol=1e-8)
    # linearmodels (debiased=False) has no small-sample factor; pyfixest multiplies by
    # G/(G-1) (N-1)/(N-k), k = slopes + intercept + T-1 year dummies (city dummies nested in clusters)
    N, k = len(panel), 1 + len(CONTROLS) + 1 + (T - 1)
    factor = G / (G - 1) * (N - 1) / (N - k)
    assert res.extra["small_sample_factor"] == pytest.approx(factor, rel=1e-12)
    np.testing.assert_allclose(res.coefs.loc[names, "std_error"].to_numpy(),
                               ref.std_errors[names].to_numpy() * np.sqrt(factor), rtol=1e-6)
    assert res.n_obs == N and res.fixed_effects == ("city", "year")
    # the simulated effect is 0.3 (OLS is biased upward by the shared shock u)
    assert abs(res.coefs.loc["agglomeration", "estimate"] - 0.3) < 3 * res.coefs.loc["agglomeration", "std_error"]
    fs = res.tables["first_stage"]
    assert len(fs) == Z.shape[1] + len(CONTROLS)


@pytest.mark.parametrize("rid,kind", [("iv_2sls", "years"), ("iv_2sls_trend", "trend")])
def test_weak_iv_statistics_against_hand_computation(panel, results, rid, kind):
    ex = results[rid].extra
    Z = instruments(panel, kind).to_numpy()
    L1 = Z.shape[1]
    N = len(panel)
    x = panel[["agglomeration"]].to_numpy()
    Xfull = np.column_stack([Z, dummies(panel), panel[CONTROLS].to_numpy()])
    L = Xfull.shape[1]
    assert ex["n_instruments"] == L1 and ex["n_instruments_total_L"] == L

    # Cragg-Donald F (one endogenous regressor) = classical F of the excluded instruments in the first
    # stage with every dummy and control entered explicitly
    fs = sm.OLS(x[:, 0], Xfull).fit()
    R = np.zeros((L1, L))
    R[:, :L1] = np.eye(L1)
    f_iid = float(np.squeeze(fs.f_test(R).fvalue))
    assert ex["cragg_donald_F"] == pytest.approx(f_iid, rel=1e-8)

    # KP rk Wald chi2 = cluster-robust Wald statistic of the excluded instruments, no small-sample factor
    fs_cl = sm.OLS(x[:, 0], Xfull).fit(cov_type="cluster", cov_kwds={"groups": clusters(panel),
                                                                     "use_correction": False})
    pi = fs_cl.params[:L1]
    V = fs_cl.cov_params()[:L1, :L1]
    wald = float(pi @ np.linalg.solve(V, pi))
    assert ex["kp_rk_wald_chi2"] == pytest.approx(wald, rel=1e-6)
    assert ex["kp_rk_wald_F"] == pytest.approx(wald / (N - 1) * (N - L) * (G - 1) / G / L1, rel=1e-6)

    # first-stage robust F: the same Wald statistic / L1 with the CRV1 factor G/(G-1)(N-1)/(N-k)
    k = L1 + len(CONTROLS) + 1 + (T - 1)
    factor = G / (G - 1) * (N - 1) / (N - k)
    assert ex["first_stage_small_sample_factor"] == pytest.approx(factor, rel=1e-12)
    assert ex["first_stage_F"] == pytest.approx(wald / L1 / factor, rel=1e-6)

    # KP rk LM (one endogenous regressor) = robust score statistic with the scores under the null:
    # x'Z (sum_g Z_g' x_g x_g' Z_g)^-1 Z'x on the partialled data
    part = dense_partial(panel, np.column_stack([x, Z]))
    xp, zp = part[:, 0], part[:, 1:]
    s = pd.DataFrame(zp * xp[:, None]).groupby(clusters(panel)).sum().to_numpy()
    lm = float((zp.T @ xp) @ np.linalg.solve(s.T @ s, zp.T @ xp))
    assert ex["kp_rk_lm"] == pytest.approx(lm, rel=1e-6)
    assert ex["kp_rk_lm_p"] == pytest.approx(stats.chi2.sf(lm, L1), rel=1e-6)

    # effective F (Montiel Olea-Pflueger) with the first stage's clustered covariance
    Vf = V * factor
    eff = float(pi @ (zp.T @ zp) @ pi / np.trace(Vf @ (zp.T @ zp)))
    assert ex["effective_F"] == pytest.approx(eff, rel=1e-6)
    if L1 == 1:
        assert ex["effective_F"] == pytest.approx(ex["first_stage_F"], rel=1e-10)
        assert "16.38" in ex["stock_yogo"]
    # the simulated first stage is strong
    assert ex["first_stage_F"] > 10 and ex["kp_rk_lm_p"] < 0.01


def test_kp_and_cd_reduce_for_one_instrument():
    """One endogenous regressor, one instrument, no clusters: KP rk Wald = the HC0 t^2 of the
    instrument, CD F = the classical t^2 (L = 1 instrument in all, no other regressors)."""
    rng = np.random.default_rng(0)
    n = 200
    z = rng.normal(size=(n, 1))
    x = 0.3 * z + rng.normal(size=(n, 1)) * (1 + np.abs(z))
    ols = sm.OLS(x[:, 0], z).fit(cov_type="HC0")
    assert kp_rk_statistic(x, z, x - z * ols.params[0], None) == pytest.approx(ols.tvalues[0] ** 2, rel=1e-8)
    classical = sm.OLS(x[:, 0], z).fit()
    assert cragg_donald_f(x, z, 1) == pytest.approx(classical.tvalues[0] ** 2, rel=1e-8)


def test_kp_rk_with_two_endogenous_is_scale_invariant():
    """With K1 = 2 the rk statistic is invariant to rescaling the endogenous variables and the
    instruments (it is a rank test of the first-stage matrix)."""
    rng = np.random.default_rng(1)
    n, l1 = 300, 3
    z = rng.normal(size=(n, l1))
    pi = np.array([[1.0, 0.2], [0.5, 0.1], [0.0, 0.3]])
    x = z @ pi + rng.normal(size=(n, 2))
    resid = x - z @ np.linalg.lstsq(z, x, rcond=None)[0]
    a = kp_rk_statistic(x, z, resid, None)
    scale_x = np.array([3.0, 0.1])
    scale_z = np.array([2.0, 5.0, 0.5])
    b = kp_rk_statistic(x * scale_x, z * scale_z, resid * scale_x, None)
    assert a == pytest.approx(b, rel=1e-8)
    assert a > 0


def test_anderson_rubin_confidence_set_inverts_the_test(panel, results):
    ex = results["iv_2sls_trend"].extra
    assert ex["ar_ci_kind"] == "bounded interval"
    lo, hi = ex["ar_ci"][0]
    assert ex["ar_ci_text"] == f"[{lo:.4g}, {hi:.4g}]"
    assert lo < results["iv_2sls_trend"].coefs.loc["agglomeration", "estimate"] < hi
    data = prepare(panel, ["nqp", "agglomeration", *CONTROLS, "dist_hangzhou"])
    data["z"] = instruments(panel, "trend")["z"].to_numpy()
    dfree = G - 1
    crit = stats.t.ppf(0.975, dfree) ** 2

    def ar(b0: float) -> float:
        # the AR statistic straight from pyfixest: t^2 of z in the regression of y - b0 x on z
        data["u"] = data["v0"] - b0 * data["v1"]
        fit = feols("u ~ z + v2 + v3 | _city_id + _year", data, {"CRV1": "_city_id"})
        return float(fit.tidy().loc["z", "t value"] ** 2)

    assert ar(lo) == pytest.approx(crit, rel=1e-6)
    assert ar(hi) == pytest.approx(crit, rel=1e-6)
    for b0 in np.linspace(lo - 1, hi + 1, 9):
        inside = lo <= b0 <= hi
        assert (ar(b0) <= crit) == inside
    # AR test of beta = 0 is the reduced-form test
    assert ex["ar_stat_beta0"] == pytest.approx(ar(0.0), rel=1e-6)
    assert ex["ar_p_value_beta0"] == pytest.approx(2 * stats.t.sf(np.sqrt(ar(0.0)), dfree), rel=1e-6)


def test_anderson_rubin_set_is_unbounded_for_a_weak_instrument():
    panel = make_iv_panel(seed=11, strength=0.0)
    (res,) = [r for r in iv_2sls(panel, "nqp", "agglomeration", CONTROLS, "dist_hangzhou")
              if r.id == "iv_2sls_trend"]
    assert res.extra["ar_ci_kind"] in ("whole real line", "union of two rays")
    assert any(np.isinf(v) for iv in res.extra["ar_ci"] for v in iv)
    assert "inf)" in res.extra["ar_ci_text"]
    # the summary JSON turns infinite bounds into null
    s = res.summary()
    assert None in [v for iv in s["extra"]["ar_ci"] for v in iv]


def test_anderson_rubin_closed_form_on_toy_data():
    """Grid inversion of the AR statistic agrees with the closed-form set (hetero errors)."""
    rng = np.random.default_rng(5)
    n = 400
    z = rng.normal(size=n)
    v = rng.normal(size=n)
    x = 0.4 * z + v
    y = 1.0 * x + 0.5 * v + rng.normal(size=n)
    factor, crit = n / (n - 1), stats.t.ppf(0.975, n - 1) ** 2
    out = anderson_rubin_set(y, x, z, se="hetero", clusters=None, factor=factor, n_minus_1=n - 1, crit=crit)
    grid = np.linspace(-3, 5, 2001)
    accepted = np.array([out["ar_stat"](b) <= crit for b in grid])
    lo, hi = out["intervals"][0]
    np.testing.assert_array_equal(accepted, (grid >= lo) & (grid <= hi))
    # the AR statistic equals statsmodels' HC1-type t^2 of z in y - b x on z (no intercept)
    b0 = 0.7
    ref = sm.OLS(y - b0 * x, z[:, None]).fit(cov_type="HC0")
    assert out["ar_stat"](b0) == pytest.approx(ref.tvalues[0] ** 2 / factor, rel=1e-8)


def test_iid_errors_report_anderson_lm(panel):
    res = {r.id: r for r in iv_2sls(panel, "nqp", "agglomeration", CONTROLS, "dist_hangzhou", se="iid")}
    ex = res["iv_2sls_trend"].extra
    assert res["iv_2sls_trend"].se_type == "iid"
    assert "anderson_lm" in ex and "kp_rk_lm" not in ex
    # Anderson LM = N x squared canonical correlation = N R2 of the partialled first stage
    Z = instruments(panel, "trend").to_numpy()
    part = dense_partial(panel, np.column_stack([panel[["agglomeration"]].to_numpy(), Z]))
    r2 = (part[:, 0] @ part[:, 1]) ** 2 / ((part[:, 0] @ part[:, 0]) * (part[:, 1] @ part[:, 1]))
    assert ex["anderson_lm"] == pytest.approx(len(panel) * r2, rel=1e-8)


def test_hetero_errors_kp_wald_is_hc0_wald(panel):
    res = {r.id: r for r in iv_2sls(panel, "nqp", "agglomeration", CONTROLS, "dist_hangzhou", se="hetero")}
    ex = res["iv_2sls"].extra
    Z = instruments(panel, "years").to_numpy()
    L1 = Z.shape[1]
    Xfull = np.column_stack([Z, dummies(panel), panel[CONTROLS].to_numpy()])
    fs = sm.OLS(panel["agglomeration"].to_numpy(), Xfull).fit(cov_type="HC0")
    pi = fs.params[:L1]
    wald = float(pi @ np.linalg.solve(fs.cov_params()[:L1, :L1], pi))
    assert ex["kp_rk_wald_chi2"] == pytest.approx(wald, rel=1e-6)
    N, L = Xfull.shape
    assert ex["kp_rk_wald_F"] == pytest.approx(wald / N * (N - L) / L1, rel=1e-6)
    assert res["iv_2sls"].se_type == "hetero"
