"""Spatial analyses against simulated truth, dense linear algebra, statsmodels and PySAL spreg / esda."""

from __future__ import annotations

import json
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy import optimize, stats

from bayesnqp.data.weights import SpatialWeights
from bayesnqp.frequentist.spatial import (
    PAPER_SDM_RHO,
    _align,
    _lag,
    _lm_statistics,
    _Spectrum,
    _year_dummies,
    effects_at,
    lm_tests,
    log_det,
    moran_by_year,
    sdm_ml,
)

REGRESSORS = ["agglomeration", "develop"]
TRUE = {"rho": 0.3, "beta": (1.0, -0.5), "theta": (-0.6, 0.3)}
T_YEARS = 8


def _graph() -> SpatialWeights:
    """10 x 10 queen lattice, a 4-city component and one island (105 cities, 3 components)."""
    import libpysal

    n = 105
    dense = np.zeros((n, n))
    dense[:100, :100] = libpysal.weights.lat2W(10, 10, rook=False).full()[0]
    for a, b in [(100, 101), (101, 102), (102, 103), (100, 102)]:
        dense[a, b] = dense[b, a] = 1.0
    ids = [f"{110000 + 100 * i:06d}" for i in range(n)]
    return SpatialWeights.from_dense(ids, dense)


def _simulate(w: SpatialWeights, seed: int = 1, sigma: float = 0.5) -> pd.DataFrame:
    """SDM panel with city effects correlated with x and year effects, shuffled row order."""
    rng = np.random.default_rng(seed)
    n, T = w.n, T_YEARS
    W = w.row_standardised.toarray()
    beta, theta = np.array(TRUE["beta"]), np.array(TRUE["theta"])
    mu = rng.normal(size=n)
    alpha = rng.normal(size=T)
    X = rng.normal(size=(T, n, 2)) + 0.5 * mu[None, :, None]
    s_inv = np.linalg.inv(np.eye(n) - TRUE["rho"] * W)
    years = np.arange(2013, 2013 + T)
    parts = []
    for t in range(T):
        y = s_inv @ (X[t] @ beta + (W @ X[t]) @ theta + mu + alpha[t] + sigma * rng.normal(size=n))
        parts.append(pd.DataFrame({"city": list(w.ids), "year": years[t], "nqp": y,
                                   "agglomeration": X[t, :, 0], "develop": X[t, :, 1]}))
    frame = pd.concat(parts).set_index(["city", "year"]).sort_index()
    return frame


@pytest.fixture(scope="module")
def w() -> SpatialWeights:
    return _graph()


@pytest.fixture(scope="module")
def frame(w) -> pd.DataFrame:
    return _simulate(w)


@pytest.fixture(scope="module")
def fits(frame, w):
    return {m: sdm_ml(frame, "nqp", "agglomeration", ["develop"], w, draws=1000, seed=7, method=m)
            for m in ("lee-yu", "direct")}


def _stack(frame: pd.DataFrame, w: SpatialWeights):
    """Year-major arrays built here without the module's alignment code."""
    ordered = frame.reindex(pd.MultiIndex.from_product([list(w.ids), sorted(set(frame.index.get_level_values(1)))]))
    T = ordered.index.get_level_values(1).nunique()
    def col(c):
        return ordered[c].to_numpy().reshape(w.n, T).T.reshape(-1)
    return col, T


# ---- weights-level facts ---------------------------------------------------------------------------


def test_graph_and_rho_bounds(w, fits):
    assert w.islands == ("120400",) and w.n_components == 3
    eig = np.linalg.eigvals(w.row_standardised.toarray())  # general solver, not the symmetric trick
    lo = 1.0 / eig.real.min()
    sdm = fits["lee-yu"][0]
    assert sdm.extra["rho_bounds"] == pytest.approx([lo, 1.0], abs=1e-10)
    assert -1.5 < lo < -1.2  # a queen lattice is not bipartite, so lambda_min > -1
    assert sdm.extra["paper_rho"] == PAPER_SDM_RHO
    assert sdm.extra["paper_rho_in_bounds"] is False and sdm.extra["rho_in_bounds"] is True
    assert any("outside the admissible interval" in note for note in sdm.notes)


