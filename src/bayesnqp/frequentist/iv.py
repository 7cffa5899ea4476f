"""Instrumental variables: the Nunn-Qian panel instrument (distance to Hangzhou x time) with diagnostics.

The 2SLS fit itself is pyfixest's (``y ~ controls | city + year | agglomeration ~ z1 + ...``).  No Python
library reports the Kleibergen-Paap (2006) rk statistics or the Cragg-Donald F, so they are computed
here from the partialled-out data, following Stata's ``ranktest`` / ``ivreg2`` formulas:

- everything is partialled out of the endogenous regressor and the excluded instruments: the city and
  year effects (within transformation) and the controls (Frisch-Waugh-Lovell);
- Cragg-Donald Wald F = [e/(1-e)] (N - L) / L1 with e the smallest squared canonical correlation
  between the partialled endogenous regressors and instruments, L the total number of instruments
  counting the controls and every absorbed city and year dummy (ivreg2 with the dummies entered
  explicitly), L1 the excluded ones.  For one endogenous regressor it is the classical (iid)
  first-stage F of the excluded instruments;
- Kleibergen-Paap rk LM and rk Wald statistics with the cluster-robust (or heteroskedasticity-robust)
  covariance of the first-stage scores; the LM form uses the scores under the null (the partialled
  endogenous regressor itself), the Wald form the first-stage residuals.  rk LM ~ chi2(L1 - K1 + 1);
  rk Wald F = W / (N - 1) (N - L) (G - 1) / G / L1 clustered, W / N (N - L) / L1 otherwise (ivreg2).
  For one endogenous regressor W is the cluster-robust Wald statistic of the excluded instruments in
  the first stage without any small-sample factor;
- effective F (Montiel Olea and Pflueger 2013) = pi' Qzz pi / tr(V_pi Qzz) with the first stage's
  robust covariance: in the just-identified case it equals the robust first-stage F;
- Anderson-Rubin test and, for one instrument, the confidence set by inverting the AR test in closed
  form (a quadratic inequality in beta): a bounded interval, the union of two rays, or the whole line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyfixest as pf
from scipy import stats

from bayesnqp import names
from bayesnqp.frequentist.panel import (
    SE_LABELS,
    SeType,
    _CITY_ID,
    _YEAR,
    check_se,
    feols,
    fixef_part,
    prepare,
    tidy_to_coefs,
    vcov_spec,
)
from bayesnqp.results import AnalysisResult

# Stock and Yogo (2005, Table 5.2): critical values of the Cragg-Donald F for one endogenous regressor,
# 2SLS, maximal size of a nominal 5% Wald test; keyed by the number of excluded instruments.
STOCK_YOGO_SIZE: dict[int, dict[str, float]] = {
    1: {"10%": 16.38, "15%": 8.96, "20%": 6.66, "25%": 5.53},
    2: {"10%": 19.93, "15%": 11.59, "20%": 8.75, "25%": 7.25},
    3: {"10%": 22.30, "15%": 12.83, "20%": 9.54, "25%": 7.80},
}


# --------------------------------------------------------------------------------------------------
# pure numpy pieces


def partial_out(columns: np.ndarray, exog: np.ndarray | None) -> np.ndarray:
    """Residuals of each column of ``columns`` on ``exog`` (least squares); ``exog`` None leaves them."""
    if exog is None or exog.shape[1] == 0:
        return columns.copy()
    coef, *_ = np.linalg.lstsq(exog, columns, rcond=None)
    return columns - exog @ coef


def _cluster_sum(scores: np.ndarray, clusters: np.ndarray | None) -> np.ndarray:
    """Per-cluster sums of score rows (rows unchanged when ``clusters`` is None)."""
    if clusters is None:
        return scores
    codes, inv = np.unique(clusters, return_inverse=True)
    out = np.zeros((len(codes), scores.shape[1]))
    np.add.at(out, inv, scores)
    return out


def _inv_upper_chol(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Upper Cholesky factor R (R'R = a) and its inverse."""
    r = np.linalg.cholesky(a).T
    return r, np.linalg.inv(r)


