"""The spatial Durbin family (builder ``sdm``): SDM, SAR, SEM and SLX with two-way effects.

Two-way effects by the within (Frisch-Waugh-Lovell) transformation of every regressor of the
  structural equation, y - rho W y = X beta + W X theta + mu + nu_t + e, i.e. the two-way projection M is
  applied to y, W y, X and W X. This is the profile likelihood of the explicit-effects model (what the ML
  oracle maximises). Flat priors on the effects integrated out give the likelihood forms of
  ``LIKELIHOOD_FORMS``: by default Lee & Yu's (2010) transformation for the city effects (Jacobian
  (T - 1) log|I - rho W|, (n - 1)(T - 1) residual degrees of freedom for sigma), exact with islands and with
  the same rho-profile as the ML oracle; the full two-way Lee-Yu form and the ML direct form are options.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import pymc as pm
import pytensor.tensor as pt

from .. import names
from ..conventions import CI_PROB, hdi_bounds, posterior_summary
from ..data.weights import SpatialWeights
from ..errors import InputError, Problem
from ..names import PAPER_RHO
from ..panelops import within
from ..results import AnalysisResult
from ..spatial_linalg import DENSE_LIMIT, spatial_effects
from ..spatial_linalg import lag as spatial_lag
from .errors import IID_ONLY_NOTES
from .result import BayesResult, SpatialFit, assemble
from .sampling import SamplerSettings, sample
from .spatial import model_terms, nonzero_sd, panel_arrays, project_out_years, resolve_spec, year_direction
from .spec import ModelSpec, prior_param


SdmModel = Literal["sdm", "sar", "sem", "slx"]


SDM_KINDS: tuple[str, ...] = ("sdm", "sar", "sem", "slx")


# How the two-way effects enter the SDM-family likelihood (after integrating them out under flat priors):
# lee_yu_city: data-level city effects (Lee-Yu transformation, Jacobian (T-1) log|I - rho W|), structural
#   year effects; exact with islands, same rho as the ML oracle's default; (n-1)(T-1) residual df.
# lee_yu_two_way: also data-level year effects, Jacobian (T-1)[log|I - rho W| - log(1 - rho)]; removes the
#   O(1/n) bias of rho too, but needs W 1 = 1 (no islands) to be exact.
# direct: T log|I - rho W| with nT observations (ML "direct approach", spreg's Panel_FE_*).
# The SEM's year effects are in y whatever the form (exact with islands, see _sem_mean), so for the SEM
# lee_yu_city and lee_yu_two_way are the same likelihood.
LIKELIHOOD_FORMS: tuple[str, ...] = ("lee_yu_city", "lee_yu_two_way", "direct")


# ================================================================================================
# SDM family
# ================================================================================================
@dataclass(frozen=True)
class SdmData:
    """Within-transformed pieces of y - rho W y = X beta + W X theta + mu + nu_t + e (all (n, T[, k]))."""

    y: np.ndarray
    wy: np.ndarray
    x: np.ndarray
    wx: np.ndarray
    years: list[int]
    terms: list[str]


def sdm_data(frame: pd.DataFrame, terms: list[str], weights: SpatialWeights, outcome: str = names.NQP) -> SdmData:
    """Lag first (W on raw data, per year), then the two-way within transformation of every piece."""
    y, x, years = panel_arrays(frame, [outcome, *terms], weights, "sdm")
    w = weights.row_standardised
    return SdmData(within(y), within(spatial_lag(w, y)), within(x), within(spatial_lag(w, x)), years, terms)


def build_sdm_model(data: SdmData, weights: SpatialWeights, spec: ModelSpec, model: SdmModel = "sdm") -> pm.Model:
    """Bayesian SDM / SAR / SEM / SLX on within-transformed data; rho ~ Uniform(1/lambda_min, 1)."""
    if model not in ("sdm", "sar", "sem", "slx"):
        raise ValueError(f"model must be one of sdm, sar, sem, slx; got {model!r}")
    n, t, p = data.x.shape
    lam = np.asarray(weights.eigenvalues)
    lo, hi = weights.rho_bounds
    y_sd = nonzero_sd(data.y)
    x_sd = nonzero_sd(data.x.reshape(-1, p), axis=0)
    ys, wys = data.y / y_sd, data.wy / y_sd
    xs, wxs = data.x / x_sd, data.wx / x_sd
    form = spec.options.get("likelihood_form", "lee_yu_city")
    if form not in LIKELIHOOD_FORMS:
        raise InputError([Problem(spec.id, f"options.likelihood_form must be one of {LIKELIHOOD_FORMS}, got {form!r}")])
    lag = model in ("sdm", "sar")
    durbin = model in ("sdm", "slx")
    coords = {names.CITY: list(weights.ids), names.YEAR: data.years, names.COEF: data.terms}
    with pm.Model(coords=coords) as m:
        xd = pm.Data("x", xs, dims=(names.CITY, names.YEAR, names.COEF))
        beta_s = pm.Normal("beta_std", 0.0, prior_param(spec, "beta", 10.0), dims=names.COEF)
        pm.Deterministic("beta", beta_s * y_sd / x_sd, dims=names.COEF)
        xb = pt.tensordot(xd, beta_s, axes=[[2], [0]])
        if durbin:
            wxd = pm.Data("wx", wxs, dims=(names.CITY, names.YEAR, names.COEF))
            theta_s = pm.Normal("theta_std", 0.0, prior_param(spec, "theta", 10.0), dims=names.COEF)
            pm.Deterministic("theta", theta_s * y_sd / x_sd, dims=names.COEF)
            xb = xb + pt.tensordot(wxd, theta_s, axes=[[2], [0]])
        sigma_s = pm.HalfNormal("sigma_std", prior_param(spec, "sigma", 1.0))
        pm.Deterministic("sigma", sigma_s * y_sd)
        if model != "slx":
            # the interval transform keeps rho inside the admissible (1/lambda_min, 1)
            rho = pm.Uniform("rho", lo, hi)
            # Jacobian of the within-transformed data, log|I - rho W| = sum_k log(1 - rho lambda_k):
            # lee_yu_city (default, as the ML oracle): (T - 1) log|I - rho W|, Lee & Yu's (2010)
            # transformation for data-level city effects (exact with islands; year effects as dummies);
            # lee_yu_two_way: (T - 1)[log|I - rho W| - log(1 - rho)], also data-level year effects (needs
            # every row of W to sum to 1); direct: T log|I - rho W|, which biases rho in short panels.
            logdet = pt.sum(pt.log1p(-rho * lam))
            if form == "direct":
                pm.Potential("log_jacobian", t * logdet)
            elif form == "lee_yu_city" or model == "sem":  # the SEM's year term is below
                pm.Potential("log_jacobian", (t - 1) * logdet)
            else:
                pm.Potential("log_jacobian", (t - 1) * (logdet - pt.log1p(-rho)))
        if lag:
            wyd = pm.Data("wy", wys, dims=(names.CITY, names.YEAR))
            mean = rho * wyd + xb
            obs = ys
        elif model == "sem":
            mean = _sem_mean(ys, xs, xb, beta_s, rho, weights, form, t)
            obs = ys
        else:
            mean = xb
            obs = ys
        # flat-prior city and year effects integrated out: the residual has (n - 1)(T - 1) degrees of freedom
        if form != "direct":
            pm.Potential("effects_df", (n + t - 1) * pt.log(sigma_s))
        pm.Normal(spec.outcome, mean, sigma_s, observed=obs, dims=(names.CITY, names.YEAR))
    return m


def _sem_mean(ys: np.ndarray, xs: np.ndarray, xb: Any, beta_s: Any, rho: Any, weights: SpatialWeights,
              form: str, t: int) -> Any:
    """The SEM's year effects sit in y, as in the ML oracle (y = X beta + mu + nu_t + u, u = rho W u + e),
    so among the innovations (I - rho W)(y - X beta) a year effect points along a = (I - rho W) 1, which
    is not constant where W has islands. Integrating the effects out under flat priors: the city effects
    go with the time-demeaning, and the year effects by projecting a out of every year's innovations,
    which adds -(T - 1) log(|a| / sqrt(n)) (the lee_yu_two_way term -(T - 1) log(1 - rho) where every
    row of W sums to 1). W is applied to the two-way within data: their year means lie along 1, which
    (I - rho W) maps onto a, so the projection removes them with the year effects (W of the within
    data, not the within of W y, whose year means would not). Returned as a "mean" whose residual is
    that projected innovation."""
    w = weights.row_standardised
    n, _, k = xs.shape
    w_ys = pm.Data("w_within_y", (w @ ys.reshape(n, -1)).reshape(ys.shape), dims=(names.CITY, names.YEAR))
    w_xs = pm.Data("w_within_x", (w @ xs.reshape(n, -1)).reshape(xs.shape),
                   dims=(names.CITY, names.YEAR, names.COEF))
    u = ys - xb - rho * (w_ys - pt.tensordot(w_xs, beta_s, axes=[[2], [0]]))
    row_sums = np.asarray(w.sum(axis=1)).ravel()
    a = 1.0 - rho * row_sums
    aa = pt.sum(a ** 2)
    e = u - a[:, None] * (pt.dot(a, u) / aa)[None, :]
    if form != "direct":
        pm.Potential("year_effects_jacobian", -(t - 1) * 0.5 * pt.log(aa / n))
    return ys - e

def _sdm_draws(idata, data: SdmData, weights: SpatialWeights, model: str, draws: np.ndarray | None = None) -> dict[str, np.ndarray]:
    post = idata.posterior.stack(sample=("chain", "draw"))
    if draws is not None:
        post = post.isel(sample=draws)
    p = len(data.terms)
    s = post.sizes["sample"]
    beta = post["beta"].transpose("sample", names.COEF).values
    theta = post["theta"].transpose("sample", names.COEF).values if "theta" in post else np.zeros((s, p))
    rho = post["rho"].values if "rho" in post else np.zeros(s)
    return {"beta": beta, "theta": theta, "rho": rho, "sigma": post["sigma"].values}


def sdm_innovations(idata, data: SdmData, weights: SpatialWeights, model: str, draws: np.ndarray | None = None) -> np.ndarray:
    """Structural innovations e = M(y - rho W y - X beta - W X theta) per draw (SEM: (I - rho W)(y - X beta)
    with each year's component along (I - rho W) 1 removed, its year effects being in y)."""
    d = _sdm_draws(idata, data, weights, model, draws)
    xb = np.einsum("ntp,sp->snt", data.x, d["beta"]) + np.einsum("ntp,sp->snt", data.wx, d["theta"])
    r = data.y[None] - xb
    if model in ("sdm", "sar"):
        r = r - d["rho"][:, None, None] * data.wy[None]
    elif model == "sem":  # year effects in y: W of the within residual, then a projected out (_sem_mean)
        n = data.y.shape[0]
        w_r = (weights.row_standardised @ r.transpose(1, 0, 2).reshape(n, -1)).reshape(n, *r.shape[::2]) \
            .transpose(1, 0, 2)
        r = project_out_years(r - d["rho"][:, None, None] * w_r, year_direction(d["rho"], weights))
    return r


def fit_sdm(frame: pd.DataFrame, controls: list[str] | tuple[str, ...], weights: SpatialWeights,
            settings: SamplerSettings, oracle: AnalysisResult | None, model: SdmModel = "sdm",
            spec: ModelSpec | str | None = None) -> BayesResult:
    """Bayesian SDM (``bayes_sdm``) or SAR / SEM / SLX (``bayes_sar``, ``bayes_sem``, ``bayes_slx``).

    Two-way effects by the within transformation (see module notes). Effects for every posterior draw:
    exact through the eigen-decomposition of W up to ``DENSE_LIMIT`` regions, the power-series / trace
    approximation beyond. ``oracle``: the spec's (``sdm_ml``, ``sar_ml``, ``sem_ml`` or ``slx_ols``; rows
    agglomeration, controls, W_<term> where the model has them, rho or the SEM's lambda).
    """
    spec = resolve_spec(spec, f"bayes_{model}")
    if spec.options.get("model", model) != model:  # the spec names its member of the family
        raise ValueError(f"{spec.id}: options.model is {spec.options['model']!r}, but this is the {model!r} analysis")
    terms = model_terms(spec, controls)
    data = sdm_data(frame, terms, weights, spec.outcome)
    m = build_sdm_model(data, weights, spec, model)
    run = spec.sampler_settings(settings)
    idata = sample(m, run, cache_key=f"{spec.id}:{spec.spec_hash}:{model}:{weights.n}:{len(frame)}:{len(terms)}")
    idata.attrs["spatial_kind"] = model
    idata.attrs["terms"] = json.dumps(terms)
    idata.attrs["outcome"] = spec.outcome
    reported = ["beta", "sigma"] + (["theta"] if model in ("sdm", "slx") else []) + (["rho"] if model != "slx" else [])
    summary = posterior_summary(idata, reported)
    method, city_tables = add_effects(idata, data, weights, model, terms)
    eff_names = ["direct_effect", "indirect_effect", "total_effect"] + (["theta_share"] if model in ("sdm", "slx") else [])
    summary = pd.concat([summary, posterior_summary(idata, eff_names)])
    meant = model == "sdm"
    note = ("Weak priors and the ML SDM's likelihood (likelihood_form lee_yu_city has the rho-profile of "
            "the oracle's Lee-Yu / direct estimates): posterior means should sit within Monte Carlo and "
            "posterior-skew error of the ML estimates; sigma follows the (n-1)(T-1) degrees of freedom."
            if meant else
            f"The oracle is the same {model.upper()} by maximum likelihood (least squares for the SLX); "
            "its rho-profile and priors differ a little, so it is shown beside it without being required to match.")
    how = "eigen-decomposition of W" if method == "exact" else "power series with Hutchinson traces"
    return assemble(spec, idata, reported, summary=summary,
                    diagnosed=reported + ["direct_effect", "indirect_effect", "total_effect"],
                    oracle=oracle, terms=oracle_terms(oracle, terms, model), meant_to_match=meant,
                    agreement_note=note, notes=(f"Effects: {method} ({how}).", IID_ONLY_NOTES["sdm"]),
                    extra=sdm_extra(spec, weights, model, method, summary), tables=city_tables,
                    spatial=SpatialFit(model, tuple(terms), spec.outcome), model=m,
                    no_fitted_reason="the spatial Durbin family is fitted to two-way within-transformed data "
                                     "(city and year effects projected out), so it has no fitted values in "
                                     "the outcome's own units")


def add_effects(idata, data: SdmData, weights: SpatialWeights, model: str, terms: list[str]
                ) -> tuple[str, dict[str, pd.DataFrame]]:
    """Direct, indirect and total effects (and the theta share) of every regressor for every posterior
    draw, added to the posterior as (chain, draw, coef) variables; per-region tables of the first term's
    (or the treatment's) direct and indirect effects. Returns the method used and the tables."""
    d = _sdm_draws(idata, data, weights, model)
    chains, ndraw = idata.posterior.sizes["chain"], idata.posterior.sizes["draw"]
    rho_eff = d["rho"] if model in ("sdm", "sar") else np.zeros_like(d["rho"])  # SEM: no global spillover
    eig = weights.spectrum if weights.n <= DENSE_LIMIT else None
    eff = {k: np.zeros((chains * ndraw, len(terms))) for k in ("direct", "indirect", "total", "theta_share")}
    city_tables: dict[str, pd.DataFrame] = {}
    method = "exact"
    for j, term in enumerate(terms):
        e = spatial_effects(rho_eff, d["beta"][:, j], d["theta"][:, j], weights, eig=eig)
        method = str(e["method"])
        for k in eff:
            eff[k][:, j] = e[k]
        if term == terms[0] or term == names.AGGLOMERATION:
            for kind in ("direct", "indirect"):
                vals = e[f"{kind}_city"]
                lo, hi = hdi_bounds(vals)
                tab = pd.DataFrame({"adcode": list(weights.ids), "mean": vals.mean(axis=0), "ci_low": lo,
                                    "ci_high": hi}).set_index("adcode")
                tab["ci_width"] = tab["ci_high"] - tab["ci_low"]
                city_tables[f"{kind}_effect_{term}"] = tab
    for k, v in eff.items():
        idata.posterior[f"{k}_effect" if k != "theta_share" else "theta_share"] = (
            ("chain", "draw", names.COEF), v.reshape(chains, ndraw, len(terms)))
    idata.posterior = idata.posterior.assign_coords({names.COEF: terms})
    return method, city_tables


def sdm_extra(spec: ModelSpec, weights: SpatialWeights, model: str, method: str, summary: pd.DataFrame
              ) -> dict[str, object]:
    """What summary.json says about an SDM-family fit: the effects method, the likelihood form, rho's
    admissible interval and where the paper's rho lies in it."""
    rho_lo, rho_hi = weights.rho_bounds
    extra: dict[str, object] = {
        "model": model, "effects_method": method, "dense_limit": DENSE_LIMIT,
        "likelihood_form": spec.options.get("likelihood_form", "lee_yu_city"),
        "two_way_effects": ("within transformation (two-way projection of y, Wy, X, WX), i.e. city and year "
                            "effects integrated out under flat priors; see likelihood_form" if model != "sem" else
                            "city effects by the time-demeaning, year effects (in y) by projecting (I - rho W) 1 "
                            "out of each year's innovations; both integrated out under flat priors"),
        "rho_bounds": [rho_lo, rho_hi], "interval_prob": CI_PROB}
    if model != "slx":
        rho_row = summary.loc["rho"]
        inside = rho_lo < PAPER_RHO < rho_hi
        extra["paper_rho"] = PAPER_RHO
        extra["paper_rho_admissible"] = bool(inside)
        extra["paper_rho_note"] = (
            f"The paper's rho = {PAPER_RHO} lies {'inside' if inside else 'outside'} the admissible interval "
            f"({rho_lo:.4f}, 1) of the row-standardised W; the posterior of rho has mean {rho_row['mean']:.4f} "
            f"and 94% HDI [{rho_row['ci_low']:.4f}, {rho_row['ci_high']:.4f}].")
        extra["rho_posterior"] = {c: float(rho_row[c]) for c in ("mean", "sd", "ci_low", "ci_high")}
    return extra


def oracle_terms(oracle: AnalysisResult | None, terms: list[str], model: str) -> dict[str, str] | None:
    """ML oracle row -> posterior label: beta for each regressor, theta for its W-lag (SDM, SLX), rho."""
    if oracle is None:
        return None
    shared = {}
    for t_ in terms:
        if t_ in oracle.coefs.index:
            shared[t_] = f"beta[{t_}]"
        if model in ("sdm", "slx") and f"W_{t_}" in oracle.coefs.index:
            shared[f"W_{t_}"] = f"theta[{t_}]"
    if model != "slx" and "rho" in oracle.coefs.index:
        shared["rho"] = "rho"
    if model == "sem" and "lambda" in oracle.coefs.index:  # the ML SEM calls its error parameter lambda
        shared["lambda"] = "rho"
    return shared