def test_log_det_matches_slogdet(w):
    W = w.row_standardised.toarray()
    lo, _ = w.rho_bounds
    worst = 0.0
    for rho in [lo * 0.999, -0.9, -0.3, 0.0, 0.3, 0.7, 0.999]:
        sign, ref = np.linalg.slogdet(np.eye(w.n) - rho * W)
        assert sign > 0
        worst = max(worst, abs(float(log_det(rho, w.eigenvalues)) - ref))
    assert worst < 1e-9


def test_spectrum_rebuilds_w(w):
    spec = _Spectrum.of(w)
    np.testing.assert_allclose(spec.matfun(spec.lam), w.row_standardised.toarray(), atol=1e-12)
    np.testing.assert_allclose(spec.lam, w.eigenvalues, atol=1e-12)


# ---- SDM ------------------------------------------------------------------------------------------


def test_sdm_recovers_truth(fits):
    c = fits["lee-yu"][0].coefs
    truth = {"agglomeration": 1.0, "develop": -0.5, "W_agglomeration": -0.6, "W_develop": 0.3, "rho": 0.3}
    for term, value in truth.items():
        z = (c.loc[term, "estimate"] - value) / c.loc[term, "std_error"]
        assert abs(z) < 3.0, (term, z)
    # sigma = 0.5 -> sigma2 = 0.25
    assert abs(c.loc["sigma2", "estimate"] - 0.25) < 3 * c.loc["sigma2", "std_error"]
    assert list(c.index) == ["agglomeration", "develop", "W_agglomeration", "W_develop", "rho", "sigma2"]


def test_direct_method_matches_spreg(frame, w, fits):
    """spreg.Panel_FE_Lag / Panel_FE_Error on [X, WX, year dummies] is the dummy-variable ML (Elhorst 2003).

    Year dummies, not time-demeaned inputs: with a row-standardised W whose column sums are not 1,
    demeaning by year does not commute with W, so time-demeaned inputs define another estimator.
    """
    import spreg

    col, T = _stack(frame, w)
    n = w.n
    X = np.column_stack([col(c) for c in REGRESSORS])
    WX = np.column_stack([sp.kron(sp.identity(T), w.row_standardised) @ X[:, j] for j in range(2)])
    D = _year_dummies(n, T)
    y = col("nqp")[:, None]
    lw = w.to_libpysal()
    lw.transform = "r"
    sdm, sar, sem, _ = fits["direct"]

    ref = spreg.Panel_FE_Lag(y, np.column_stack([X, WX, D]), lw, epsilon=1e-10)
    est = sdm.coefs["estimate"]
    assert np.abs(ref.betas[:4, 0] - est.iloc[:4].to_numpy()).max() < 1e-6
    assert abs(ref.betas[-1, 0] - est["rho"]) < 1e-6
    assert abs(float(np.squeeze(ref.sig2)) - est["sigma2"]) < 1e-8
    se_ref = np.sqrt(np.diag(ref.vm))[[0, 1, 2, 3, -1]]
    np.testing.assert_allclose(sdm.coefs["std_error"].iloc[:5].to_numpy(), se_ref, rtol=1e-5)
    # spreg's logll omits -nT/2 log(nT) (it profiles log SSR, not log SSR/nT)
    assert sdm.extra["log_likelihood"] == pytest.approx(ref.logll + n * T / 2 * np.log(n * T), abs=1e-6)

    ref = spreg.Panel_FE_Lag(y, np.column_stack([X, D]), lw, epsilon=1e-10)
    assert np.abs(ref.betas[:2, 0] - sar.coefs["estimate"].iloc[:2].to_numpy()).max() < 1e-6
    assert abs(ref.betas[-1, 0] - sar.coefs.loc["rho", "estimate"]) < 1e-6
    np.testing.assert_allclose(sar.coefs["std_error"].iloc[:3].to_numpy(), np.sqrt(np.diag(ref.vm))[[0, 1, -1]],
                               rtol=1e-5)

    ref = spreg.Panel_FE_Error(y, np.column_stack([X, D]), lw, epsilon=1e-10)
    assert np.abs(ref.betas[:2, 0] - sem.coefs["estimate"].iloc[:2].to_numpy()).max() < 1e-6
    assert abs(ref.betas[-1, 0] - sem.coefs.loc["lambda", "estimate"]) < 1e-6
    np.testing.assert_allclose(sem.coefs["std_error"].iloc[:3].to_numpy(), np.sqrt(np.diag(ref.vm))[[0, 1, -1]],
                               rtol=1e-5)