def _sym_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def canonical_correlations(x1: np.ndarray, z1: np.ndarray) -> dict[str, np.ndarray]:
    """Standardised first-stage matrix theta = chol(Qzz) pi chol(Qyy)^-1 and its SVD (ranktest)."""
    n = x1.shape[0]
    qzz, qzy, qyy = z1.T @ z1 / n, z1.T @ x1 / n, x1.T @ x1 / n
    rzz, irzz = _inv_upper_chol(qzz)
    _, iryy = _inv_upper_chol(qyy)
    pihat = np.linalg.solve(qzz, qzy)
    theta = rzz @ pihat @ iryy
    u, d, vt = np.linalg.svd(theta, full_matrices=True)
    return {"theta": theta, "U": u, "cc": d, "V": vt.T, "pihat": pihat, "irQyy": iryy, "irQzz": irzz}


def cragg_donald_f(x1: np.ndarray, z1: np.ndarray, n_instruments_total: int) -> float:
    """Cragg-Donald Wald F: min eigenvalue form, [e/(1-e)] (N - L) / L1 with iid errors."""
    n, l1 = z1.shape
    e = float(np.min(canonical_correlations(x1, z1)["cc"] ** 2))
    return e / (1 - e) * (n - n_instruments_total) / l1


def kp_rk_statistic(x1: np.ndarray, z1: np.ndarray, resid: np.ndarray, clusters: np.ndarray | None) -> float:
    """Kleibergen-Paap (2006) rk statistic for H0: rank(pi) = K1 - 1 (chi2 with L1 - K1 + 1 df).

    ``resid`` (N x K1) are the scores' residuals: ``x1`` itself for the LM form, the first-stage
    residuals for the Wald form.  Covariance of the scores: cluster sums when ``clusters`` is given,
    else heteroskedasticity-robust.  No small-sample factor (as ranktest).
    """
    n, k1 = x1.shape
    cc = canonical_correlations(x1, z1)
    scores = np.column_stack([resid[:, [j]] * z1 for j in range(k1)])  # row i: kron(v_i, z_i)
    s = _cluster_sum(scores, clusters)
    shat = s.T @ s / n
    shat = (shat + shat.T) / 2
    kron_t = np.kron(cc["irQyy"].T, cc["irQzz"].T)
    kpvar = kron_t @ shat @ kron_t.T
    kpvar = (kpvar + kpvar.T) / 2
    u, v, kk = cc["U"], cc["V"], k1 - 1
    u12, u22 = u[:kk, kk:], u[kk:, kk:]
    v12, v22 = v[:kk, kk:], v[kk:, kk:]
    aq = np.vstack([u12, u22]) @ np.linalg.inv(u22) @ _sym_sqrt(u22 @ u22.T)
    bq = _sym_sqrt(v22 @ v22.T) @ np.linalg.inv(v22.T) @ np.vstack([v12, v22]).T
    vec_theta = cc["theta"].reshape(-1, order="F")
    kron_ba = np.kron(bq, aq.T)
    lab = kron_ba @ vec_theta
    vlab = kron_ba @ kpvar @ kron_ba.T
    vlab = (vlab + vlab.T) / 2
    return float(n * lab @ np.linalg.solve(vlab, lab))


def effective_f(pi: np.ndarray, z1: np.ndarray, v_pi: np.ndarray) -> float:
    """Montiel Olea-Pflueger effective F: pi' Qzz pi / tr(V_pi Qzz) (Qzz = Z'Z of partialled instruments)."""
    qzz = z1.T @ z1
    return float(pi @ qzz @ pi / np.trace(v_pi @ qzz))


