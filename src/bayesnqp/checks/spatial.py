"""Spatial checks: residual Moran's I as a posterior predictive check, and spatial model comparison.

``ppc_moran`` (id ``ppc_moran``): for each model and year, the posterior distribution of Moran's I of the
residuals (over ``n_draws`` posterior draws) against Moran's I of residuals replicated from the model's own
noise (iid N(0, sigma^2), passed through the same two-way projection where the model works on
within-transformed data). ppp = P(I_rep >= I_obs); a ppp near 0 means spatial autocorrelation the model
left in its residuals.

``spatial_compare`` (id ``bayes_spatial_compare``): PSIS-LOO of the predictive density of each
observation given all the others, log p(y_it | y_-it):
* models whose likelihood factorises given latent effects (non-spatial two-way, CAR): the usual pointwise
  log-likelihood given the latent effects; PSIS integrates the latents out.
* SAR / SDM / SEM: the observations are jointly dependent through (I - rho W)^-1, so the Normal term of
  each observation's structural residual is not a density of y_it (it leaves out the Jacobian, and
  spreading log|I - rho W| evenly over observations is not a conditional density either). The exact
  Gaussian conditional y_it | y_-i,t (precision Q = (I - rho W)'(I - rho W) / sigma^2 per year;
  Buerkner, Gabry & Vehtari 2021, non-factorised LOO) is used instead, with the city and year effects
  integrated out under flat priors (``conditional_loglik``), as PSIS integrates out the sampled effects of
  the other models. Plugging in the effects at their profiled values would favour this family by about
  one nat per effect (n + T - 1 in all). The SEM's year effects sit in y (as in the ML oracle), so its
  year part projects out (I - rho W) 1 instead of 1 (``data_level_years``).
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr

from .. import names
from ..bayes.result import BayesResult
from ..bayes.car import car_fitted
from ..bayes.sdm import SDM_KINDS, sdm_data, sdm_innovations
from ..bayes.spatial import conditional_loglik, moran_i, panel_arrays
from ..conventions import CI_PROB, hdi_bounds
from ..data.weights import SpatialWeights
from ..panelops import within

FittedFn = Callable[[az.InferenceData, np.ndarray], np.ndarray]


def _draw_index(idata: az.InferenceData, n_draws: int | None, seed: int) -> np.ndarray:
    total = idata.posterior.sizes["chain"] * idata.posterior.sizes["draw"]
    if n_draws is None or n_draws >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).choice(total, size=n_draws, replace=False))


def residual_draws(result: BayesResult, weights: SpatialWeights, frame: pd.DataFrame,
                   n_draws: int | None = 200, seed: int = 0, fitted: FittedFn | None = None
                   ) -> tuple[np.ndarray, np.ndarray, bool]:
    """Residual draws (draws, n, T) in ``weights.ids`` order, sigma per draw, and whether they are projected.

    CAR: y - fitted mean given the latent city and year effects. SDM family: the structural innovations on
    within-transformed data (projected). Otherwise the posterior needs ``mu`` (dims city, year) or
    ``fitted(idata, draw_index) -> (draws, n, T)`` must be given.
    """
    idata = result.idata
    info = result.spatial
    kind = info.kind if info is not None else None
    outcome = info.outcome if info is not None else names.NQP  # inside the panel the outcome is nqp
    draws = _draw_index(idata, n_draws, seed)
    post = idata.posterior.stack(sample=("chain", "draw")).isel(sample=draws)
    if info is not None and info.kind in SDM_KINDS:
        data = sdm_data(frame, list(info.terms), weights, outcome)
        return sdm_innovations(idata, data, weights, info.kind, draws), post["sigma"].values, True
    if info is not None and kind == "car":
        y, fit = car_fitted(idata, frame, weights, info, draws)
        return y[None] - fit, post["sigma"].values, False
    y, _, _ = panel_arrays(frame, [outcome], weights, "ppc")
    if fitted is not None:
        fit = fitted(idata, draws)
    elif "mu" in post:
        fit = post["mu"].sel({names.CITY: list(weights.ids)}).transpose("sample", names.CITY, names.YEAR).values
    else:
        raise ValueError(f"{result.id}: posterior has no 'mu' (city, year); pass fitted=")
    return y[None] - fit, post["sigma"].values, False


def two_way_fitted(frame: pd.DataFrame, weights: SpatialWeights, terms: list[str]) -> FittedFn:
    """For the residual-Moran PPC of a non-spatial two-way model: per posterior draw of beta, the two-way
    within residuals y~ - X~ beta (city and year effects projected out, as the SDM family's residuals are),
    returned as fitted values y - residual in (draws, region, year) order of ``weights.ids``."""
    def cube(column: str) -> np.ndarray:
        wide = frame[column].unstack(names.YEAR).loc[list(weights.ids)]
        return wide.to_numpy(dtype=float)

    y = cube(names.NQP)
    xw = np.stack([within(cube(t)) for t in terms], axis=-1)
    yw = within(y)

    def fitted(idata, draws):
        beta = idata.posterior["beta"].sel(coef=terms).stack(sample=("chain", "draw")).isel(sample=draws)
        resid = yw[None] - np.einsum("ntk,kd->dnt", xw, beta.transpose("coef", "sample").to_numpy())
        return y[None] - resid

    return fitted


def ppc_moran(results: dict[str, BayesResult], weights: SpatialWeights, frame: pd.DataFrame,
              n_draws: int = 200, seed: int = 0, fitted: dict[str, FittedFn] | None = None) -> dict[str, Any]:
    """Residual Moran's I per year as a PPC for every model in ``results`` (label -> result).

    Returns ``{"id": "ppc_moran", "table": DataFrame, "figure": Figure, "summary": dict}``; the table has
    one row per (model, year): posterior mean and CI_PROB HDI of I (ci_low, ci_high: the report's one
    interval convention), mean replicated I and ppp.
    """
    from matplotlib.figure import Figure

    rng = np.random.default_rng(seed)
    rows = []
    years = sorted(frame.index.get_level_values(names.YEAR).unique())
    for label, res in results.items():
        resid, sigma, projected = residual_draws(res, weights, frame, n_draws, seed,
                                                 (fitted or {}).get(label))
        i_obs = moran_i(resid, weights)  # (draws, T)
        rep = rng.normal(size=resid.shape) * sigma[:, None, None]
        if projected:
            rep = within(rep.transpose(1, 2, 0)).transpose(2, 0, 1)
        i_rep = moran_i(rep, weights)
        ci_low, ci_high = hdi_bounds(i_obs)  # per year, over the draws
        for k, year in enumerate(years):
            rows.append({"model": label, "id": res.id, "year": int(year), "moran_i": float(i_obs[:, k].mean()),
                         "ci_low": float(ci_low[k]), "ci_high": float(ci_high[k]),
                         "moran_i_rep": float(i_rep[:, k].mean()),
                         "ppp": float(np.mean(i_rep[:, k] >= i_obs[:, k]))})
    table = pd.DataFrame(rows).set_index(["model", names.YEAR])
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    labels = list(results)
    for j, label in enumerate(labels):
        sub = table.loc[label]
        off = (j - (len(labels) - 1) / 2) * 0.15
        x = np.asarray(sub.index, dtype=float) + off
        ax.errorbar(x, sub["moran_i"], yerr=[sub["moran_i"] - sub["ci_low"], sub["ci_high"] - sub["moran_i"]],
                    fmt="o", capsize=2, label=label)
    ax.axhline(-1 / (weights.n - 1), color="grey", lw=0.8, ls="--", label="E[I] under no autocorrelation")
    ax.set_xlabel("year")
    ax.set_ylabel("residual Moran's I")
    ax.set_title(f"Residual Moran's I by year (posterior mean, {int(CI_PROB * 100)}% HDI)")
    ax.legend(fontsize=8)
    summary = {label: {"mean_moran_i": float(table.loc[label]["moran_i"].mean()),
                       "years_ppp_below_0.05": int((table.loc[label]["ppp"] < 0.05).sum()),
                       "by_year": {str(y): {"moran_i": r["moran_i"], "ci": [r["ci_low"], r["ci_high"]],
                                            "ppp": r["ppp"]} for y, r in table.loc[label].iterrows()}}
               for label in labels}
    return {"id": "ppc_moran", "table": table, "figure": fig, "summary": summary,
            "method": "Moran's I (row-standardised W) of residual draws vs residuals replicated from the "
                      "model's noise; CAR and non-spatial: y - E[y | latent effects]; SDM family: structural "
                      "innovations on within-transformed data (replicates projected the same way)."}


def pointwise_loglik(result: BayesResult, weights: SpatialWeights, frame: pd.DataFrame,
                     n_draws: int | None = None, seed: int = 0) -> xr.DataArray:
    """log p(y_it | y_-it, draw) with dims (chain, draw, city, year), as described in the module notes."""
    idata = result.idata
    info = result.spatial
    kind = info.kind if info is not None else None
    outcome = info.outcome if info is not None else names.NQP  # inside the panel the outcome is nqp
    if info is not None and info.kind in SDM_KINDS:
        draws = _draw_index(idata, n_draws, seed)
        post = idata.posterior.stack(sample=("chain", "draw")).isel(sample=draws)
        data = sdm_data(frame, list(info.terms), weights, outcome)
        e = sdm_innovations(idata, data, weights, info.kind, draws)
        rho = post["rho"].values if kind != "slx" else np.zeros(len(draws))
        ll = conditional_loglik(e, rho, post["sigma"].values, weights, data_level_years=info.kind == "sem")
        years = data.years
        return xr.DataArray(ll[None], dims=("chain", "draw", names.CITY, names.YEAR),
                            coords={"chain": [0], "draw": np.arange(len(draws)), names.CITY: list(weights.ids),
                                    names.YEAR: years})
    if "log_likelihood" in idata.groups() and outcome in idata.log_likelihood:
        ll = idata.log_likelihood[outcome]
        if info is not None and kind == "car":
            # the CAR likelihood is on the standardised scale: add the Jacobian of y -> y / y_sd
            ll = ll - np.log(info.y_sd)
        return ll
    resid, sigma, _ = residual_draws(result, weights, frame, n_draws, seed)
    ll = -0.5 * np.log(2 * np.pi * sigma[:, None, None] ** 2) - 0.5 * (resid / sigma[:, None, None]) ** 2
    years = sorted(frame.index.get_level_values(names.YEAR).unique())
    return xr.DataArray(ll[None], dims=("chain", "draw", names.CITY, names.YEAR),
                        coords={"chain": [0], "draw": np.arange(ll.shape[0]), names.CITY: list(weights.ids),
                                names.YEAR: years})


def spatial_compare(results: dict[str, BayesResult], weights: SpatialWeights, frame: pd.DataFrame,
                    n_draws: int | None = None, seed: int = 0) -> dict[str, Any]:
    """PSIS-LOO comparison of non-spatial, CAR and SAR/SDM/SEM/SLX models on the same observations.

    Returns ``{"id": "bayes_spatial_compare", "table": az.compare DataFrame, "loo": {label: {...}},
    "method": str}``; every model's elpd estimates sum_it log p(y_it | y_-it) in the data's units.
    """
    loos: dict[str, Any] = {}
    per_model: dict[str, Any] = {}
    for label, res in results.items():
        ll = pointwise_loglik(res, weights, frame, n_draws, seed)
        obs = ll.stack(obs=(names.CITY, names.YEAR)).transpose("chain", "draw", "obs")
        ds = xr.Dataset({"y": obs.drop_vars(["obs", names.CITY, names.YEAR], errors="ignore")})
        idata = az.InferenceData(log_likelihood=ds)
        with warnings.catch_warnings():
            # high Pareto k is reported in the table (share_k_above_0.7), not raised
            warnings.filterwarnings("ignore", message=".*Pareto.*", category=UserWarning)
            warnings.filterwarnings("ignore", message=".*Estimated shape parameter.*", category=UserWarning)
            # draws may be a thinned subset pooled over chains: relative efficiency taken as 1
            loo = az.loo(idata, pointwise=True, reff=1.0)
        loos[label] = loo
        k = np.asarray(loo.pareto_k)
        per_model[label] = {"id": res.id, "elpd_loo": float(loo.elpd_loo), "se": float(loo.se),
                            "p_loo": float(loo.p_loo), "share_k_above_0.7": float(np.mean(k > 0.7)),
                            "pointwise": "exact Gaussian conditional y_it | y_-it, effects integrated out"
                            if res.spatial is not None and res.spatial.kind in SDM_KINDS
                            else "likelihood given latent effects"}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Pareto.*", category=UserWarning)
        table = az.compare(loos, ic="loo") if len(loos) > 1 else None
    return {"id": "bayes_spatial_compare", "table": table, "loo": per_model,
            "method": __doc__.split("``spatial_compare``", 1)[1].strip() if __doc__ else ""}