def test_lee_yu_matches_brute_force_likelihood(frame, w, fits):
    """Full log-likelihood of the Lee-Yu transformed model (F_T' x I_n, year dummies), maximised numerically
    with a dense slogdet, gives the same rho, beta, theta and ML sigma2."""
    col, T = _stack(frame, w)
    n = w.n
    W = w.row_standardised.toarray()
    # orthonormal basis of the complement of the constant in R^T
    vals, vecs = np.linalg.eigh(np.eye(T) - np.ones((T, T)) / T)
    F = vecs[:, vals > 0.5]
    tr = np.kron(F.T, np.eye(n))
    WW = np.kron(np.eye(T), W)
    X = np.column_stack([col(c) for c in REGRESSORS])
    Z = tr @ np.column_stack([X, WW @ X, _year_dummies(n, T)])
    ys, wys = tr @ col("nqp"), tr @ (WW @ col("nqp"))
    N = ys.size

    def negll(par):
        rho, delta, log_s2 = par[0], par[1:-1], par[-1]
        sign, ld = np.linalg.slogdet(np.eye(n) - rho * W)
        if sign <= 0:
            return 1e10
        r = ys - rho * wys - Z @ delta
        return 0.5 * N * (np.log(2 * np.pi) + log_s2) + r @ r / (2 * np.exp(log_s2)) - (T - 1) * ld

    start_delta, *_ = np.linalg.lstsq(Z, ys, rcond=None)
    start = np.concatenate([[0.0], start_delta, [np.log(np.var(ys))]])
    res = optimize.minimize(negll, start, method="BFGS", options={"gtol": 1e-7, "maxiter": 2000})
    sdm = fits["lee-yu"][0]
    est = sdm.coefs["estimate"]
    assert abs(res.x[0] - est["rho"]) < 1e-4
    assert np.abs(res.x[1:5] - est.iloc[:4].to_numpy()).max() < 1e-4
    assert np.exp(res.x[-1]) == pytest.approx(sdm.extra["sigma2_ml"], rel=1e-4)
    assert -res.fun == pytest.approx(sdm.extra["log_likelihood"], abs=1e-5)
    # reported sigma2 carries the (n-1)/n correction for the estimated year effects
    assert est["sigma2"] == pytest.approx(sdm.extra["sigma2_ml"] * n / (n - 1), rel=1e-12)


def test_effects_match_dense_inverse(w, fits):
    sdm = fits["lee-yu"][0]
    c = sdm.coefs["estimate"]
    W = w.row_standardised.toarray()
    s_inv = np.linalg.inv(np.eye(w.n) - c["rho"] * W)
    table = sdm.tables["effects"]
    for name in REGRESSORS:
        S = s_inv @ (c[name] * np.eye(w.n) + c[f"W_{name}"] * W)
        direct, total = np.trace(S) / w.n, S.sum() / w.n
        assert table.loc[name, "direct_estimate"] == pytest.approx(direct, abs=1e-12)
        assert table.loc[name, "total_estimate"] == pytest.approx(total, abs=1e-12)
        assert table.loc[name, "indirect_estimate"] == pytest.approx(total - direct, abs=1e-12)
        theta_part = c[f"W_{name}"] * np.trace(s_inv @ W) / w.n
        assert table.loc[name, "theta_share_of_direct"] == pytest.approx(theta_part / direct, abs=1e-12)
    assert sdm.extra["effects"]["agglomeration"]["total_estimate"] == table.loc["agglomeration", "total_estimate"]