def anderson_rubin_set(y: np.ndarray, x: np.ndarray, z: np.ndarray, *, se: str, clusters: np.ndarray | None,
                       factor: float, n_minus_1: int, crit: float) -> dict[str, Any]:
    """Closed-form Anderson-Rubin confidence set for one endogenous regressor and one instrument.

    Inputs are partialled out (FE and controls).  AR(b) is the squared t statistic of the instrument
    in the regression of y - b x on z with the chosen error type; its variance is
    ``factor`` x meat / (z'z)^2 (``factor`` = the small-sample factor of that regression, and for iid
    errors the meat is z'z sum(e^2) / (N - 1), pyfixest's convention).  {b : AR(b) <= crit} is
    {b : a2 b^2 + a1 b + a0 <= 0}.
    """
    zz = float(z @ z)
    gy, gx = float(z @ y) / zz, float(z @ x) / zz
    ey, ex = y - z * gy, x - z * gx
    if se == "iid":
        m_yy, m_xy, m_xx = (zz * float(ey @ ey) / n_minus_1, zz * float(ex @ ey) / n_minus_1,
                            zz * float(ex @ ex) / n_minus_1)
    else:
        p = _cluster_sum((z * ey)[:, None], clusters if se == "cluster" else None)[:, 0]
        q = _cluster_sum((z * ex)[:, None], clusters if se == "cluster" else None)[:, 0]
        m_yy, m_xy, m_xx = float(p @ p), float(p @ q), float(q @ q)
    k = crit * factor / zz**2
    a2 = gx**2 - k * m_xx
    a1 = -2 * gy * gx + 2 * k * m_xy
    a0 = gy**2 - k * m_yy
    disc = a1**2 - 4 * a2 * a0
    if abs(a2) < 1e-300:
        root = -a0 / a1
        intervals = [[-np.inf, root]] if a1 > 0 else [[root, np.inf]]
        kind = "ray"
    elif a2 > 0:
        if disc < 0:
            intervals, kind = [], "empty"
        else:
            r = sorted([(-a1 - np.sqrt(disc)) / (2 * a2), (-a1 + np.sqrt(disc)) / (2 * a2)])
            intervals, kind = [r], "bounded interval"
    elif disc < 0:
        intervals, kind = [[-np.inf, np.inf]], "whole real line"
    else:
        r = sorted([(-a1 - np.sqrt(disc)) / (2 * a2), (-a1 + np.sqrt(disc)) / (2 * a2)])
        intervals, kind = [[-np.inf, r[0]], [r[1], np.inf]], "union of two rays"

    def ar_stat(b: float) -> float:
        return (gy - b * gx) ** 2 / (factor * (m_yy - 2 * b * m_xy + b * b * m_xx) / zz**2)

    return {"intervals": [[float(a), float(b)] for a, b in intervals], "kind": kind, "ar_stat": ar_stat,
            "quadratic": (a2, a1, a0)}


# --------------------------------------------------------------------------------------------------
# the analysis


def _instruments(data: pd.DataFrame, dist_alias: str, kind: str) -> list[str]:
    years = np.sort(data[_YEAR].unique())
    dist = data[dist_alias].to_numpy() / 1000.0
    if kind == "trend":
        data["z_trend"] = dist * (data[_YEAR].to_numpy() - years[0])
        return ["z_trend"]
    cols = []
    for yr in years[1:]:  # first year omitted: sum over all years is distance itself, absorbed by city FE
        name = f"z_{yr}"
        data[name] = dist * (data[_YEAR].to_numpy() == yr)
        cols.append(name)
    return cols


def _partialled(data: pd.DataFrame, cols: list[str], exog_cols: list[str]) -> np.ndarray:
    """Columns with city and year effects and the controls partialled out."""
    flist = np.column_stack([data[_CITY_ID].to_numpy(), pd.factorize(data[_YEAR])[0]]).astype(np.uint64)
    mat = data[cols + exog_cols].to_numpy(dtype=float)
    dem, ok = pf.estimation.demean(mat, flist, np.ones(len(data)), tol=1e-12, maxiter=100_000)
    if not ok:  # pragma: no cover
        raise RuntimeError("demeaning did not converge")
    exog = dem[:, len(cols):] if exog_cols else None
    return partial_out(dem[:, : len(cols)], exog)


