"""The panel family's driver (builder ``panel``): ``fit_spec`` builds and samples one spec,
``fit_panel`` summarises it against its oracle (what it rebuilds decides whether it is meant to match),
``finish`` assembles the result and ``panel_fitted`` gives its fitted values. The model itself is in
``panel_model`` (its docstring explains the scales and the effects), the data in ``panel_data``; the
names below that come from them are the family's public face."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import arviz as az
# Figures are built as matplotlib.figure.Figure objects: no pyplot state, no backend switch at import
# (a notebook keeps its own backend).
from matplotlib.figure import Figure
import numpy as np
import pandas as pd
import pymc as pm

from ..conventions import fitted_draws, hdi_bounds, hdi_contains
from .. import names
from ..names import AGGLOMERATION, CITY, COEF, YEAR
from ..results import AnalysisResult
from .panel_data import PanelData, choose_city_param, outcome_scale, panel_data
from .panel_model import (FITTED_MEAN, build_panel_model, city_effects_marginal, marginal_city_logp,
                          prior)
from .error_selection import options_by_loo, select_error_options, selection_note
from .result import BayesResult, assemble
from .sampling import SamplerSettings, sample
from .spec import ModelSpec, load_spec



def draw_city_effects(idata: az.InferenceData, model: pm.Model, pdata: PanelData, *, seed: int) -> None:
    """For the marginal form: add ``city_effect_std`` (dims city, standardised scale) to the posterior,
    one exact draw per posterior draw from u_i | rest ~ Normal(centre_i + m_i, v_i), where
    v_i = 1 / (T_i / sigma^2 + 1 / sigma_city^2) and m_i = v_i T_i rbar_i / sigma^2 with rbar_i the city's
    mean residual around the model without the city effect (all on the standardised scale)."""
    if ("city_effect_std" in idata.posterior or "city_count" not in model.named_vars
            or "slope_dev" in model.named_vars):  # structured errors: no closed-form draw written yet
        return
    post = idata.posterior
    y_centre = float(model["y_centre"].get_value())
    y_scale = float(model["y_scale"].get_value())
    ys = (np.asarray(model["y"].get_value()) - y_centre) / y_scale
    X = np.asarray(model["X"].get_value())
    city_idx = np.asarray(model["city_idx"].get_value())
    counts = np.asarray(model["city_count"].get_value())
    n_city = len(counts)
    b = post["beta_std"].transpose("chain", "draw", COEF).values
    alpha = post["alpha"].values
    centre = np.broadcast_to(alpha[..., None], alpha.shape + (n_city,)).copy()
    if "gamma" in post:
        centre = centre + np.einsum("cm,abm->abc", np.asarray(model["Zbar"].get_value()),
                                    post["gamma"].transpose("chain", "draw", "mundlak").values)
    elif "Xbar" in model.named_vars:
        centre = centre + np.einsum("ck,abk->abc", np.asarray(model["Xbar"].get_value()), b)
    # City mean residuals from city-level summaries only (O(draws x cities), never draws x rows).
    def city_mean(values: np.ndarray) -> np.ndarray:
        values = values.reshape(len(city_idx), -1)
        return np.stack([np.bincount(city_idx, values[:, c], minlength=n_city) for c in
                         range(values.shape[1])], axis=1) / counts[:, None]

    rbar = city_mean(ys)[:, 0] - centre - np.einsum("ck,abk->abc", city_mean(X), b)
    if "year_effect_std" in post:
        share = city_mean(np.eye(len(pdata.years))[np.asarray(model["year_idx"].get_value())])
        rbar = rbar - np.einsum("ct,abt->abc", share, post["year_effect_std"].transpose("chain", "draw", YEAR)
                                .values)
    if "beta_group_std" in post:
        g_idx = np.asarray(model["group_idx"].get_value())
        bg = post["beta_group_std"].values
        rbar = rbar - city_mean(np.asarray(model["x_slope"].get_value()))[:, 0] * bg[..., g_idx]
    sums = counts * rbar
    s2 = post["sigma_std"].values[..., None] ** 2
    sc2 = post["sigma_city_std"].values[..., None] ** 2
    var = 1.0 / (counts / s2 + 1.0 / sc2)
    mean = var * sums / s2
    noise = np.random.default_rng(seed).standard_normal(mean.shape)
    idata.posterior["city_effect_std"] = (("chain", "draw", CITY), centre + mean + np.sqrt(var) * noise)
    idata.posterior = idata.posterior.assign_coords({CITY: list(pdata.cities)})


def draw_group_mean(idata: az.InferenceData, spec: ModelSpec, pdata: PanelData, *, seed: int,
                    slope_term: str = AGGLOMERATION, dim: str = "group") -> None:
    """For the marginal slopes form: add ``group_mean`` (original scale) to the posterior, one exact draw
    from m | slopes, group_sd ~ Normal per posterior draw (Normal prior on m, Normal slopes around it)."""
    if "group_mean" in idata.posterior:
        return
    _, y_scale = outcome_scale(pdata.y, spec.likelihood)
    s_m = prior(spec, "group_mean")["sigma"] * y_scale / pdata.x_sd[list(pdata.terms).index(slope_term)]
    beta = idata.posterior["beta_group"]
    tau = idata.posterior["group_sd"]
    n_groups = beta.sizes[dim]
    precision = 1.0 / s_m ** 2 + n_groups / tau ** 2
    mean = (beta.sum(dim) / tau ** 2) / precision
    noise = np.random.default_rng(seed).standard_normal(mean.shape)
    idata.posterior["group_mean"] = mean + noise / np.sqrt(precision)


def cache_key(spec: ModelSpec, pdata: PanelData, likelihood: str, extra: str = "") -> str:
    """Structure key for the compiled-model cache: spec hash, likelihood and data shapes."""
    form = spec.options.get("city_param", "auto")
    if city_effects_marginal(spec, likelihood):
        form = "marginal"
    elif form == "auto" and spec.effects.get("city", "none") != "none":
        form = choose_city_param(pdata, likelihood)
    return f"{spec.spec_hash}:{likelihood}:{form}:{pdata.n}:{len(pdata.cities)}:{len(pdata.years)}:" \
           f"{len(pdata.terms)}:{pdata.balanced}:{extra}"


def reported_vars(model: pm.Model) -> list[str]:
    """The quantities every panel result reports and diagnoses."""
    names = ["beta", "sigma", "sigma_city", "beta_group", "group_mean", "group_sd", "nu", "phi",
             "city_scale_sd", "slope_sd"]
    return [n for n in names if n in model.named_vars]


def oracle_terms(oracle: AnalysisResult | None, coefs: list[str], label: str = "beta") -> dict[str, str]:
    """oracle term -> posterior label for every coefficient both share."""
    if oracle is None:
        return {}
    return {t: f"{label}[{t}]" for t in coefs if t in oracle.coefs.index}


def finish(spec: ModelSpec, model: pm.Model, idata: az.InferenceData, *, oracle: AnalysisResult | None,
           terms: dict[str, str] | None = None, var_names: list[str] | None = None,
           pdata: PanelData | None = None, **fields: Any) -> BayesResult:
    """Summary, diagnostics and agreement for a sampled panel model (``result.assemble``); ``terms``
    default to every coefficient the oracle shares with the model. With ``pdata`` the result has
    fitted values."""
    if oracle is not None and terms is None:
        terms = oracle_terms(oracle, list(model.coords[COEF]))
    if pdata is not None:
        fields["fitted_values"] = lambda: panel_fitted(model, idata, pdata, spec.likelihood)
    return assemble(spec, idata, var_names or reported_vars(model), oracle=oracle, terms=terms, model=model,
                    **fields)


def panel_fitted(model: pm.Model, idata: az.InferenceData, pdata: PanelData, likelihood: str) -> pd.DataFrame:
    """Fitted values of a panel model: per posterior draw, the row's mean X beta + year effect + city
    effect (the city effect as sampled, as drawn from its exact conditional where it was integrated out,
    or, where it is a flat-prior fixed effect (the structured errors), at the city's mean residual given
    the draw: the least-squares value, not the AR(1)- and scale-weighted one, and without the city's
    random slope); the posterior mean and HDI of those over ``conventions.FITTED_DRAWS`` draws. For the
    LogNormal likelihood the mean is on the log scale and the fitted value is its exponential (the
    median of y)."""
    post = idata.posterior.stack(sample=("chain", "draw"))
    pick = fitted_draws(post.sizes["sample"])
    free = [rv.name for rv in model.free_RVs]
    fn = model.compile_fn(outs=model[FITTED_MEAN], inputs=model.free_RVs, on_unused_input="ignore",
                          point_fn=False)
    means = np.stack([np.asarray(fn(**{v: post[v].isel(sample=i).values for v in free})) for i in pick])
    if "city_count" in model.named_vars and "city_effect_std" not in model.named_vars:  # outside the mean
        if "city_effect_std" in post:
            u = post["city_effect_std"].isel(sample=pick).transpose("sample", CITY).values
            means = means + float(model["y_scale"].get_value()) * u[:, pdata.city_idx]
        else:
            counts = np.bincount(pdata.city_idx, minlength=len(pdata.cities))
            resid = pdata.y[None] - means
            city_mean = np.stack([np.bincount(pdata.city_idx, r, minlength=len(counts)) for r in resid]) / counts
            means = means + city_mean[:, pdata.city_idx]
    if likelihood == "lognormal":
        means = np.exp(means)
    lo, hi = hdi_bounds(means)
    index = pd.MultiIndex.from_arrays([np.asarray(pdata.cities)[pdata.city_idx],
                                       np.asarray(pdata.years)[pdata.year_idx]], names=[CITY, YEAR])
    return pd.DataFrame({"fitted": means.mean(axis=0), "ci_low": lo, "ci_high": hi, "observed": pdata.y},
                        index=index)


def fit_spec(frame: pd.DataFrame, spec: ModelSpec, controls: tuple[str, ...] | list[str],
             settings: SamplerSettings, *, likelihood: str | None = None, log_likelihood: bool = False,
             slope_groups: pd.Series | None = None, group_dim: str = names.GROUP
             ) -> tuple[pm.Model, az.InferenceData, PanelData]:
    """Build and sample one panel spec."""
    lik = likelihood or spec.likelihood
    pdata = panel_data(frame, spec.outcome, spec.expand_terms(controls))
    model = build_panel_model(pdata, spec, likelihood=lik, slope_groups=slope_groups, group_dim=group_dim)
    # The free variables name the parameterisation the builder chose (centred or not, marginal or not).
    extra_key = ",".join(sorted(v.name for v in model.free_RVs))
    if slope_groups is not None:
        extra_key += f"|{group_dim}:{len(model.coords[group_dim])}"
    idata = sample(model, spec.sampler_settings(settings), cache_key=cache_key(spec, pdata, lik, extra_key),
                   log_likelihood=log_likelihood)
    draw_city_effects(idata, model, pdata, seed=spec.sampler_settings(settings).seed)
    return model, idata, pdata


def fit_selecting_errors(frame: pd.DataFrame, spec: ModelSpec, controls: tuple[str, ...] | list[str],
                         settings: SamplerSettings, **fit_options: Any
                         ) -> tuple[pm.Model, az.InferenceData, PanelData, dict[str, Any], tuple[str, ...]]:
    """``fit_spec``, then each error option of ``options.errors_by_loo`` dropped unless leave-one-city-out
    LOO prefers the fit with it (``error_selection``). Returns the fit kept, the record of the options
    tried (under ``error_options_loo``, empty when none) and the report's note on them. No pointwise
    log-likelihood group is added: the LOO of the options computes what it needs (``error_selection``)."""
    by_loo = options_by_loo(spec)  # checked before anything is sampled
    model, idata, pdata = fit_spec(frame, spec, controls, settings, **fit_options)
    if not by_loo:
        return model, idata, pdata, {}, ()
    (model, idata, pdata), record = select_error_options(
        spec, (model, idata, pdata),
        lambda reduced: fit_spec(frame, reduced, controls, settings, **fit_options))
    return model, idata, pdata, {"error_options_loo": record}, (selection_note(record),)


MATCH_NOTES = {
    "pooled": "Weak priors and a Normal likelihood: the posterior mean reproduces pooled OLS.",
    "year": ("Year effects of fixed prior scale (the Bayesian year dummies) and no city effects: the posterior "
             "mean reproduces least squares with year fixed effects."),
    "city": ("City effects in Mundlak (correlated random effects) form: given the variance components the "
             "posterior mean of beta is the within estimator, so it reproduces city fixed effects."),
    "twoway": ("City effects in Mundlak form and year effects of fixed scale (the Bayesian year dummies): "
               "the posterior mean of beta reproduces the two-way within estimator."),
    "honest": ("Same mean structure as the two-way within estimator, with AR(1) errors within cities and the "
               "city-specific error scales and random city slopes its spec lists (those tried by LOO only where "
               "they earned their place; a note with this result says which). It weights cities and years by "
               "their modelled error covariance (like feasible GLS), so when the model holds its mean sits "
               "within a fraction of a standard error of the least-squares estimate and its interval is narrower"
               " only by the efficiency it gains. A larger |z| means the weighting changes the answer: the city "
               "slopes or error scales vary with how much the treatment moves within each city, or the treatment"
               " is measured with error (quasi-differencing attenuates more). The iid rebuild "
               "(bayes_table3_col4_iid) reproduces the least-squares point estimate (|z| <= 0.1), and the "
               "bootstrap sd beside it is the design-based spread of that estimate."),
    "random": ("Plain random effects (no Mundlak terms) assume the city effects are independent of the "
               "regressors. Where they correlate (richer cities have both more digital agglomeration and more "
               "NQP), the random-effects posterior mixes within and between variation and is pulled toward "
               "the between-city slope, so it is biased against the two-way within estimate; a large |z| here "
               "is the Hausman contrast, not a sampling failure."),
    "other": ("Not meant to reproduce the least-squares estimate: the likelihood or the effects differ from "
              "the ones least squares assumes, so the numbers differ by design; z shows how far."),
}


def panel_kind(spec: ModelSpec) -> str:
    """Which least-squares estimator a panel spec rebuilds, if any: "pooled", "city", "twoway" (its
    posterior mean reproduces that estimator under weak priors), "honest" (structured errors), "random"
    (plain random effects) or "other" (another likelihood, or effects least squares has no counterpart to)."""
    city, year = spec.effects.get("city", "none"), spec.effects.get("year", "none")
    if spec.options.get("errors"):
        return "honest"
    if city == "random":
        return "random"
    if spec.likelihood != "normal" or year not in ("none", "zerosum", "fixed"):
        return "other"
    if city == "mundlak":
        return "twoway" if year != "none" else "city"
    if city == "none":
        return "pooled" if year == "none" else "year"
    return "other"


def fit_panel(frame: pd.DataFrame, controls: tuple[str, ...] | list[str], settings: SamplerSettings,
              spec: ModelSpec, oracle: AnalysisResult | None) -> BayesResult:
    """The panel family's driver for one spec: build, sample (``fit_spec``), then summarise against the
    oracle; ``meant_to_match`` and the note follow from what the spec rebuilds (``panel_kind``).
    ``options.prior_predictive`` adds the prior predictive check."""
    kind = panel_kind(spec)
    model, idata, pdata, extra, notes = fit_selecting_errors(frame, spec, controls, settings)
    figures: dict[str, Any] = {}
    if spec.options.get("prior_predictive"):
        check = prior_predictive_check(model, pdata, seed=spec.sampler_settings(settings).seed,
                                       title=f"Prior predictive check, {spec.title}", outcome=spec.outcome)
        extra["prior_predictive"] = check.numbers
        figures["prior_predictive"] = check.figure
    note = MATCH_NOTES[kind]
    if oracle is not None and oracle.id.endswith("_ls"):  # a new analysis from the user's folder
        note = "Your model, compared with least squares on the same terms and effects. " + note
    return finish(spec, model, idata, oracle=oracle, meant_to_match=kind in ("pooled", "year", "city", "twoway"),
                  agreement_note=note, extra=extra, figures=figures, notes=notes, pdata=pdata)


def fit_random_effects(frame: pd.DataFrame, controls: tuple[str, ...] | list[str], settings: SamplerSettings,
                       oracle: AnalysisResult | None) -> BayesResult:
    """Column (4) with plain random city effects (no Mundlak terms), compared with two-way FE."""
    return fit_panel(frame, controls, settings, load_spec("bayes_re"), oracle)


@dataclass(frozen=True)
class PriorPredictive:
    numbers: dict[str, float]
    figure: Any


def prior_predictive_check(model: pm.Model, pdata: PanelData, *, seed: int, draws: int = 500,
                           title: str = "Prior predictive check", outcome: str = names.NQP) -> PriorPredictive:
    """Prior predictive range of y against the observed range (weak priors must cover the data
    without putting most mass orders of magnitude away)."""
    with model:
        prior_idata = pm.sample_prior_predictive(draws=draws, random_seed=seed, var_names=["nqp"])
    sims = np.asarray(prior_idata.prior_predictive["nqp"]).reshape(-1, pdata.n)
    y = pdata.y
    q = np.quantile(sims, [0.01, 0.05, 0.5, 0.95, 0.99])
    draw_min, draw_max = sims.min(axis=1), sims.max(axis=1)
    covered = float(np.mean((draw_min <= y.min()) & (draw_max >= y.max())))
    numbers = {"observed_min": float(y.min()), "observed_max": float(y.max()),
               "observed_sd": float(y.std()), "prior_q01": float(q[0]), "prior_q05": float(q[1]),
               "prior_median": float(q[2]), "prior_q95": float(q[3]), "prior_q99": float(q[4]),
               "prior_sd_median": float(np.median(sims.std(axis=1))),
               "share_draws_covering_observed_range": covered}
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    lo, hi = np.quantile(sims, [0.005, 0.995])
    ax.hist(sims.ravel(), bins=120, range=(lo, hi), density=True, color="0.7", label="prior predictive")
    ax.hist(y, bins=60, density=True, histtype="step", color="C3", label="observed")
    ax.axvspan(y.min(), y.max(), color="C3", alpha=0.08, label="observed range")
    ax.set_xlabel(outcome)
    ax.set_ylabel("density")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    return PriorPredictive(numbers=numbers, figure=fig)


__all__ = ["PanelData", "panel_data", "build_panel_model", "fit_spec", "fit_selecting_errors", "fit_panel",
           "panel_kind", "city_effects_marginal", "marginal_city_logp", "draw_city_effects", "fit_random_effects",
           "prior_predictive_check", "finish", "panel_fitted", "prior", "hdi_contains"]