def test_effect_standard_errors_match_delta_method(w, fits):
    """Simulation SEs of the effects agree with delta-method SEs (numerical gradient, same covariance)."""
    sdm = fits["lee-yu"][0]
    spec = _Spectrum.of(w)
    names = ["agglomeration", "develop", "W_agglomeration", "W_develop", "rho"]
    par = sdm.coefs.loc[names, "estimate"].to_numpy()
    V = sdm.tables["vcov"].loc[names, names].to_numpy()
    np.testing.assert_allclose(np.sqrt(np.diag(V)), sdm.coefs.loc[names, "std_error"].to_numpy(), rtol=1e-12)
    eps = 1e-6
    table = sdm.tables["effects"]
    for j, name in enumerate(REGRESSORS):
        for kind in ("direct", "indirect", "total"):
            def f(p, kind=kind, j=j):
                return float(effects_at(p[:2], p[2:4], p[4], spec)[kind][j])

            grad = np.array([(f(par + eps * e) - f(par - eps * e)) / (2 * eps) for e in np.eye(5)])
            delta_se = float(np.sqrt(grad @ V @ grad))
            assert table.loc[name, f"{kind}_std_error"] == pytest.approx(delta_se, rel=0.10), (name, kind)


def test_methods_share_point_estimates(frame, w, fits):
    """Lee-Yu and direct concentrated likelihoods are proportional: same rho and slopes, sigma2 rescaled."""
    n, T = w.n, T_YEARS
    for j in range(3):
        a, b = fits["lee-yu"][j].coefs["estimate"], fits["direct"][j].coefs["estimate"]
        np.testing.assert_allclose(a.iloc[:-1].to_numpy(), b.iloc[:-1].to_numpy(), atol=1e-7)
        assert a["sigma2"] == pytest.approx(b["sigma2"] * n * T / ((n - 1) * (T - 1)), rel=1e-6)
    # larger sigma2 -> larger standard errors under the Lee-Yu correction
    assert (fits["lee-yu"][0].coefs["std_error"] > fits["direct"][0].coefs["std_error"]).all()


def test_weights_order_does_not_change_results(frame, w, fits):
    """The panel is aligned to weights.ids internally: reversing the weights' order changes nothing."""
    w2 = w.subset(list(reversed(w.ids)))
    res = sdm_ml(frame, "nqp", "agglomeration", ["develop"], w2, draws=10, seed=7)
    for j in range(4):
        pd.testing.assert_series_equal(res[j].coefs["estimate"], fits["lee-yu"][j].coefs["estimate"], atol=1e-8)
    np.testing.assert_allclose(res[0].tables["effects"]["total_estimate"],
                               fits["lee-yu"][0].tables["effects"]["total_estimate"], atol=1e-10)
    m1 = moran_by_year(frame, "agglomeration", w, permutations=0)
    m2 = moran_by_year(frame, "agglomeration", w2, permutations=0)
    np.testing.assert_allclose(m1.coefs["estimate"], m2.coefs["estimate"], atol=1e-12)


def test_slx_matches_statsmodels_dummies(frame, w, fits):
    import statsmodels.formula.api as smf

    data = frame.reset_index()
    panel = _align(frame, REGRESSORS, w)
    WX = _lag(w.row_standardised, np.stack([panel.data[c] for c in REGRESSORS], -1))
    lagged = pd.DataFrame({"city": np.tile(list(w.ids), panel.T), "year": np.repeat(panel.years, w.n),
                           "W_agglomeration": WX[..., 0].ravel(), "W_develop": WX[..., 1].ravel()})
    data = data.merge(lagged, on=["city", "year"])
    ref = smf.ols("nqp ~ agglomeration + develop + W_agglomeration + W_develop + C(city) + C(year)", data).fit()
    slx = fits["lee-yu"][3]
    for term in ["agglomeration", "develop", "W_agglomeration", "W_develop"]:
        assert slx.coefs.loc[term, "estimate"] == pytest.approx(ref.params[term], abs=1e-10)
        assert slx.coefs.loc[term, "std_error"] == pytest.approx(ref.bse[term], rel=1e-8)
    assert slx.id == "slx_ols" and slx.key_term == "agglomeration"


