"""Bayesian instrumental variables: first and second stage fitted jointly with bivariate Normal errors
and an LKJ prior on their correlation.

  agglomeration_it = pi * z_it + delta1' controls_it + city_i + year_t + e1_it
  nqp_it           = beta * agglomeration_it + delta2' controls_it + city_i' + year_t' + e2_it
  (e1, e2) ~ MVN(0, diag(s) R diag(s)),  R ~ LKJ(eta),  z_it = distance_i * (year_t - first year)

Two-way effects: every variable is two-way within-transformed (city and year means removed; alternating
projections, exact in one sweep for a balanced panel) before the model sees it, instead of CRE terms in
both equations: the within transform removes both sets of effects from both equations exactly and leaves a
model with a handful of parameters. The transformed errors live in a subspace of dimension
r = N - (cities + years - 1); the sum of N bivariate Normal terms would count N instead of r degrees of
freedom and understate the error scales, so a Potential adds (N - r)/2 * log|Sigma| back, which makes the
likelihood the exact one of the projected data. (For that reason the pointwise log-likelihood is not
offered for LOO.) Variables are standardised after the transform; priors are weakly informative on that
scale; beta and pi are reported on the original scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pymc as pm
import pytensor.tensor as pt

from .. import names
from ..names import AGGLOMERATION, CITY, COEF, YEAR
from ..panelops import two_way_within_uncentred as two_way_demean
from ..results import AnalysisResult
from .errors import IID_ONLY_NOTES
from .result import BayesResult, assemble
from .sampling import SamplerSettings, sample
from .spec import ModelSpec, load_spec, prior_param

OBS = names.OBS
EQUATION = names.EQUATION
FIRST = names.FIRST_COEF
INSTRUMENT = "dist_trend"


@dataclass(frozen=True)
class IvData:
    """The IV model's data: ``std`` the within-transformed, standardised columns (outcome, endogenous
    regressor, controls, instrument, in ``names`` order) and ``sd`` their within sds; ``n`` rows, ``rank``
    the rank of the two-way projection (n - cities - years + 1)."""

    std: np.ndarray
    sd: np.ndarray
    names: list[str]
    n: int
    rank: int
    controls: list[str]


def iv_data(frame: pd.DataFrame, controls: tuple[str, ...] | list[str], distance_col: str,
            outcome: str = "nqp", endogenous: str = AGGLOMERATION) -> IvData:
    """Instrument, within-transformed variables, their scales and the projection's rank."""
    cols = [outcome, endogenous, *controls, distance_col]
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ValueError(f"panel lacks columns {missing}")
    data = frame[cols].sort_index()
    if data.isna().any().any():
        raise ValueError(f"missing values in {data.columns[data.isna().any()].tolist()}")
    city = data.index.get_level_values(CITY).astype(str)
    year = data.index.get_level_values(YEAR).astype(int)
    cities, years = sorted(set(city)), sorted(set(year))
    ci = pd.Index(cities).get_indexer(city)
    ti = pd.Index(years).get_indexer(year)
    z = data[distance_col].to_numpy(float) * (year.to_numpy() - years[0])
    raw = np.column_stack([data[outcome], data[endogenous], data[list(controls)], z]).astype(float)
    within = two_way_demean(raw, ci, ti)
    sd = within.std(axis=0)
    names = [outcome, endogenous, *controls, INSTRUMENT]
    if (sd <= 1e-12 * np.maximum(np.abs(raw).max(axis=0), 1)).any():
        raise ValueError(f"no within variation left in {[n for n, s in zip(names, sd) if s <= 0]}")
    return IvData(std=within / sd, sd=sd, names=names, n=len(data),
                  rank=len(data) - (len(cities) + len(years) - 1), controls=list(controls))


