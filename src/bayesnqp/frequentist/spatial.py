"""Frequentist spatial analyses: Moran's I by year, panel LM tests, ML spatial panel models with two-way
fixed effects (SDM, SAR, SEM), SLX by OLS, and LeSage-Pace direct / indirect / total effects.

Data layout. Every function takes a balanced panel ``frame`` (sorted MultiIndex ``(city, year)``) and a
:class:`~bayesnqp.data.weights.SpatialWeights` whose ``ids`` must be exactly the panel's cities. The panel
is reordered internally to ``weights.ids`` and stacked year by year (rows ``t * n + i``), so the spatial
operator of the stacked panel is ``I_T (x) W`` with ``W`` the row-standardised contiguity matrix (an island
keeps a zero row: it neither sends nor receives spillovers).

Estimation of the ML models (``method``):

- ``"lee-yu"`` (default). City effects are removed by the Lee & Yu (2010) orthonormal transformation
  ``F_T'`` (eigenvectors of the time-demeaning matrix): exact, and identical to demeaning by city with the
  Jacobian ``(T - 1) log|I - rho W|`` and ``n (T - 1)`` effective observations, which removes the O(1/T)
  bias of the dummy-variable ("direct") estimator. Year effects are kept as year dummies and concentrated
  out (the direct approach, bias O(1/n) only, n >> T here). The Lee-Yu transformation for time effects
  needs ``W 1 = 1``, which fails as soon as one city is an island, so it is not used. The reported
  ``sigma2`` carries the degrees-of-freedom correction for the ``T - 1`` estimated year effects,
  ``SSR / ((n - 1)(T - 1))`` (Lee-Yu's two-way variance estimator when ``W 1 = 1``); the ML value
  ``SSR / (n (T - 1))`` is kept in ``extra["sigma2_ml"]``.
- ``"direct"``. City and year dummies (Elhorst 2003, spreg's ``Panel_FE_Lag`` / ``Panel_FE_Error``):
  Jacobian ``T log|I - rho W|``, ``sigma2 = SSR / (n T)``.

Both concentrated likelihoods are multiples of ``-(n/2) log SSR(rho) + log|I - rho W|``, so rho and the
slopes are identical under the two methods (Lee & Yu: the direct estimates of these are consistent); they
differ in sigma2, hence in the standard errors and the log-likelihood (the Lee-Yu correction).

``log|I - rho W| = sum_i log(1 - rho lambda_i)`` from ``weights.eigenvalues``; rho (lambda) is searched
only inside the admissible interval ``(1 / lambda_min, 1)`` (grid, then bounded Brent). Standard errors
come from the analytic information matrix (Elhorst 2014; Lee & Yu 2010, eq. for the transformed model),
evaluated at the reported ``sigma2``. Effects follow LeSage & Pace (2009) and are computed exactly from
the eigen-decomposition of ``W`` (``W`` is similar to the symmetric ``D^-1/2 A D^-1/2``); their standard
errors come from parameter draws from ``N(hat, V)`` (draws with rho outside the interval are redrawn).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import optimize, stats

from bayesnqp import names
from bayesnqp.data.weights import SpatialWeights
from bayesnqp.panelops import city_demean_stacked, within_stacked, year_major
from bayesnqp.spatial_linalg import Spectrum, lag, log_det
from bayesnqp.spatial_linalg import average_effects as effects_at
from bayesnqp.results import AnalysisResult, coef_frame

Method = Literal["lee-yu", "direct"]
METHODS: tuple[str, ...] = ("lee-yu", "direct")

PAPER_SDM_RHO = names.PAPER_RHO  # Table 5 of the paper
CI_LEVEL = 0.95
_Z_CRIT = float(stats.norm.ppf(0.5 + CI_LEVEL / 2))
_GRID = 401  # grid points for the coarse search of rho before Brent


# --------------------------------------------------------------------------------------------------
# panel alignment


@dataclass(frozen=True)
class _Panel:
    """Panel columns as arrays of shape (T, n) in ``weights.ids`` order."""

    ids: tuple[str, ...]
    years: tuple[int, ...]
    data: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        return len(self.ids)

    @property
    def T(self) -> int:  # noqa: N802 (the panel's usual symbol)
        return len(self.years)

    def stacked(self, column: str) -> np.ndarray:
        return self.data[column].reshape(-1)


def _align(frame: pd.DataFrame, columns: Sequence[str], weights: SpatialWeights) -> _Panel:
    """Validate the panel against ``weights`` and return its columns in weights order (no copy of frame)."""
    if not isinstance(frame.index, pd.MultiIndex) or frame.index.nlevels != 2:
        raise ValueError("the panel needs a MultiIndex (city, year)")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"the panel lacks column(s) {missing}")
    if frame.index.has_duplicates:
        dup = frame.index[frame.index.duplicated()][0]
        raise ValueError(f"the panel has duplicate rows, e.g. city {dup[0]} year {dup[1]}")
    cities = frame.index.get_level_values(0).astype(str)
    years_raw = frame.index.get_level_values(1)
    panel_ids = set(cities)
    w_ids = set(weights.ids)
    if panel_ids != w_ids:
        only_panel = sorted(panel_ids - w_ids)
        only_w = sorted(w_ids - panel_ids)
        raise ValueError("panel cities and spatial-weights ids differ: "
                         f"in the panel but not in the weights: {only_panel}; "
                         f"in the weights but not in the panel: {only_w}")
    years = tuple(sorted(int(y) for y in set(years_raw)))
    n, T = len(weights.ids), len(years)
    if len(frame) != n * T:
        raise ValueError(f"the panel is not balanced: {len(frame)} rows for {n} cities x {T} years")
    target = pd.MultiIndex.from_product([list(weights.ids), list(years)])
    values = frame[list(columns)].copy()
    values.index = pd.MultiIndex.from_arrays([cities, np.asarray(years_raw, dtype=int)])
    values = values.reindex(target)
    data: dict[str, np.ndarray] = {}
    for c in columns:
        arr = pd.to_numeric(values[c], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(arr)
        if bad.any():
            city, year = target[int(np.flatnonzero(bad)[0])]
            raise ValueError(f"column '{c}' has {int(bad.sum())} missing or non-numeric value(s), "
                             f"e.g. city {city} year {year}")
        data[c] = year_major(arr, n, T)  # (T, n): year-major stacking
    return _Panel(tuple(weights.ids), years, data)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


# --------------------------------------------------------------------------------------------------
# spectral tools (in ``spatial_linalg``; the spectrum is cached on the weights)

_Spectrum = Spectrum  # the former private name


def _lag(W: sp.csr_array, arr: np.ndarray) -> np.ndarray:  # noqa: N803 (the matrix's usual symbol)
    """Apply W year by year to a (T, n) array or a (T, n, k) array."""
    return lag(W, arr, region_axis=1)


def _year_dummies(n: int, T: int) -> np.ndarray:
    """Year dummies for years 2..T, year-major stacked (N, T-1)."""
    D = np.zeros((T * n, T - 1))
    for t in range(1, T):
        D[t * n:(t + 1) * n, t - 1] = 1.0
    return D


def _search(negll, bounds: tuple[float, float]) -> float:
    """Global grid then bounded Brent on the open interval (the log-det diverges at both ends)."""
    lo, hi = bounds
    width = hi - lo
    a, b = lo + 1e-9 * width, hi - 1e-9 * width
    grid = np.linspace(a, b, _GRID)
    vals = np.array([negll(g) for g in grid])
    k = int(np.nanargmin(vals))
    left, right = grid[max(k - 1, 0)], grid[min(k + 1, _GRID - 1)]
    res = optimize.minimize_scalar(negll, bounds=(left, right), method="bounded",
                                   options={"xatol": 1e-12 * max(1.0, width), "maxiter": 500})
    return float(res.x) if res.fun <= vals[k] else float(grid[k])


# --------------------------------------------------------------------------------------------------
# shared ML setup


@dataclass(frozen=True)
class _Design:
    y: np.ndarray  # (N,) city-demeaned outcome
    wy: np.ndarray  # (N,) city-demeaned W y
    Z: np.ndarray  # (N, p) city-demeaned regressors incl. year dummies (last T-1 columns)
    terms: list[str]  # names of the non-dummy columns of Z (first len(terms) columns)
    n: int
    T: int
    jac_T: int  # multiplier of log|I - rho W|
    n_eff: int  # effective number of observations in the likelihood
    df_sigma: int  # divisor of SSR for the reported sigma2


def _design(panel: _Panel, spec: Spectrum, outcome: str, regressors: Sequence[str], lagged_x: bool,
            method: str) -> _Design:
    n, T = panel.n, panel.T
    if T < 2:
        raise ValueError("a panel with city effects needs at least two years")
    X = np.stack([panel.data[c] for c in regressors], axis=-1)  # (T, n, k)
    cols = [X.reshape(T * n, -1)]
    terms = list(regressors)
    if lagged_x:
        cols.append(_lag(spec.W, X).reshape(T * n, -1))
        terms += [f"W_{c}" for c in regressors]
    y = panel.data[outcome]
    Z = np.column_stack(cols + [_year_dummies(n, T)])
    yc = city_demean_stacked(y.reshape(-1), n, T)
    wyc = city_demean_stacked(_lag(spec.W, y).reshape(-1), n, T)
    Zc = city_demean_stacked(Z, n, T)
    if np.linalg.matrix_rank(Zc) < Zc.shape[1]:
        raise ValueError(f"the regressors {terms} are collinear after removing city and year effects")
    if method == "lee-yu":
        jac_T, n_eff, df_sigma = T - 1, n * (T - 1), (n - 1) * (T - 1)
    else:
        jac_T, n_eff, df_sigma = T, n * T, n * T
    return _Design(yc, wyc, Zc, terms, n, T, jac_T, n_eff, df_sigma)


def _inference(est: np.ndarray, se: np.ndarray) -> dict[str, np.ndarray]:
    z = est / se
    return dict(statistic=z, p_value=2 * stats.norm.sf(np.abs(z)), ci_low=est - _Z_CRIT * se,
                ci_high=est + _Z_CRIT * se)


def _gap_traces(spec: Spectrum, rho: float) -> tuple[float, float, float, np.ndarray]:
    """tr(G), tr(GG), tr(G'G) and dense G for G = W (I - rho W)^-1."""
    g = spec.lam / (1.0 - rho * spec.lam)
    G = spec.matfun(g)
    return float(g.sum()), float((g * g).sum()), float((G * G).sum()), G


@dataclass(frozen=True)
class _LagFit:
    rho: float
    delta: np.ndarray  # coefficients of Z (incl. year dummies)
    sigma2: float  # reported (see module doc)
    sigma2_ml: float
    loglik: float
    V: np.ndarray  # covariance of (delta, rho, sigma2)
    resid: np.ndarray


def _fit_lag(d: _Design, spec: Spectrum, eigenvalues: np.ndarray, bounds: tuple[float, float]) -> _LagFit:
    """Concentrated ML of y = rho W y + Z delta + e (city-demeaned data, year dummies in Z)."""
    coef, *_ = np.linalg.lstsq(d.Z, np.column_stack([d.y, d.wy]), rcond=None)
    b0, b1 = coef[:, 0], coef[:, 1]
    e0, e1 = d.y - d.Z @ b0, d.wy - d.Z @ b1
    s00, s01, s11 = e0 @ e0, e0 @ e1, e1 @ e1

    def negll(rho: float) -> float:
        ssr = s00 - 2 * rho * s01 + rho * rho * s11
        return 0.5 * d.n_eff * math.log(ssr) - d.jac_T * float(log_det(rho, eigenvalues))

    rho = _search(negll, bounds)
    delta = b0 - rho * b1
    resid = e0 - rho * e1
    ssr = float(resid @ resid)
    sigma2_ml = ssr / d.n_eff
    sigma2 = ssr / d.df_sigma
    loglik = (-0.5 * d.n_eff * (math.log(2 * math.pi * sigma2_ml) + 1.0)
              + d.jac_T * float(log_det(rho, eigenvalues)))
    # information matrix of (delta, rho, sigma2)
    tr1, tr2, tr3, G = _gap_traces(spec, rho)
    mu = (d.Z @ delta).reshape(d.T, d.n)
    gmu = (G @ mu.T).T.reshape(-1)
    p = d.Z.shape[1]
    info = np.zeros((p + 2, p + 2))
    info[:p, :p] = d.Z.T @ d.Z / sigma2
    info[:p, p] = info[p, :p] = d.Z.T @ gmu / sigma2
    info[p, p] = gmu @ gmu / sigma2 + d.jac_T * (tr2 + tr3)
    info[p, p + 1] = info[p + 1, p] = d.jac_T * tr1 / sigma2
    info[p + 1, p + 1] = d.n_eff / (2 * sigma2 ** 2)
    V = np.linalg.inv(info)
    return _LagFit(rho, delta, sigma2, sigma2_ml, loglik, V, resid)


@dataclass(frozen=True)
class _ErrorFit:
    lam: float
    beta: np.ndarray
    sigma2: float
    sigma2_ml: float
    loglik: float
    V: np.ndarray  # covariance of (beta, lambda, sigma2), block-diagonal between beta and the rest
    resid: np.ndarray  # y - Z beta (unfiltered)


def _fit_error(d: _Design, spec: Spectrum, eigenvalues: np.ndarray, bounds: tuple[float, float]) -> _ErrorFit:
    """Concentrated ML of y = Z beta + u, u = lambda W u + e (city-demeaned data, year dummies in Z)."""
    n, T = d.n, d.T
    Wy = d.wy  # city demeaning commutes with I_T (x) W
    WZ = _lag(spec.W, d.Z.reshape(T, n, -1)).reshape(T * n, -1)
    yy, yWy, WyWy = d.y @ d.y, d.y @ Wy, Wy @ Wy
    ZZ, ZWZ, WZWZ = d.Z.T @ d.Z, d.Z.T @ WZ, WZ.T @ WZ
    Zy, ZWy, WZy, WZWy = d.Z.T @ d.y, d.Z.T @ Wy, WZ.T @ d.y, WZ.T @ Wy

    def moments(lam: float) -> tuple[np.ndarray, np.ndarray, float]:
        A = ZZ - lam * (ZWZ + ZWZ.T) + lam * lam * WZWZ
        b = Zy - lam * (ZWy + WZy) + lam * lam * WZWy
        c = yy - 2 * lam * yWy + lam * lam * WyWy
        return A, b, c

    def ssr_of(lam: float) -> float:
        A, b, c = moments(lam)
        return float(c - b @ np.linalg.solve(A, b))

    def negll(lam: float) -> float:
        return 0.5 * d.n_eff * math.log(ssr_of(lam)) - d.jac_T * float(log_det(lam, eigenvalues))

    lam = _search(negll, bounds)
    A, b, _ = moments(lam)
    beta = np.linalg.solve(A, b)
    ssr = ssr_of(lam)
    sigma2_ml, sigma2 = ssr / d.n_eff, ssr / d.df_sigma
    loglik = (-0.5 * d.n_eff * (math.log(2 * math.pi * sigma2_ml) + 1.0)
              + d.jac_T * float(log_det(lam, eigenvalues)))
    tr1, tr2, tr3, _ = _gap_traces(spec, lam)
    p = d.Z.shape[1]
    V = np.zeros((p + 2, p + 2))
    V[:p, :p] = sigma2 * np.linalg.inv(A)
    info = np.array([[d.jac_T * (tr2 + tr3), d.jac_T * tr1 / sigma2],
                     [d.jac_T * tr1 / sigma2, d.n_eff / (2 * sigma2 ** 2)]])
    V[p:, p:] = np.linalg.inv(info)
    return _ErrorFit(lam, beta, sigma2, sigma2_ml, loglik, V, d.y - d.Z @ beta)


# --------------------------------------------------------------------------------------------------
# effects


def _effects_table(regressors: Sequence[str], beta: np.ndarray, theta: np.ndarray, rho: float, cov: np.ndarray,
                   spec: Spectrum, bounds: tuple[float, float], draws: int,
                   rng: np.random.Generator) -> tuple[pd.DataFrame, dict[str, float]]:
    """Effects at the estimates with simulation standard errors; ``cov`` is that of (beta, theta, rho).

    estimate: at the ML estimates; std_error: sd over the draws; p_value: two-sided normal on
    estimate / std_error; ci: percentile interval of the draws.
    """
    k = len(regressors)
    point = effects_at(beta, theta, np.asarray(rho), spec)
    mean = np.concatenate([beta, theta, [rho]])
    # the covariance may be singular where theta is absent (SAR): draw through an eigen factor
    w, v = np.linalg.eigh((cov + cov.T) / 2)
    factor = v * np.sqrt(np.clip(w, 0.0, None))[None, :]
    lo, hi = bounds
    kept: list[np.ndarray] = []
    rejected, total_drawn = 0, 0
    while sum(len(x) for x in kept) < draws and total_drawn < 50 * draws:
        z = rng.standard_normal((draws, mean.size))
        cand = mean + z @ factor.T
        ok = (cand[:, -1] > lo) & (cand[:, -1] < hi)
        kept.append(cand[ok])
        rejected += int((~ok).sum())
        total_drawn += draws
    sims = np.concatenate(kept)[:draws]
    eff = effects_at(sims[:, :k], sims[:, k:2 * k], sims[:, -1], spec)
    rows = {}
    for j, name in enumerate(regressors):
        row: dict[str, float] = {}
        for kind in ("direct", "indirect", "total"):
            est = float(point[kind][j])
            sd = float(eff[kind][:, j].std(ddof=1)) if len(sims) > 1 else float("nan")
            row[f"{kind}_estimate"] = est
            row[f"{kind}_std_error"] = sd
            row[f"{kind}_p_value"] = float(2 * stats.norm.sf(abs(est / sd))) if sd > 0 else float("nan")
            q = np.quantile(eff[kind][:, j], [(1 - CI_LEVEL) / 2, (1 + CI_LEVEL) / 2]) if len(sims) else [np.nan] * 2
            row[f"{kind}_ci_low"], row[f"{kind}_ci_high"] = float(q[0]), float(q[1])
        direct = float(point["direct"][j])
        row["theta_share_of_direct"] = float(point["theta_part"][j]) / direct if direct != 0 else float("nan")
        rows[name] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "term"
    info: dict[str, float] = {"draws": int(len(sims)), "draws_rejected_rho_outside_interval": rejected}
    return table, info


# --------------------------------------------------------------------------------------------------
# public API


def moran_by_year(frame: pd.DataFrame, column: str, weights: SpatialWeights, permutations: int = 999,
                  seed: int = 20240601) -> AnalysisResult:
    """Global Moran's I of ``column`` in every year on the row-standardised W (esda).

    ``statistic`` is the z value under normality, ``p_value`` the permutation p value (esda's folded
    rule ``(min(#sim >= I, perms - #sim >= I) + 1) / (perms + 1)``, drawn here with a seeded generator
    because esda uses numpy's global random state).
    """
    import esda

    panel = _align(frame, [column], weights)
    w = weights.to_libpysal()
    w.transform = "r"
    W = sp.csr_array(weights.row_standardised)
    s0 = float(W.sum())
    rng = np.random.default_rng(seed)
    terms, est, se, z, p_sim, ei, p_norm = [], [], [], [], [], [], []
    for t, year in enumerate(panel.years):
        x = panel.data[column][t]
        mi = esda.Moran(x, w, transformation="r", permutations=0)
        terms.append(str(year))
        est.append(mi.I)
        se.append(mi.seI_norm)
        z.append(mi.z_norm)
        ei.append(mi.EI)
        p_norm.append(mi.p_norm)
        if permutations > 0:
            e = x - x.mean()
            perm = rng.permuted(np.broadcast_to(e, (permutations, e.size)), axis=1)
            sims = panel.n / s0 * np.einsum("pi,pi->p", perm, (W @ perm.T).T) / (e @ e)
            larger = int((sims >= mi.I).sum())
            larger = min(larger, permutations - larger)
            p_sim.append((larger + 1.0) / (permutations + 1.0))
        else:
            p_sim.append(float("nan"))
    nan = np.full(len(terms), np.nan)
    coefs = coef_frame(terms, est, se, z, p_sim, nan, nan)
    extra = {"EI": dict(zip(terms, ei)), "p_norm": dict(zip(terms, p_norm)),
             "permutations": permutations, "seed": seed, "s0": s0, "islands": list(weights.islands)}
    return AnalysisResult(id="moran_agglomeration" if column == names.AGGLOMERATION else f"moran_{column}",
                          title=f"Global Moran's I of {column} by year (row-standardised contiguity W)",
                          coefs=coefs, n_obs=panel.n * panel.T, se_type="normality z; permutation p",
                          key_term=terms[0], dep_var=column,
                          notes=("std_error is the sd of I under normality (null); no interval is given",),
                          extra=extra)


def _lm_statistics(y: np.ndarray, X: np.ndarray, W: sp.csr_array, T: int,
                   sigma2_divisor: float | None = None) -> dict[str, float]:
    """Anselin (1988/1996) LM tests in the panel form of Elhorst (2014) for stacked year-major data.

    OLS of ``y`` on ``X`` (as given: pass within-transformed data); sigma2 = e'e / divisor (default N).
    """
    N = y.size
    n = N // T
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    fitted = X @ coef
    e = y - fitted
    s2 = float(e @ e) / (N if sigma2_divisor is None else sigma2_divisor)

    def wlag(v: np.ndarray) -> np.ndarray:
        return (W @ v.reshape(T, n).T).T.reshape(-1)

    Wd = W.toarray()
    trw = float(np.trace(Wd @ Wd) + (Wd * Wd).sum())  # tr(WW + W'W)
    wxb = wlag(fitted)
    proj, *_ = np.linalg.lstsq(X, wxb, rcond=None)
    mwxb = wxb - X @ proj
    J = (float(mwxb @ mwxb) + T * trw * s2) / s2
    lag_score = float(e @ wlag(y)) / s2
    err_score = float(e @ wlag(e)) / s2
    ttw = T * trw
    out = {
        "lm_lag": lag_score ** 2 / J,
        "lm_error": err_score ** 2 / ttw,
        "robust_lm_lag": (lag_score - err_score) ** 2 / (J - ttw),
        "robust_lm_error": (err_score - ttw / J * lag_score) ** 2 / (ttw * (1 - ttw / J)),
    }
    return out


def lm_tests(frame: pd.DataFrame, outcome: str, regressors: Sequence[str],
             weights: SpatialWeights) -> AnalysisResult:
    """LM lag, LM error and their robust forms on the two-way within residuals (I_T (x) W).

    Convention of Elhorst's panel code: sigma2 = e'e / (nT), trace term T tr(WW + W'W); the within
    outcome is lagged as W y~ (y~ two-way demeaned). Each statistic is chi2(1) under its null.
    """
    panel = _align(frame, [outcome, *regressors], weights)
    n, T = panel.n, panel.T
    y = within_stacked(panel.stacked(outcome), n, T)
    X = within_stacked(np.column_stack([panel.stacked(c) for c in regressors]), n, T)
    stat = _lm_statistics(y, X, sp.csr_array(weights.row_standardised), T)
    terms = list(stat)
    values = np.array([stat[t] for t in terms])
    nan = np.full(len(terms), np.nan)
    coefs = coef_frame(terms, values, nan, values, stats.chi2.sf(values, 1), nan, nan)
    return AnalysisResult(id="lm_spatial_tests", title="LM tests for spatial lag and spatial error (two-way FE)",
                          coefs=coefs, n_obs=n * T, se_type="LM chi2(1)", fixed_effects=("city", "year"),
                          key_term="lm_lag", dep_var=outcome,
                          notes=("Elhorst (2014) panel LM tests on two-way within residuals; "
                                 "sigma2 = e'e/(nT)",),
                          extra={"df": 1, "regressors": list(regressors)})


def _bounds_extra(weights: SpatialWeights, est: float, name: str) -> tuple[dict, tuple[str, ...]]:
    lo, hi = weights.rho_bounds
    paper_in = bool(lo < PAPER_SDM_RHO < hi)
    extra = {"rho_bounds": [lo, hi], f"{name}_in_bounds": bool(lo < est < hi),
             "lambda_min": float(weights.eigenvalues.min()), "islands": list(weights.islands),
             "n_components": weights.n_components}
    notes = (f"{name} searched only inside the admissible interval ({lo:.4f}, 1) = (1/lambda_min, 1) of the "
             "row-standardised W",)
    return extra | {"paper_rho": PAPER_SDM_RHO, "paper_rho_in_bounds": paper_in}, notes


def _paper_note(weights: SpatialWeights) -> tuple[str, ...]:
    lo, hi = weights.rho_bounds
    if lo < PAPER_SDM_RHO < hi:
        return (f"the paper's rho = {PAPER_SDM_RHO} lies inside this W's interval ({lo:.4f}, 1)",)
    return (f"FLAG: the paper's rho = {PAPER_SDM_RHO} lies outside the admissible interval ({lo:.4f}, 1) "
            "of this W; it cannot be a stationary ML estimate for a row-standardised W",)


def _pseudo_r2(y: np.ndarray, resid: np.ndarray) -> float:
    fitted = y - resid
    if np.std(fitted) == 0 or np.std(y) == 0:
        return float("nan")
    return float(np.corrcoef(y, fitted)[0, 1] ** 2)


@dataclass(frozen=True)
class _MLSetup:
    """What the SDM, SAR and SEM fits share: the aligned panel, W and its spectrum, the names and options."""

    panel: _Panel
    weights: SpatialWeights
    spec: Spectrum
    eig: np.ndarray
    bounds: tuple[float, float]
    outcome: str
    treatment: str
    regressors: list[str]
    method: Method
    draws: int

    @property
    def k(self) -> int:
        return len(self.regressors)

    @property
    def how(self) -> str:
        return ("Lee-Yu (2010) transformation for city effects, year effects as concentrated dummies; "
                "sigma2 = SSR/((n-1)(T-1))" if self.method == "lee-yu"
                else "direct approach: city and year dummies (Elhorst 2003); sigma2 = SSR/(nT)")

    def extra(self, value: float, name: str, loglik: float, sigma2_ml: float) -> tuple[dict, tuple[str, ...]]:
        """The admissible-interval diagnostics of ``value`` (rho or lambda) and the fit's likelihood."""
        extra, notes = _bounds_extra(self.weights, value, name)
        extra |= {"log_likelihood": loglik, "sigma2_ml": sigma2_ml, "method": self.method, "estimation": self.how}
        return extra, notes

    def result(self, id_: str, title: str, coefs: pd.DataFrame, r2: float, notes: tuple[str, ...], extra: dict,
               tables: dict[str, pd.DataFrame] | None = None) -> AnalysisResult:
        return AnalysisResult(id=id_, title=title, coefs=coefs, n_obs=self.panel.n * self.panel.T,
                              se_type="ML, analytic information matrix", r2=r2, fixed_effects=("city", "year"),
                              key_term=self.treatment, dep_var=self.outcome, notes=notes + (self.how,),
                              extra=extra, tables=tables if tables is not None else {})


def sdm_ml(frame: pd.DataFrame, outcome: str, treatment: str, controls: Sequence[str], weights: SpatialWeights,
           draws: int = 1000, seed: int = 20240601, method: Method = "lee-yu") -> list[AnalysisResult]:
    """ML spatial Durbin model with city and year effects, plus SAR, SEM and SLX beside it.

    Returns ``[sdm_ml, sar_ml, sem_ml, slx_ols]``. SDM: y = rho W y + X b + W X theta + mu_i + nu_t + e.
    Effects (direct / indirect / total, LeSage-Pace) for every regressor in ``tables["effects"]`` of the
    SDM and the SAR, standard errors from ``draws`` parameter draws (``seed``).
    """
    _check_method(method)
    if draws < 2:
        raise ValueError("draws must be at least 2")
    regressors = [treatment, *controls]
    if len(set(regressors)) != len(regressors) or outcome in regressors:
        raise ValueError(f"outcome and regressors must be distinct: {outcome}, {regressors}")
    panel = _align(frame, [outcome, *regressors], weights)
    ml = _MLSetup(panel=panel, weights=weights, spec=weights.spectrum, eig=np.asarray(weights.eigenvalues, dtype=float),
                  bounds=weights.rho_bounds, outcome=outcome, treatment=treatment, regressors=regressors,
                  method=method, draws=draws)
    # one generator for the effect draws, the SDM's before the SAR's (the order fixes their standard errors)
    rng = np.random.default_rng(seed)
    sdm, sdm_loglik = _sdm_fit(ml, rng)
    d = _design(panel, ml.spec, outcome, regressors, False, method)  # SAR and SEM: no W X columns
    sar = _sar_fit(ml, d, sdm_loglik, rng)
    sem = _sem_fit(ml, d, sdm_loglik)
    return [sdm, sar, sem, _slx_ols(panel, ml.spec, outcome, regressors, treatment)]


def _ml_coefs(terms: list[str], est: np.ndarray, se: np.ndarray) -> pd.DataFrame:
    inf = _inference(est, se)
    return coef_frame(terms, est, se, inf["statistic"], inf["p_value"], inf["ci_low"], inf["ci_high"])


def _lr_vs_sdm(name: str, sdm_loglik: float, loglik: float, k: int) -> dict[str, float | int]:
    """Likelihood-ratio test of the SDM against a model nested in it by k restrictions (theta = 0 or
    theta = -rho b)."""
    return {f"lr_sdm_vs_{name}": 2 * (sdm_loglik - loglik), "lr_df": k,
            "lr_p_value": float(stats.chi2.sf(2 * (sdm_loglik - loglik), k))}


def _sdm_fit(ml: _MLSetup, rng: np.random.Generator) -> tuple[AnalysisResult, float]:
    """The SDM result and its log-likelihood (the LR tests of the SAR and SEM compare against it)."""
    k = ml.k
    d = _design(ml.panel, ml.spec, ml.outcome, ml.regressors, True, ml.method)
    fit = _fit_lag(d, ml.spec, ml.eig, ml.bounds)
    p = d.Z.shape[1]
    keep = list(range(2 * k))  # b and theta; the year dummies go to extra["year_effects"]
    est = np.concatenate([fit.delta[keep], [fit.rho, fit.sigma2]])
    idx = keep + [p, p + 1]
    se = np.sqrt(np.diag(fit.V)[idx])
    terms = d.terms + ["rho", "sigma2"]
    sub = keep + [p]
    table, draw_info = _effects_table(ml.regressors, fit.delta[:k], fit.delta[k:2 * k], fit.rho,
                                      fit.V[np.ix_(sub, sub)], ml.spec, ml.bounds, ml.draws, rng)
    extra, notes = ml.extra(fit.rho, "rho", fit.loglik, fit.sigma2_ml)
    extra |= {"effects": table.to_dict(orient="index"), "effects_draws": draw_info,
              "year_effects": dict(zip([str(y) for y in ml.panel.years[1:]], fit.delta[2 * k:].tolist())),
              "r2_definition": "squared correlation of the within outcome with its structural fit"}
    vcov = pd.DataFrame(fit.V[np.ix_(idx, idx)], index=terms, columns=terms)
    res = ml.result("sdm_ml", "Spatial Durbin model, ML, city and year effects", _ml_coefs(terms, est, se),
                    _pseudo_r2(d.y, fit.resid), notes + _paper_note(ml.weights), extra,
                    {"effects": table, "vcov": vcov})
    return res, fit.loglik


def _sar_fit(ml: _MLSetup, d: _Design, sdm_loglik: float, rng: np.random.Generator) -> AnalysisResult:
    """SAR (the SDM with theta = 0) on the design without W X."""
    k = ml.k
    fit = _fit_lag(d, ml.spec, ml.eig, ml.bounds)
    p = d.Z.shape[1]
    keep = list(range(k))
    est = np.concatenate([fit.delta[keep], [fit.rho, fit.sigma2]])
    se = np.sqrt(np.diag(fit.V)[keep + [p, p + 1]])
    # SAR effects: theta fixed at zero (zero rows/columns in the draw covariance)
    cov = np.zeros((2 * k + 1, 2 * k + 1))
    sub = keep + [p]
    pos = keep + [2 * k]
    cov[np.ix_(pos, pos)] = fit.V[np.ix_(sub, sub)]
    table, draw_info = _effects_table(ml.regressors, fit.delta[:k], np.zeros(k), fit.rho, cov, ml.spec, ml.bounds,
                                      ml.draws, rng)
    table = table.drop(columns="theta_share_of_direct")
    extra, notes = ml.extra(fit.rho, "rho", fit.loglik, fit.sigma2_ml)
    extra |= {"effects": table.to_dict(orient="index"), "effects_draws": draw_info}
    extra |= _lr_vs_sdm("sar", sdm_loglik, fit.loglik, k)
    return ml.result("sar_ml", "Spatial lag (SAR) model, ML, city and year effects",
                     _ml_coefs(d.terms + ["rho", "sigma2"], est, se), _pseudo_r2(d.y, fit.resid), notes, extra,
                     {"effects": table})


def _sem_fit(ml: _MLSetup, d: _Design, sdm_loglik: float) -> AnalysisResult:
    """SEM (autoregressive error) on the design without W X."""
    k = ml.k
    efit = _fit_error(d, ml.spec, ml.eig, ml.bounds)
    p = d.Z.shape[1]
    keep = list(range(k))
    est = np.concatenate([efit.beta[keep], [efit.lam, efit.sigma2]])
    se = np.sqrt(np.diag(efit.V)[keep + [p, p + 1]])
    extra, notes = ml.extra(efit.lam, "lambda", efit.loglik, efit.sigma2_ml)
    extra |= _lr_vs_sdm("sem", sdm_loglik, efit.loglik, k)
    return ml.result("sem_ml", "Spatial error (SEM) model, ML, city and year effects",
                     _ml_coefs(d.terms + ["lambda", "sigma2"], est, se), _pseudo_r2(d.y, efit.resid), notes, extra)


def _slx_ols(panel: _Panel, spec: Spectrum, outcome: str, regressors: Sequence[str],
            treatment: str) -> AnalysisResult:
    """SLX: y = X b + W X theta + mu_i + nu_t + e by OLS (classical errors, df = nT - n - T + 1 - 2k)."""
    n, T = panel.n, panel.T
    d = _design(panel, spec, outcome, regressors, True, "direct")
    coef, *_ = np.linalg.lstsq(d.Z, d.y, rcond=None)
    resid = d.y - d.Z @ coef
    df = n * T - n - d.Z.shape[1]
    s2 = float(resid @ resid) / df
    V = s2 * np.linalg.inv(d.Z.T @ d.Z)
    m = len(d.terms)
    est, se = coef[:m], np.sqrt(np.diag(V)[:m])
    t = est / se
    crit = float(stats.t.ppf(0.5 + CI_LEVEL / 2, df))
    coefs = coef_frame(d.terms, est, se, t, 2 * stats.t.sf(np.abs(t), df), est - crit * se, est + crit * se)
    ssr_tot = float(within_stacked(panel.stacked(outcome), n, T) @ within_stacked(panel.stacked(outcome), n, T))
    return AnalysisResult(id="slx_ols", title="SLX (W x regressors), OLS, city and year effects", coefs=coefs,
                          n_obs=n * T, se_type="iid", r2=1 - float(resid @ resid) / ssr_tot,
                          fixed_effects=("city", "year"), key_term=treatment, dep_var=outcome,
                          notes=("r2 is the within (two-way) R2",), extra={"df_resid": df, "sigma2": s2})