def test_result_ids_and_summary(fits):
    sdm, sar, sem, slx = fits["lee-yu"]
    assert [r.id for r in fits["lee-yu"]] == ["sdm_ml", "sar_ml", "sem_ml", "slx_ols"]
    assert "W_agglomeration" not in sar.coefs.index and "lambda" in sem.coefs.index
    eff = sdm.tables["effects"]
    for col in ["direct_estimate", "indirect_std_error", "total_p_value", "total_ci_low", "direct_ci_high",
                "theta_share_of_direct"]:
        assert col in eff.columns
    assert sdm.extra["effects_draws"]["draws"] == 1000
    block = sdm.summary()
    json.dumps(block, allow_nan=False)  # the summary block must be plain JSON
    assert block["key_term"] == "agglomeration" and block["estimate"] == sdm.coefs.loc["agglomeration", "estimate"]
    # negative spillover of agglomeration (theta = -0.6) shows up as a negative indirect effect
    assert eff.loc["agglomeration", "indirect_ci_high"] < 0


def test_sdm_rejects_bad_method(frame, w):
    with pytest.raises(ValueError, match="method"):
        sdm_ml(frame, "nqp", "agglomeration", ["develop"], w, method="dummies")  # type: ignore[arg-type]


# ---- validation ----------------------------------------------------------------------------------


def test_mismatched_cities_are_named(frame, w):
    fewer = w.subset([c for c in w.ids if c != "110500"])
    with pytest.raises(ValueError, match="in the panel but not in the weights: \\['110500'\\]"):
        sdm_ml(frame, "nqp", "agglomeration", ["develop"], fewer)
    with pytest.raises(ValueError, match="in the weights but not in the panel: \\['110500'\\]"):
        moran_by_year(frame.drop(index="110500", level=0), "agglomeration", w)
    with pytest.raises(ValueError, match="not balanced"):
        lm_tests(frame.drop(index=("110500", 2014)), "nqp", REGRESSORS, w)


def test_caller_frame_untouched(frame, w):
    before = frame.copy()
    moran_by_year(frame, "agglomeration", w, permutations=9)
    lm_tests(frame, "nqp", REGRESSORS, w)
    pd.testing.assert_frame_equal(frame, before)


# ---- Moran's I ------------------------------------------------------------------------------------