def build_iv_model(d: IvData, spec: ModelSpec | None = None) -> pm.Model:
    """The joint first/second-stage model on within-transformed, standardised data."""
    coef_sigma = prior_param(spec, "beta", 1.0)
    sd_sigma = prior_param(spec, "sigma", 1.0)
    eta = prior_param(spec, "corr", 2.0, key="eta")
    controls = d.controls
    S = d.std
    y, x, W, z = S[:, 0], S[:, 1], S[:, 2:2 + len(controls)], S[:, -1]
    sd = d.sd
    coords = {OBS: np.arange(d.n), COEF: [AGGLOMERATION, *controls], FIRST: [INSTRUMENT, *controls],
              EQUATION: ["first_stage", "second_stage"], names.EQUATION_BIS: ["first_stage", "second_stage"]}
    with pm.Model(coords=coords) as model:
        Wd = pm.Data("W", W, dims=(OBS, names.CONTROL)) if controls else None
        zd = pm.Data("z", z, dims=OBS)
        obs = pm.Data("y_obs", np.column_stack([x, y]), dims=(OBS, EQUATION))
        scales = pm.Data("scales", sd)
        g = pm.Normal("first_std", 0.0, coef_sigma, dims=FIRST)
        b = pm.Normal("beta_std", 0.0, coef_sigma, dims=COEF)
        mu1 = g[0] * zd
        mu2 = b[0] * obs[:, 0]
        if controls:
            mu1 = mu1 + Wd @ g[1:]
            mu2 = mu2 + Wd @ b[1:]
        chol, corr, stds = pm.LKJCholeskyCov("chol", n=2, eta=eta,
                                             sd_dist=pm.HalfNormal.dist(sd_sigma, shape=2),
                                             compute_corr=True)
        pm.MvNormal("stages", mu=pt.stack([mu1, mu2], axis=1), chol=chol, observed=obs, dims=(OBS, EQUATION))
        # Exact likelihood of the projected data: r instead of N degrees of freedom (module docstring).
        log_det = 2.0 * pt.sum(pt.log(pt.diag(chol)))
        pm.Potential("within_df", 0.5 * (d.n - d.rank) * log_det)
        # Original scale: beta = b * sd(y) / sd(x); controls in stage 2 scale by sd(y) / sd(w); the
        # first stage scales by sd(x) / sd(regressor).
        k = len(controls)
        pm.Deterministic("beta", b * scales[0] / pt.concatenate([scales[1:2], scales[2:2 + k]]), dims=COEF)
        pm.Deterministic("first_stage", g * scales[1] / pt.concatenate([scales[-1:], scales[2:2 + k]]),
                         dims=FIRST)
        pm.Deterministic("error_corr", corr[0, 1])
        pm.Deterministic("error_sd", stds * pt.stack([scales[1], scales[0]]), dims=EQUATION)
    return model


IV_NOTE = ("The joint Normal model is the likelihood counterpart of LIML, not of 2SLS: with a strong "
           "instrument the two agree closely, with a weak one the posterior is wider and centred nearer "
           "LIML, so it is shown beside the 2SLS oracle without being required to match it.")


# The degrees-of-freedom correction is part of the likelihood (the prior-sensitivity check scales it).
LIKELIHOOD_POTENTIALS = ("within_df",)


def fit_iv(frame: pd.DataFrame, controls: tuple[str, ...] | list[str], distance_col: str,
           settings: SamplerSettings, oracle: AnalysisResult | None, spec: ModelSpec | None = None
           ) -> BayesResult:
    """Bayesian IV beside the 2SLS oracle (``iv_2sls_trend``); ``spec`` default ``models/bayes_iv.toml``."""
    spec = spec or load_spec("bayes_iv")
    controls = [c for c in spec.expand_terms(controls) if c != AGGLOMERATION]
    d = iv_data(frame, controls, distance_col, outcome=spec.outcome)
    model = build_iv_model(d, spec)
    key = f"{spec.spec_hash}:iv:{d.n}:{d.rank}:{len(controls)}"
    idata = sample(model, spec.sampler_settings(settings), cache_key=key)
    var_names = ["beta", "first_stage", "error_corr", "error_sd"]
    pi = idata.posterior["first_stage"].sel({FIRST: INSTRUMENT})
    rho = idata.posterior["error_corr"]
    extra = {"instrument": f"{distance_col} x (year - first year)", "two_way_effects": "within-transformed",
             "first_stage_pi_mean": float(pi.mean()), "first_stage_pi_sd": float(pi.std()),
             "first_stage_pi_z": float(pi.mean() / pi.std()), "p_pi_positive": float((pi > 0).mean()),
             "error_corr_mean": float(rho.mean()), "p_error_corr_positive": float((rho > 0).mean()),
             "df_within": int(d.rank)}
    terms = None if oracle is None else {t: f"beta[{t}]" for t in [AGGLOMERATION, *controls]
                                         if t in oracle.coefs.index}
    return assemble(spec, idata, var_names, oracle=oracle, terms=terms, agreement_note=IV_NOTE, extra=extra,
                    notes=(f"error correlation {extra['error_corr_mean']:.2f}: "
                           "endogeneity of agglomeration in the data's terms", IID_ONLY_NOTES["iv"]),
                    model=model, likelihood_potentials=LIKELIHOOD_POTENTIALS,
                    no_fitted_reason="the joint IV model is fitted to two-way within-transformed data, so it "
                                     "has no fitted values in the outcome's own units")