def iv_diagnostics(data: pd.DataFrame, y: str, x: str, zs: list[str], controls: list[str], se: str,
                   first_stage: Any, alpha: float = 0.05) -> dict[str, Any]:
    """Weak-IV and underidentification statistics plus the Anderson-Rubin test (see module docstring)."""
    part = _partialled(data, [y, x, *zs], controls)
    yp, xp, zp = part[:, 0], part[:, [1]], part[:, 2:]
    n, l1 = zp.shape
    n_clusters = int(data[_CITY_ID].nunique())
    n_years = int(data[_YEAR].nunique())
    l_total = l1 + len(controls) + n_clusters + n_years - 1  # + every absorbed dummy incl. the constant
    clusters = data[_CITY_ID].to_numpy() if se == "cluster" else None
    out: dict[str, Any] = {"n_instruments": l1, "n_instruments_total_L": l_total}

    out["cragg_donald_F"] = cragg_donald_f(xp, zp, l_total)
    if se == "iid":
        e = float(np.min(canonical_correlations(xp, zp)["cc"] ** 2))
        out["anderson_lm"] = n * e
        out["anderson_lm_p"] = float(stats.chi2.sf(n * e, l1))
        out["underidentification_test"] = "Anderson canonical-correlation LM (iid errors)"
    else:
        pi = np.linalg.lstsq(zp, xp, rcond=None)[0]
        lm = kp_rk_statistic(xp, zp, xp, clusters)
        wald = kp_rk_statistic(xp, zp, xp - zp @ pi, clusters)
        out["kp_rk_lm"] = lm
        out["kp_rk_lm_df"] = l1
        out["kp_rk_lm_p"] = float(stats.chi2.sf(lm, l1))
        out["kp_rk_wald_chi2"] = wald
        if se == "cluster":
            out["kp_rk_wald_F"] = wald / (n - 1) * (n - l_total) * (n_clusters - 1) / n_clusters / l1
        else:
            out["kp_rk_wald_F"] = wald / n * (n - l_total) / l1
        out["underidentification_test"] = "Kleibergen-Paap rk LM"

    # first-stage robust F: Wald test of the excluded instruments with the first stage's own covariance
    coefs = first_stage.coef()
    idx = [list(coefs.index).index(z) for z in zs]
    pi_fs = coefs.to_numpy()[idx]
    v_fs = np.asarray(first_stage._vcov)[np.ix_(idx, idx)]
    f_fs = float(pi_fs @ np.linalg.solve(v_fs, pi_fs) / l1)
    df2 = float(first_stage._df_t)
    out["first_stage_F"] = f_fs
    out["first_stage_F_df"] = [l1, df2]
    out["first_stage_F_p"] = float(stats.f.sf(f_fs, l1, df2))
    out["effective_F"] = effective_f(pi_fs, zp, v_fs)
    if l1 == 1:
        out["effective_F_note"] = "just-identified: the effective F equals the robust first-stage F"
    else:
        out["effective_F_note"] = ("Montiel Olea-Pflueger effective F; its critical values (weakivtest) "
                                   "are not computed here")
    sy = STOCK_YOGO_SIZE.get(l1)
    out["stock_yogo"] = (
        f"Stock-Yogo (2005) critical values for the Cragg-Donald F, one endogenous regressor, {l1} "
        f"instrument(s), maximal 2SLS size of a 5% test: " + ", ".join(f"{k}: {v}" for k, v in sy.items())
        if sy else
        f"Stock-Yogo (2005) Table 5.2 critical values for {l1} instruments are not tabulated here")
    out["stock_yogo_note"] = ("Stock-Yogo values assume iid errors; with clustered or robust errors compare "
                              "the Kleibergen-Paap rk Wald F or the effective F with them only as a rule of "
                              "thumb")

    # Anderson-Rubin: reduced form of y on the instruments (beta = 0) with the chosen errors
    rf = feols(f"{y} ~ {' + '.join(zs + controls)} | {fixef_part(True, True)}", data, vcov_spec(se))
    rc = rf.coef()
    ridx = [list(rc.index).index(z) for z in zs]
    g = rc.to_numpy()[ridx]
    vg = np.asarray(rf._vcov)[np.ix_(ridx, ridx)]
    ar_f = float(g @ np.linalg.solve(vg, g) / l1)
    out["ar_stat_beta0"] = ar_f
    out["ar_p_value_beta0"] = float(stats.f.sf(ar_f, l1, float(rf._df_t)))
    out["ar_test"] = (f"Anderson-Rubin test of beta = 0: Wald F of the {l1} instrument(s) in the reduced "
                      f"form, F({l1}, {float(rf._df_t):g})")
    if l1 == 1:
        crit = float(stats.t.ppf(1 - alpha / 2, float(rf._df_t)) ** 2)
        factor = float(np.asarray(rf._ssc).ravel()[0])
        ar = anderson_rubin_set(yp, xp[:, 0], zp[:, 0], se=se, clusters=clusters, factor=factor,
                                n_minus_1=n - 1, crit=crit)
        out["ar_ci"] = ar["intervals"]
        out["ar_ci_kind"] = ar["kind"]
        out["ar_ci_text"] = " U ".join(
            f"{'(' if np.isinf(a) else '['}{a:.4g}, {b:.4g}{')' if np.isinf(b) else ']'}"
            for a, b in ar["intervals"]) or "empty"
        out["ar_ci_level"] = 1 - alpha
    return out