def test_moran_matches_formula_and_esda(w):
    import esda

    rng = np.random.default_rng(5)
    n = w.n
    grid = np.arange(100)
    smooth = np.concatenate([grid // 10 + grid % 10, [3.0, 4.0, 5.0, 6.0, 0.0]])  # strongly clustered
    rows = []
    stripes = np.concatenate([(-1.0) ** (grid // 10), [1.0, -1.0, 1.0, -1.0, 0.0]])  # negative autocorrelation
    for year in range(2015, 2019):
        base = stripes if year == 2018 else smooth
        x = base + rng.normal(size=n) * (50.0 if year == 2017 else 0.3)
        rows += [(c, year, v) for c, v in zip(w.ids, x)]
    frame = pd.DataFrame(rows, columns=["city", "year", "agglomeration"]).set_index(["city", "year"]).sort_index()
    res = moran_by_year(frame, "agglomeration", w, permutations=999, seed=11)
    assert res.id == "moran_agglomeration" and res.key_term == "2015"
    W = w.row_standardised.toarray()
    lw = w.to_libpysal()
    for year in ["2015", "2016", "2017", "2018"]:
        x = frame.xs(int(year), level="year").loc[list(w.ids), "agglomeration"].to_numpy()
        e = x - x.mean()
        direct = n / W.sum() * (e @ W @ e) / (e @ e)
        assert res.coefs.loc[year, "estimate"] == pytest.approx(direct, abs=1e-12)
        np.random.seed(0)  # esda permutes with numpy's global state
        ref = esda.Moran(x, lw, permutations=999)
        assert res.coefs.loc[year, "statistic"] == pytest.approx(ref.z_norm, abs=1e-12)
        assert res.extra["p_norm"][year] == pytest.approx(ref.p_norm, abs=1e-12)
        assert res.extra["EI"][year] == pytest.approx(-1 / (n - 1))
        assert abs(res.coefs.loc[year, "p_value"] - ref.p_sim) < 0.06
    assert res.coefs.loc["2015", "p_value"] == pytest.approx(1 / 1000)
    assert res.coefs.loc["2017", "p_value"] > 0.01  # noise dominates in this year
    # esda's p_sim is folded: a strongly negative I is as extreme as a strongly positive one
    assert res.coefs.loc["2018", "estimate"] < -0.2 and res.coefs.loc["2018", "p_value"] == pytest.approx(1 / 1000)
    again = moran_by_year(frame, "agglomeration", w, permutations=999, seed=11)
    pd.testing.assert_frame_equal(again.coefs, res.coefs)


# ---- LM tests -------------------------------------------------------------------------------------


def _two_way(v: np.ndarray, n: int, T: int) -> np.ndarray:
    a = v.reshape((T, n) + v.shape[1:])
    return (a - a.mean(0, keepdims=True) - a.mean(1, keepdims=True) + a.mean((0, 1), keepdims=True)).reshape(v.shape)


def test_lm_tests_against_spreg_and_dense(frame, w):
    import spreg

    col, T = _stack(frame, w)
    n = w.n
    y = _two_way(col("nqp"), n, T)
    X = _two_way(np.column_stack([col(c) for c in REGRESSORS]), n, T)
    lw = w.to_libpysal()
    lw.transform = "r"
    # spreg adds a constant and uses sigma2 = e'e / (N - k); feed the helper the same design
    Xc = np.column_stack([np.ones(n * T), X])
    mine = _lm_statistics(y, Xc, sp.csr_array(w.row_standardised), T, sigma2_divisor=n * T - Xc.shape[1])
    assert mine["lm_error"] == pytest.approx(spreg.panel_LMerror(y[:, None], X, lw)[0], rel=1e-10)
    assert mine["robust_lm_lag"] == pytest.approx(spreg.panel_rLMlag(y[:, None], X, lw)[0], rel=1e-10)
    assert mine["robust_lm_error"] == pytest.approx(spreg.panel_rLMerror(y[:, None], X, lw)[0], rel=1e-10)
    # spreg 1.9.0's panel_LMlag puts tr(WW + W'W)^2 where Elhorst has T tr(WW + W'W) (its robust
    # versions use T tr); check the plain LM lag against a dense computation instead.
    Wt = np.kron(np.eye(T), w.row_standardised.toarray())
    res = lm_tests(frame, "nqp", REGRESSORS, w)
    b = np.linalg.solve(X.T @ X, X.T @ y)
    e = y - X @ b
    s2 = e @ e / (n * T)
    M = np.eye(n * T) - X @ np.linalg.solve(X.T @ X, X.T)
    Wd = w.row_standardised.toarray()
    trw = np.trace(Wd @ Wd + Wd.T @ Wd)
    wxb = Wt @ (X @ b)
    J = (wxb @ M @ wxb + T * trw * s2) / s2
    lag_score, err_score = e @ Wt @ y / s2, e @ Wt @ e / s2
    expected = {"lm_lag": lag_score ** 2 / J, "lm_error": err_score ** 2 / (T * trw),
                "robust_lm_lag": (lag_score - err_score) ** 2 / (J - T * trw),
                "robust_lm_error": (err_score - T * trw / J * lag_score) ** 2 / (T * trw * (1 - T * trw / J))}
    for term, value in expected.items():
        assert res.coefs.loc[term, "statistic"] == pytest.approx(value, rel=1e-10)
        assert res.coefs.loc[term, "p_value"] == pytest.approx(stats.chi2.sf(value, 1), rel=1e-10)
    # the data are an SDM with rho = 0.3: at least one test must reject
    assert res.coefs["p_value"].min() < 0.01

