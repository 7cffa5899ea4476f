"""Latent mediators for the paper's three mechanisms: one joint structural equation model (SEM).

Model (city i, year t; k = inno, factor, industry; j = the two indicators of mechanism k)::

    m_kj,it = nu_kj + lambda_kj eta_k,it + h_kj' W_it + mu_kj,i + v_kj,t + eps_kj,it   (measurement)
    eta_k,it = a_k x_it + g_k' W_it + mu_k,i + v_k,t + zeta_k,it                          (mechanism)
    nqp_it  = c' x_it + sum_k b_k eta_k,it + d' W_it + mu_i + v_t + e_it                    (outcome)

x = agglomeration, W = controls, eps ~ N(0, diag theta^2), zeta ~ N(0, Psi) (Psi full: the three
disturbances may correlate), e ~ N(0, sigma^2), zeta independent of e (relaxed by the rho grid).

Identification. The first indicator of each mechanism is its *marker*: lambda_k1 = 1 and h_k1 = 0.
So eta_k is measured in the marker's own units, its sign is the marker's sign, and the three latent
variables are tied to their indicators: no sign flips and no label switching between chains, whatever
the priors. The non-marker loadings lambda_k2 are constrained positive: both indicators of each
mechanism measure it in the same direction (the paper's indicators are all "more is more"). Left free,
a weakly identified mechanism (the data-factor one on the demo) let one of four chains settle in a
mode with lambda_k2 = -5.5 and a_k < 0 (r_hat 1.53).

City and year effects. Every observed variable is two-way within-transformed (demeaned by city and year;
alternating projections, exact in one sweep on a balanced panel) and the controls are partialled out
(Frisch-Waugh-Lovell). Because every equation carries its own city, year and control terms with free
coefficients (h_kj for non-marker indicators makes each indicator's control coefficients as free as in
Table 4), integrating those coefficients out under flat priors gives exactly the Gaussian likelihood of
the residualised data with the determinant counted over n_eff = n - n_city - n_year + 1 - rank(W)
rows instead of n (a restricted likelihood; it also gives the fixed-effects degrees of freedom).
This is chosen over Mundlak or ZeroSum effects because it removes 290 x 7 effect parameters, reproduces
the two-way FE (Table 4) estimator exactly, and is fast.

Marginalising eta. With Gaussian structural and measurement errors, z = (m_11, m_12, ..., m_K2, nqp)
given x is multivariate normal with mean pi x and covariance Sigma:

    pi_m = Lambda a,                 pi_y = c' + b' a
    Sigma_mm = Lambda Psi Lambda' + Theta,  Sigma_my = Lambda Psi b,  Sigma_yy = b' Psi b + sigma^2

so the 3 x n latent values disappear and the log-likelihood depends on the data only through the
cross-products Z'Z, Z'x, x'x (``sem_loglik``). eta's posterior can be drawn afterwards from its Gaussian
conditional (``latent_posterior``).

Scales. Each residualised variable is divided by its standard deviation before sampling (the indicators
come in counts, ratios and yuan); reported quantities are mapped back: a_k is in marker units per unit
of agglomeration, b_k in nqp units per marker unit, indirect / direct / total effects in nqp units per
unit of agglomeration, per-indicator effects a_k lambda_kj in the indicator's original units.

What is identified. The agglomeration -> mechanism link (a_k) is what the two-way panel identifies, as
in Table 4. The mechanism -> outcome link (b_k) is an assumption: no unobserved mediator-outcome
confounding (Jiang Ting 2022 recommends not estimating it at all). The rho grid shows how far that
assumption can bend: with corr(zeta_k, e) = rho_k the observed-data distribution is *identical* for
b(rho) = b0 - sigma0 / sqrt(1 - rho' R^-1 rho) * Psi^-1 (rho o psi) (R: correlation of zeta, psi: its sds)
and c'(rho) = c'0 + (b0 - b(rho))' a (total effect unchanged), so each posterior draw is mapped exactly
(no refit; the prior on b is carried over from the rho = 0 fit rather than re-imposed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm
import pytensor.tensor as pt

from .. import names
from ..conventions import hdi, posterior_summary
from ..panelops import two_way_within
from ..conventions import agreement as agreement_table
from ..errors import InputError, Problem
from ..results import AnalysisResult
from .errors import IID_ONLY_NOTES
from .mediation_figures import path_figure, ppc_figure, sensitivity_figure
from .result import BayesResult, assemble
from .sampling import SamplerSettings, sample
from .spec import ModelSpec, load_spec, prior_param

SPEC_ID = "bayes_mediation"
# The marginal likelihood of the indicators and the outcome (the prior-sensitivity check scales it).
LIKELIHOOD_POTENTIALS = ("loglik",)
DEFAULT_RHO_GRID: tuple[float, ...] = (-0.5, -0.4, -0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
REPORTED = ["a", "b", "indirect", "indirect_sum", "direct", "total", "share_mediated", "indicator_effect",
            "loading"]
_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------------------
# data: two-way within transformation, controls partialled out, standardised


@dataclass(frozen=True)
class MediationData:
    """Residualised, standardised data of the joint model and what is needed to map results back.

    ``z``: (n, 2K + 1) indicators in mechanism order, then the outcome; ``x``: (n,) treatment. Both are
    within-transformed by city and year, with the controls partialled out, divided by ``scale_z`` /
    ``scale_x`` (their standard deviations over n_eff degrees of freedom).
    """

    z: np.ndarray
    x: np.ndarray
    index: pd.MultiIndex
    mechanisms: tuple[str, ...]
    indicators: tuple[str, ...]
    outcome: str
    treatment: str
    controls: tuple[str, ...]
    scale_z: np.ndarray
    scale_x: float
    n_eff: int
    n_city: int
    n_year: int
    dropped_rows: int
    city_codes: np.ndarray
    year_codes: np.ndarray
    controls_within: np.ndarray

    def project(self, values: np.ndarray) -> np.ndarray:
        """Apply the data's own annihilator (two-way within, then controls partialled out) to (n, p)
        values; replicated errors pass through it so that they live in the same n_eff-dimensional space
        as the residualised data."""
        out = two_way_within(values, self.city_codes, self.year_codes)
        if self.controls_within.shape[1]:
            coef, *_ = np.linalg.lstsq(self.controls_within, out, rcond=None)
            out = out - self.controls_within @ coef
        return out

    @property
    def variables(self) -> tuple[str, ...]:
        return self.indicators + (self.outcome,)

    @property
    def szz(self) -> np.ndarray:
        return self.z.T @ self.z

    @property
    def szx(self) -> np.ndarray:
        return self.z.T @ self.x

    @property
    def sxx(self) -> float:
        return float(self.x @ self.x)


def prepare_mediation_data(frame: pd.DataFrame, controls: tuple[str, ...] | list[str],
                           mechanisms: dict[str, tuple[str, str]], *, outcome: str = names.NQP,
                           treatment: str = names.AGGLOMERATION) -> MediationData:
    """Validate the panel and build the residualised, standardised data (the caller's frame is not touched)."""
    what = "mediation panel"
    if not isinstance(frame.index, pd.MultiIndex) or list(frame.index.names) != [names.CITY, names.YEAR]:
        raise InputError([Problem(what, f"index must be a MultiIndex named ({names.CITY}, {names.YEAR})")])
    problems = []
    if not mechanisms:
        problems.append(Problem(what, "no mechanisms given"))
    for mech, pair in mechanisms.items():
        if len(pair) != 2:
            problems.append(Problem(what, f"mechanism '{mech}' needs exactly two indicators, got {len(pair)}"))
    indicators = tuple(c for pair in mechanisms.values() for c in pair)
    if len(set(indicators)) != len(indicators):
        problems.append(Problem(what, "an indicator is listed under two mechanisms"))
    columns = list(dict.fromkeys([*indicators, outcome, treatment, *controls]))
    problems += [Problem(what, "column not found", column=c) for c in columns if c not in frame.columns]
    if problems:
        raise InputError(problems)
    sub = frame[columns].apply(pd.to_numeric, errors="coerce")
    complete = np.isfinite(sub.to_numpy(dtype=float)).all(axis=1)
    sub = sub.loc[complete]
    dropped = int((~complete).sum())
    city_codes, cities = pd.factorize(sub.index.get_level_values(names.CITY))
    year_codes, years = pd.factorize(sub.index.get_level_values(names.YEAR))
    n = len(sub)
    if n == 0 or len(cities) < 2 or len(years) < 2:
        raise InputError([Problem(what, "need at least two cities and two years with complete data")])
    within = two_way_within(sub.to_numpy(dtype=float), city_codes, year_codes)
    col = {c: i for i, c in enumerate(columns)}
    w = within[:, [col[c] for c in controls]]
    rank_w = 0
    if w.shape[1]:
        rank_w = int(np.linalg.matrix_rank(w))
        coef, *_ = np.linalg.lstsq(w, within, rcond=None)
        within = within - w @ coef  # Frisch-Waugh-Lovell: partial the controls out of every variable
    n_eff = n - len(cities) - len(years) + 1 - rank_w
    if n_eff <= len(indicators) + 2:
        raise InputError([Problem(what, f"too few degrees of freedom after fixed effects and controls ({n_eff})")])
    z = within[:, [col[c] for c in (*indicators, outcome)]]
    x = within[:, col[treatment]]
    scale_z = np.sqrt((z**2).sum(axis=0) / n_eff)
    scale_x = float(np.sqrt((x**2).sum() / n_eff))
    flat = [c for c, s in zip((*indicators, outcome), scale_z) if not s > 1e-12 * (1 + abs(sub[c]).max())]
    if not scale_x > 1e-12 * (1 + abs(sub[treatment]).max()):
        flat.append(treatment)
    if flat:
        raise InputError([Problem(what, "no variation left after city/year effects and controls", column=c)
                          for c in flat])
    return MediationData(z=z / scale_z, x=x / scale_x, index=sub.index, mechanisms=tuple(mechanisms),
                         indicators=indicators, outcome=outcome, treatment=treatment,
                         controls=tuple(controls), scale_z=scale_z, scale_x=scale_x, n_eff=int(n_eff),
                         n_city=len(cities), n_year=len(years), dropped_rows=dropped,
                         city_codes=np.asarray(city_codes), year_codes=np.asarray(year_codes),
                         controls_within=w)


# --------------------------------------------------------------------------------------------------
# the implied moments (numpy), the log-likelihood, the sensitivity map


def full_loadings(loading: np.ndarray) -> np.ndarray:
    """(K,) non-marker loadings -> (2K,) loadings in indicator order (markers are 1)."""
    loading = np.asarray(loading, dtype=float)
    return np.stack([np.ones_like(loading), loading], axis=-1).reshape(*loading.shape[:-1], -1)


def implied_moments(a: np.ndarray, b: np.ndarray, c: float, loading: np.ndarray, theta: np.ndarray,
                    psi: np.ndarray, sigma: float, cov_zeta_e: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Mean slope ``pi`` (2K+1,) and covariance ``Sigma`` of z = (indicators, outcome) given x.

    ``loading``: (K,) non-marker loadings; ``psi``: (K, K) covariance of zeta; ``cov_zeta_e``: (K,)
    covariance between zeta and the outcome error (zero in the fitted model; used by the sensitivity map).
    """
    a, b, theta = (np.asarray(v, dtype=float) for v in (a, b, theta))
    k = a.size
    lam = np.zeros((2 * k, k))
    lam[np.arange(2 * k), np.repeat(np.arange(k), 2)] = full_loadings(loading)
    s = np.zeros(k) if cov_zeta_e is None else np.asarray(cov_zeta_e, dtype=float)
    pi = np.concatenate([lam @ a, [c + b @ a]])
    sigma_mat = np.empty((2 * k + 1, 2 * k + 1))
    sigma_mat[: 2 * k, : 2 * k] = lam @ psi @ lam.T + np.diag(theta**2)
    sigma_mat[: 2 * k, 2 * k] = sigma_mat[2 * k, : 2 * k] = lam @ (psi @ b + s)
    sigma_mat[2 * k, 2 * k] = b @ psi @ b + 2 * b @ s + sigma**2
    return pi, sigma_mat


def sem_loglik(pi: np.ndarray, sigma_mat: np.ndarray, szz: np.ndarray, szx: np.ndarray, sxx: float,
               n_eff: float) -> float:
    """Restricted log-likelihood of the residualised data from its cross-products (numpy reference)."""
    resid = szz - np.outer(pi, szx) - np.outer(szx, pi) + sxx * np.outer(pi, pi)
    _, logdet = np.linalg.slogdet(sigma_mat)
    p = len(pi)
    return float(-0.5 * n_eff * (p * _LOG_2PI + logdet) - 0.5 * np.trace(np.linalg.solve(sigma_mat, resid)))


def sensitivity_b(b: np.ndarray, psi: np.ndarray, sigma: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """b(rho) per draw: the outcome slopes giving the same observed-data distribution when
    corr(zeta_k, e) = rho_k. ``b`` (S, K), ``psi`` (S, K, K), ``sigma`` (S,), ``rho`` (K,) or (S, K).
    NaN where (rho, corr(zeta)) is not a valid correlation matrix."""
    sd = np.sqrt(np.einsum("skk->sk", psi))
    q = np.broadcast_to(rho, b.shape) * sd                     # cov(zeta, e) / sigma
    u = np.linalg.solve(psi, q[..., None])[..., 0]             # Psi^-1 q
    denom = 1.0 - np.einsum("sk,sk->s", q, u)                  # 1 - rho' R^-1 rho
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(denom > 0, sigma / np.sqrt(np.where(denom > 0, denom, 1.0)), np.nan)
    return b - scale[:, None] * u


# --------------------------------------------------------------------------------------------------
# the PyMC model


def _unrolled_cholesky(mat, k: int) -> list[list]:
    """Lower Cholesky factor of a small symmetric positive-definite (k, k) tensor as scalar graphs."""
    low: list[list] = [[None] * k for _ in range(k)]
    for i in range(k):
        for j in range(i + 1):
            s = mat[i, j]
            for q in range(j):
                s = s - low[i][q] * low[j][q]
            low[i][j] = pt.sqrt(s) if i == j else s / low[j][j]
    return low


def _unrolled_lower_inverse(low: list[list], k: int):
    """Inverse of a lower-triangular factor given as scalar graphs (forward substitution)."""
    inv: list[list] = [[pt.constant(0.0)] * k for _ in range(k)]
    for j in range(k):
        inv[j][j] = 1.0 / low[j][j]
        for i in range(j + 1, k):
            s = 0.0
            for q in range(j, i):
                s = s + low[i][q] * inv[q][j]
            inv[i][j] = -s / low[i][i]
    return pt.stack([pt.stack(row) for row in inv])


def build_model(data: MediationData, spec: ModelSpec | None = None) -> pm.Model:
    """The marginalised SEM: 7K - 1 + K(K+1)/2 parameters, likelihood from cross-products."""
    spec = spec or load_spec(SPEC_ID)
    k = len(data.mechanisms)
    p = 2 * k + 1
    mech_of = np.repeat(np.arange(k), 2)
    marker = np.arange(k) * 2
    onehot = np.zeros((2 * k, k))
    onehot[np.arange(2 * k), mech_of] = 1.0
    coords = {names.MECHANISM: list(data.mechanisms), names.INDICATOR: list(data.indicators),
              names.VARIABLE: list(data.variables), names.VARIABLE_BIS: list(data.variables)}
    with pm.Model(coords=coords) as model:
        szz = pm.Data("szz", data.szz, dims=(names.VARIABLE, names.VARIABLE_BIS))
        szx = pm.Data("szx", data.szx, dims=names.VARIABLE)
        sxx = pm.Data("sxx", data.sxx)
        n_eff = pm.Data("n_eff", float(data.n_eff))
        scale_m = pm.Data("scale_m", data.scale_z[: 2 * k], dims=names.INDICATOR)
        scale_y = pm.Data("scale_y", float(data.scale_z[-1]))
        scale_x = pm.Data("scale_x", float(data.scale_x))

        a = pm.Normal("a_std", 0.0, prior_param(spec, "a", 1.0), dims=names.MECHANISM)
        b = pm.Normal("b_std", 0.0, prior_param(spec, "b", 1.0), dims=names.MECHANISM)
        c = pm.Normal("c_std", 0.0, prior_param(spec, "c", 1.0))
        lam_free = pm.TruncatedNormal("loading_std", prior_param(spec, "loading", 0.5, key="mu"),
                                      prior_param(spec, "loading", 1.0), lower=0.0, dims=names.MECHANISM)
        theta = pm.HalfNormal("theta", prior_param(spec, "theta", 1.0), dims=names.INDICATOR)
        sigma = pm.HalfNormal("sigma_std", prior_param(spec, "sigma", 1.0))  # standardised scale
        zeta_sd_prior = prior_param(spec, "zeta_sd", 1.0)
        if k >= 2:
            chol, _, _ = pm.LKJCholeskyCov("zeta", n=k, eta=prior_param(spec, "zeta_corr", 2.0, key="eta"),
                                           sd_dist=pm.HalfNormal.dist(zeta_sd_prior, shape=k),
                                           compute_corr=True)
            chol_psi = chol
        else:
            zeta_sd = pm.HalfNormal("zeta_stds", zeta_sd_prior, dims=names.MECHANISM)
            chol_psi = pt.diag(zeta_sd)

        lam = pt.stack([pt.ones(k), lam_free], axis=1).reshape((2 * k,))
        # Sigma = F Psi F' + D with F = [Lambda; b'] (given eta, indicators and outcome are independent)
        # and D = diag(theta^2, sigma^2); with Psi = C C', G = F C, Woodbury and the determinant lemma
        # reduce every inverse and determinant to the K x K matrix I + G' D^-1 G, factorised by an
        # unrolled Cholesky (about 100 times faster under numba than LAPACK calls on tiny matrices).
        f_mat = pt.concatenate([lam[:, None] * onehot, b[None, :]], axis=0)
        pi = pt.concatenate([lam * a[mech_of], (c + pt.dot(b, a))[None]])
        resid = szz - pt.outer(pi, szx) - pt.outer(szx, pi) + sxx * pt.outer(pi, pi)
        d = pt.concatenate([theta**2, sigma[None] ** 2])
        g = f_mat @ chol_psi
        gd = g / d[:, None]
        small = pt.eye(k) + g.T @ gd
        low = _unrolled_cholesky(small, k)
        low_inv = _unrolled_lower_inverse(low, k)
        logdet = pt.sum(pt.log(d)) + 2.0 * sum(pt.log(low[i][i]) for i in range(k))
        quad = pt.sum(pt.diag(resid) / d) - pt.sum((low_inv @ (gd.T @ resid @ gd)) * low_inv)
        pm.Potential("loglik", -0.5 * n_eff * (p * _LOG_2PI + logdet) - 0.5 * quad)

        # Reported quantities on the original scales.
        per_x = scale_y / scale_x
        marker_scale = scale_m[marker]
        pm.Deterministic("a", a * marker_scale / scale_x, dims=names.MECHANISM)
        pm.Deterministic("b", b * scale_y / marker_scale, dims=names.MECHANISM)
        indirect = pm.Deterministic("indirect", a * b * per_x, dims=names.MECHANISM)
        indirect_sum = pm.Deterministic("indirect_sum", pt.sum(indirect))
        direct = pm.Deterministic("direct", c * per_x)
        total = pm.Deterministic("total", direct + indirect_sum)
        pm.Deterministic("share_mediated", indirect_sum / total)
        pm.Deterministic("indicator_effect", lam * a[mech_of] * scale_m / scale_x, dims=names.INDICATOR)
        pm.Deterministic("loading", lam_free * scale_m[marker + 1] / marker_scale, dims=names.MECHANISM)
    return model


def _draws(idata: az.InferenceData, var: str) -> np.ndarray:
    """Posterior draws with chain and draw flattened into the first axis."""
    da = idata.posterior[var]
    other = [d for d in da.dims if d not in ("chain", "draw")]
    return da.stack(sample=("chain", "draw")).transpose("sample", *other).to_numpy()


def _sem_draws(idata: az.InferenceData, k: int, n_draws: int) -> tuple[np.ndarray, ...]:
    """a, b, c, loadings, theta, sigma, psi draws (standardised scale) and ``n_draws`` evenly spread picks."""
    a, b, c = _draws(idata, "a_std"), _draws(idata, "b_std"), _draws(idata, "c_std")
    lam, theta, sigma = _draws(idata, "loading_std"), _draws(idata, "theta"), _draws(idata, "sigma_std")
    pick = np.linspace(0, len(a) - 1, n_draws).round().astype(int)
    return a, b, c, lam, theta, sigma, _psi_draws(idata, k), pick


def _psi_draws(idata: az.InferenceData, k: int) -> np.ndarray:
    if "zeta_corr" in idata.posterior:
        sd = _draws(idata, "zeta_stds")
        corr = _draws(idata, "zeta_corr")
        return corr * sd[:, :, None] * sd[:, None, :]
    sd = _draws(idata, "zeta_stds")
    return np.stack([np.diag(s**2) for s in sd])


# --------------------------------------------------------------------------------------------------
# derived outputs: latent posterior, sensitivity, predictive checks


def latent_posterior(idata: az.InferenceData, data: MediationData, n_draws: int = 100,
                     seed: int = 0) -> np.ndarray:
    """Draws of eta (n_draws, n, K) from p(eta | z, x, parameters), in the marker's original units after
    the city/year effects and the controls are removed. Gaussian conditional of the joint SEM."""
    rng = np.random.default_rng(seed)
    k = len(data.mechanisms)
    a, b, c, lam, theta, sigma, psi, pick = _sem_draws(idata, k, n_draws)
    lam_mat = np.zeros((2 * k, k))
    out = np.empty((n_draws, len(data.x), k))
    for j, s in enumerate(pick):
        pi, sig = implied_moments(a[s], b[s], c[s], lam[s], theta[s], psi[s], sigma[s])
        lam_mat[np.arange(2 * k), np.repeat(np.arange(k), 2)] = full_loadings(lam[s])
        cross = np.concatenate([psi[s] @ lam_mat.T, (psi[s] @ b[s])[:, None]], axis=1)   # cov(eta, z)
        gain = np.linalg.solve(sig, cross.T).T
        mean = np.outer(data.x, a[s]) + (data.z - np.outer(data.x, pi)) @ gain.T
        cov = psi[s] - gain @ cross.T
        chol = np.linalg.cholesky(cov + 1e-12 * np.eye(k))
        out[j] = mean + rng.standard_normal((len(data.x), k)) @ chol.T
    return out * data.scale_z[np.arange(k) * 2]


def sensitivity_tables(idata: az.InferenceData, data: MediationData, rho_grid: tuple[float, ...],
                       step: float = 0.01) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Indirect effects under corr(zeta_k, e) = rho, mapped exactly per draw (no refit).

    Returns the grid table (one row per scenario, rho and mechanism: mean and HDI), the fine curve used
    for thresholds, and the thresholds: for each mechanism the rho_k (others 0) nearest 0 at which the
    94% HDI of its indirect effect first includes zero, searched on both sides in steps of ``step``.
    """
    k = len(data.mechanisms)
    a, b = _draws(idata, "a_std"), _draws(idata, "b_std")
    sigma, psi = _draws(idata, "sigma_std"), _psi_draws(idata, k)
    per_x = data.scale_z[-1] / data.scale_x

    def indirect(rho_vec: np.ndarray) -> np.ndarray:
        return a * sensitivity_b(b, psi, sigma, rho_vec) * per_x

    rows = []
    fine = np.round(np.arange(-0.99, 0.99 + step / 2, step), 10)
    grid_values = sorted(set(np.round(np.asarray(rho_grid, dtype=float), 10)) | set(fine))
    for scenario in ("one_at_a_time", "common"):
        for rho in grid_values:
            if scenario == "common":
                eff = indirect(np.full(k, rho))
            for m, mech in enumerate(data.mechanisms):
                if scenario == "one_at_a_time":
                    vec = np.zeros(k)
                    vec[m] = rho
                    eff_m = indirect(vec)[:, m]
                else:
                    eff_m = eff[:, m]
                lo, hi = hdi(eff_m)
                ok = bool(np.isfinite(eff_m).all())
                rows.append({"scenario": scenario, "rho": float(rho), names.MECHANISM: mech,
                             "mean": float(eff_m.mean()) if ok else math.nan, "ci_low": lo, "ci_high": hi})
    curve = pd.DataFrame(rows)
    on_grid = np.isin(curve["rho"].round(10), np.round(np.asarray(rho_grid, dtype=float), 10))
    table = curve.loc[on_grid].reset_index(drop=True)
    thresholds: dict[str, Any] = {}
    for scenario in ("one_at_a_time", "common"):
        block = {}
        for mech in data.mechanisms:
            c = curve[(curve["scenario"] == scenario) & (curve[names.MECHANISM] == mech)].set_index("rho")
            covers = (c["ci_low"] <= 0) & (c["ci_high"] >= 0)
            if bool(covers.get(0.0, False)):
                block[mech] = {"rho": 0.0, "note": "94% interval includes zero already at rho = 0"}
                continue
            found = {}
            for side, values in (("positive", c.index[c.index > 0]), ("negative", c.index[c.index < 0][::-1])):
                for r in values:
                    if not np.isfinite(c.at[r, "ci_low"]):
                        break  # beyond the range where (rho, corr(zeta)) is a valid correlation matrix
                    if covers[r]:
                        found[side] = float(r)
                        break
            if found:
                nearest = min(found.values(), key=abs)
                block[mech] = {"rho": nearest, "positive_side": found.get("positive"),
                               "negative_side": found.get("negative")}
            else:
                block[mech] = {"rho": None, "note": "interval excludes zero over the whole admissible range"}
        thresholds[scenario] = block
    return table, curve, thresholds


def predictive_draws(idata: az.InferenceData, data: MediationData, n_draws: int,
                     seed: int = 0) -> np.ndarray:
    """Replicated residualised, standardised data (n_draws, n, 2K+1) from the posterior: iid errors
    with covariance Sigma passed through the same within / partialling projection as the data."""
    rng = np.random.default_rng(seed)
    k = len(data.mechanisms)
    a, b, c, lam, theta, sigma, psi, pick = _sem_draws(idata, k, n_draws)
    reps = np.empty((n_draws, len(data.x), 2 * k + 1))
    for j, s in enumerate(pick):
        pi, sig = implied_moments(a[s], b[s], c[s], lam[s], theta[s], psi[s], sigma[s])
        noise = rng.standard_normal((len(data.x), 2 * k + 1)) @ np.linalg.cholesky(sig).T
        reps[j] = np.outer(data.x, pi) + data.project(noise)
    return reps


def ppc_table(reps: np.ndarray, data: MediationData) -> pd.DataFrame:
    """Posterior predictive p-values of the sd, skewness and kurtosis of each residualised variable."""
    def stats(v: np.ndarray) -> np.ndarray:
        centred = v - v.mean(axis=-2, keepdims=True)
        sd = np.sqrt((centred**2).mean(axis=-2))
        return np.stack([sd, (centred**3).mean(axis=-2) / sd**3, (centred**4).mean(axis=-2) / sd**4], axis=-1)

    obs, rep = stats(data.z), stats(reps)
    p = (rep >= obs[None]).mean(axis=0)
    return pd.DataFrame({"obs_sd": obs[:, 0], "p_sd": p[:, 0], "obs_skew": obs[:, 1], "p_skew": p[:, 1],
                         "obs_kurtosis": obs[:, 2], "p_kurtosis": p[:, 2]},
                        index=pd.Index(list(data.variables), name="variable"))


# --------------------------------------------------------------------------------------------------
# figures


# --------------------------------------------------------------------------------------------------
# the analysis


def fit_mediation(frame: pd.DataFrame, controls: tuple[str, ...] | list[str],
                  mechanisms: dict[str, tuple[str, str]], settings: SamplerSettings,
                  oracles: dict[str, AnalysisResult] | None = None,
                  rho_grid: tuple[float, ...] = DEFAULT_RHO_GRID, *, outcome: str = names.NQP,
                  treatment: str = names.AGGLOMERATION, spec: ModelSpec | None = None) -> BayesResult:
    """Fit the joint latent-mediator SEM and assemble the report quantities (id ``bayes_mediation``).

    ``oracles``: Table-4-style results keyed ``table4_<indicator>`` (coefs row ``agglomeration``); each
    indicator's effect a_k x loading is compared with its oracle.
    """
    spec = spec or load_spec(SPEC_ID)
    if spec.builder != "mediation":
        raise ValueError(f"spec {spec.id} is for builder '{spec.builder}', not 'mediation'")
    rho_grid = tuple(float(r) for r in rho_grid)
    if any(not -1 < r < 1 for r in rho_grid):
        raise ValueError("rho_grid values must lie in (-1, 1)")
    data = prepare_mediation_data(frame, controls, mechanisms, outcome=outcome, treatment=treatment)
    model = build_model(data, spec)
    run = spec.sampler_settings(settings)
    # The cross-product data have fixed shapes, so one compilation serves any panel with these labels.
    key = f"{spec.spec_hash}:mediation:{','.join(data.variables)}"
    idata = sample(model, run, cache_key=key)
    idata.attrs.update({"n_eff": data.n_eff, "scale_x": data.scale_x,
                        "scale_z": ",".join(f"{s:.10g}" for s in data.scale_z)})
    summary = posterior_summary(idata, REPORTED)
    table, curve, thresholds = sensitivity_tables(idata, data, rho_grid,
                                                  float(spec.options.get("sensitivity_step", 0.01)))
    reps = predictive_draws(idata, data, int(spec.options.get("ppc_draws", 100)), seed=run.seed)
    ppc = ppc_table(reps, data)
    notes = (*MEDIATION_NOTES, IID_ONLY_NOTES["mediation"])
    if data.dropped_rows:
        notes += (f"{data.dropped_rows} city-years with a missing value were left out.",)
    # The fine rho curve (about 1,200 rows) lives in the sensitivity figure, not in the report's tables.
    return assemble(
        spec, idata, REPORTED, summary=summary, agreement_table=indicator_agreement(summary, data, oracles),
        model=model, likelihood_potentials=LIKELIHOOD_POTENTIALS,
        no_fitted_reason="the latent-mediator model is fitted to the cross-products of the within-transformed "
                         "indicators, outcome and treatment, not to each city-year",
        agreement_note=("Not meant to match: the joint model adjusts differently (both indicators of a "
                        "mechanism share one latent slope a_k, the loading ties them, and the three "
                        "mechanisms and the outcome are modelled together), so each indicator effect "
                        "a_k x loading should be close to its Table 4 estimate but not identical."),
        notes=notes, extra=mediation_extra(summary, data, thresholds, rho_grid, ppc),
        tables={"sensitivity": table, "ppc": ppc},
        figures={"path": path_figure(summary, data), "sensitivity": sensitivity_figure(curve, thresholds, data),
                 "ppc": ppc_figure(reps, data)})


MEDIATION_NOTES: tuple[str, ...] = (
    "The agglomeration -> mechanism link (a_k) is what the two-way panel identifies, as in Table 4.",
    "The mechanism -> outcome link (b_k), and with it every indirect effect, rests on the assumption "
    "of no unobserved mediator-outcome confounding (Jiang Ting 2022 advises against estimating it); "
    "see the rho sensitivity grid and thresholds.",
    "Identification: the first indicator of each mechanism is its marker (loading 1), so each latent "
    "mechanism is on its marker's original scale and cannot flip sign or swap labels.",
    "City and year effects and the control coefficients are removed exactly by the two-way within "
    "transformation and partialling out; the latent mechanisms are integrated out analytically.",
    "a_k: marker units per unit of agglomeration; b_k: nqp per marker unit; indirect, direct, total: "
    "nqp per unit of agglomeration; indicator_effect: each indicator's original units per unit of "
    "agglomeration.",
)


def indicator_agreement(summary: pd.DataFrame, data: MediationData,
                        oracles: dict[str, AnalysisResult] | None) -> pd.DataFrame | None:
    """Each indicator's effect a_k x loading against its Table 4 estimate (``table4_<indicator>``)."""
    parts = []
    for ind in data.indicators if oracles else ():
        oracle = oracles.get(f"table4_{ind}") if oracles else None
        if oracle is None or names.AGGLOMERATION not in oracle.coefs.index:
            continue
        part = agreement_table(summary, oracle, {names.AGGLOMERATION: f"indicator_effect[{ind}]"})
        part.index = pd.Index([ind], name=names.INDICATOR)
        part.insert(0, "oracle", oracle.id)
        parts.append(part)
    if not parts:
        return None
    agreement = pd.concat(parts)
    agreement.attrs["oracle"] = "table4_<indicator>"
    return agreement


def mediation_extra(summary: pd.DataFrame, data: MediationData, thresholds: dict[str, Any],
                    rho_grid: tuple[float, ...], ppc: pd.DataFrame) -> dict[str, Any]:
    """What summary.json says about the mediation fit: paths, effects, sensitivity and PPC p-values."""
    def block(var: str) -> dict[str, Any]:
        rows = summary.loc[[i for i in summary.index if i == var or i.startswith(f"{var}[")]]
        return {(i.split("[", 1)[1].rstrip("]") if "[" in i else "value"):
                {"mean": r["mean"], "sd": r["sd"], "ci": [r["ci_low"], r["ci_high"]]} for i, r in rows.iterrows()}

    return {
        "a": block("a"), "b": block("b"), "indirect": block("indirect"),
        "indirect_sum": block("indirect_sum")["value"], "direct": block("direct")["value"],
        "total": block("total")["value"], "share_mediated": block("share_mediated")["value"],
        "indicator_effect": block("indicator_effect"),
        "sensitivity_thresholds": thresholds,
        "sensitivity_method": "exact per-draw map of b under corr(zeta_k, e) = rho_k (no refit); "
                              "primary scenario one_at_a_time (rho_k varied, other rho held at 0), "
                              "common-rho scenario also tabulated",
        "rho_grid": list(rho_grid),
        "identification": "marker indicators (first loading of each mechanism fixed to 1)",
        "effects": "two-way within transformation; controls partialled out (restricted likelihood)",
        "n": int(len(data.x)), "n_eff": data.n_eff, "dropped_rows": data.dropped_rows,
        "ppc_p_values": {v: {"sd": r["p_sd"], "skew": r["p_skew"], "kurtosis": r["p_kurtosis"]}
                         for v, r in ppc.iterrows()},
    }