def iv_2sls(frame: pd.DataFrame, outcome: str = names.NQP, treatment: str = names.AGGLOMERATION,
            controls: Sequence[str] = names.CONTROLS, distance: str = names.DIST_HANGZHOU,
            se: SeType = "cluster") -> list[AnalysisResult]:
    """2SLS with city and year FE, instrumenting the treatment by distance x time (Nunn-Qian).

    ``iv_2sls``: instruments distance x year dummies (first year omitted: over-identified);
    ``iv_2sls_trend``: distance x (year - first year) (just-identified).  Distance enters in
    thousands of its units (km -> 1000 km), which rescales only the first-stage coefficients.
    """
    check_se(se)
    out = []
    for kind, rid, title in [("years", "iv_2sls", "2SLS: distance to Hangzhou x year dummies"),
                             ("trend", "iv_2sls_trend", "2SLS: distance to Hangzhou x linear trend")]:
        data = prepare(frame, [outcome, treatment, *controls, distance])
        amap = data.attrs["aliases"]
        y, x, cs = amap[outcome], amap[treatment], [amap[c] for c in controls]
        zs = _instruments(data, amap[distance], kind)
        rename = {amap[c]: c for c in [outcome, treatment, *controls]}
        exog = " + ".join(cs) if cs else "1"
        fml = f"{y} ~ {exog} | {fixef_part(True, True)} | {x} ~ {' + '.join(zs)}"
        fit = feols(fml, data, vcov_spec(se))
        fit.first_stage()
        fs = fit._model_1st_stage
        coefs = tidy_to_coefs(fit, rename, [x, *cs])
        fs_coefs = tidy_to_coefs(fs, {**rename, **{z: f"{distance}/1000 x {z[2:]}" for z in zs}}, [*zs, *cs])
        diag = iv_diagnostics(data, y, x, zs, cs, se, fs)
        diag.update(first_stage_r2_within=float(fs._r2_within), formula=(
            f"{outcome} ~ {' + '.join(controls)} | city + year | {treatment} ~ "
            + ("distance x year dummies" if kind == "years" else "distance x (year - first year)")),
            n_clusters=int(data[_CITY_ID].nunique()), df_t=float(fit._df_t),
            small_sample_factor=float(np.asarray(fit._ssc).ravel()[0]),
            first_stage_small_sample_factor=float(np.asarray(fs._ssc).ravel()[0]))
        notes = (SE_LABELS[se], "instruments: distance/1000 x " + (
            "year dummies (first year omitted)" if kind == "years" else "(year - first year)"),
            "weak-IV and underidentification statistics partial out city and year effects and the controls; "
            "L counts every absorbed dummy (ivreg2 with explicit dummies)")
        out.append(AnalysisResult(id=rid, title=title, coefs=coefs, n_obs=int(fit._N), se_type=se, r2=None,
                                  fixed_effects=(names.CITY, names.YEAR), key_term=treatment, dep_var=outcome,
                                  notes=notes, extra=diag, tables={"first_stage": fs_coefs}))
    return out


__all__ = ["iv_2sls", "iv_diagnostics", "kp_rk_statistic", "cragg_donald_f", "effective_f",
           "anderson_rubin_set", "partial_out", "STOCK_YOGO_SIZE"]
