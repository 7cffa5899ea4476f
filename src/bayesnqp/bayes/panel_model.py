"""Table 3 rebuilt as Bayesian panel models: pooled, correlated random effects (Mundlak), random effects,
and the two-way model under alternative likelihoods.

Scales. Every regressor is standardised internally (overall mean and sd over the city-years) and so is
the outcome (or log outcome for the LogNormal likelihood). Priors in ``models/*.toml`` are weakly
informative on that standardised scale: Normal(0, 1) slopes allow an effect of one outcome sd per
regressor sd, far wider than any plausible value and far wider than the data's information, so posterior
means sit on the least-squares estimates. The reported coefficients ``beta`` (dims ``coef``) are on the
original scale (d nqp / d x; for LogNormal, d log nqp / d x). The observed variable is always ``nqp`` in
its own units, so the pointwise log-likelihoods of all likelihoods are densities of the same y (LOO can
compare them).

City effects in the Mundlak form (``mundlak``): regressors enter as within-city deviations
``x_it - xbar_i`` and the city effect is centred on the city means, ``u_i ~ Normal(alpha + gamma' xbar_i,
sigma_city)``. This is Mundlak's (1978) correlated random effects written in an orthogonal basis
(gamma here equals Mundlak's gamma plus beta); given the variance components, the GLS estimate of beta is
the within (city fixed-effects) estimator, and with year effects of fixed scale it is the two-way within
estimator. In an unbalanced panel the city means of the year dummies join xbar_i (Wooldridge 2021) so the
equivalence still holds. City effects are centred when each city's data pin its effect down
(T * s_u^2 / s_e^2 > 1 from a least-squares pre-fit; then centred effects beside city-mean predictors sample
fast with nutpie) and non-centred otherwise; ``options.city_param`` in the spec can force either.

With year effects in a balanced panel the deviations also lose their year means (two-way deviations);
the removed part depends on the year only, sums to zero and is absorbed by the zero-sum year effects, so
the model is unchanged but the slopes stop trading off against the year effects.

Random effects (``random``, no Mundlak terms) are written in the same basis with gamma forced to equal
beta: u_i ~ Normal(alpha + beta' xbar_i, sigma_city) beside beta' (x_it - xbar_i). That is exactly the
classical random-effects model, reparameterised so it mixes as well as the Mundlak one.

Marginal city effects (``options.city_effects = "marginal"``, Normal likelihood only; column (4) uses
it): the Gaussian city effects are integrated out analytically. Each city's rows are jointly
Normal(mean, sigma^2 I + sigma_city^2 11'), whose log-density splits into a within part (T_i - 1 df) and
a between part (the city mean residual ~ Normal(0, sigma^2 / T_i + sigma_city^2)); see
``marginal_city_logp``. The same model with ~n_city fewer parameters and an O(n) gradient;
``city_effect_std`` is drawn after sampling from its exact conditional (``draw_city_effects``, called
by ``fit_spec``). Other likelihoods keep sampled effects whatever the option says. The per-row entries
of this likelihood are not pointwise log-likelihoods, so specs used for LOO keep the sampled form.

Year effects (``zerosum``) are ZeroSumNormal with a FIXED scale (no hierarchical sd): this is the
Bayesian counterpart of year dummies (fixed effects under a weak prior), which is what reproduces the
two-way within estimator; a hierarchical sd would shrink ten year effects toward zero and move beta off
the within estimate. The zero-sum constraint keeps them identified beside the intercept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pymc as pm
import pytensor.tensor as pt

from .. import names
from ..names import AGGLOMERATION, CITY, COEF, YEAR
from .errors import (CITY_SCALE_SD, CITY_SCALE_Z, ErrorStructure, row_order, structured_city_logp,
                     structured_city_random)
from .panel_data import PanelData, choose_city_param, choose_slope_param, outcome_scale
from .student_t import StudentT
from .spec import PANEL_CITY_EFFECTS, PANEL_LIKELIHOODS, PANEL_YEAR_EFFECTS, ModelSpec


OBS = names.OBS


FITTED_MEAN = "fitted_mean"


SUPPORTED_CITY = PANEL_CITY_EFFECTS


SUPPORTED_YEAR = PANEL_YEAR_EFFECTS


SUPPORTED_LIKELIHOOD = PANEL_LIKELIHOODS


# Default prior scales on the standardised scale (overridable from the spec's [priors]).
DEFAULT_PRIORS: dict[str, dict[str, Any]] = {
    "alpha": {"dist": "normal", "sigma": 1.0},
    "beta": {"dist": "normal", "sigma": 1.0},
    "gamma": {"dist": "normal", "sigma": 1.0},
    "year": {"dist": "zerosumnormal", "sigma": 1.0},
    "sigma": {"dist": "halfnormal", "sigma": 1.0},
    "sigma_city": {"dist": "halfnormal", "sigma": 1.0},
    "nu": {"dist": "gamma", "alpha": 2.0, "beta": 0.1},
    "group_mean": {"dist": "normal", "sigma": 1.0},
    "group_sd": {"dist": "halfnormal", "sigma": 0.5},
    # error structures (bayes/errors.py), standardised scale: phi = 2 Beta(a, b) - 1 keeps the AR(1)
    # stationary; the sd of log city scales and the random-slope sd are weakly informative
    "phi": {"dist": "beta", "alpha": 2.0, "beta": 2.0},
    "city_scale_sd": {"dist": "halfnormal", "sigma": 0.5},
    "slope_sd": {"dist": "halfnormal", "sigma": 0.5},
}


# Families a spec may choose instead of the default. group_sd: with only two groups the data say almost
# nothing about the between-group sd, and a HalfNormal lets it reach 0, opening a funnel; a Gamma(2, b)
# prior keeps it off zero (Chung et al. 2013) while staying weak.
ALTERNATIVE_DISTS: dict[str, tuple[str, ...]] = {"group_sd": ("gamma",)}


def prior(spec: ModelSpec | None, name: str) -> dict[str, Any]:
    """The prior of ``name``: the spec's entry over the default (family fixed unless an alternative is
    listed in ALTERNATIVE_DISTS)."""
    base = dict(DEFAULT_PRIORS[name])
    if spec is not None and name in spec.priors:
        given = dict(spec.priors[name])
        allowed = {base["dist"], *ALTERNATIVE_DISTS.get(name, ())}
        if given.get("dist") not in allowed:
            raise ValueError(f"{spec.id}: prior '{name}' must be one of {sorted(allowed)}, "
                             f"got {given.get('dist')!r}")
        if given["dist"] != DEFAULT_PRIORS[name]["dist"]:
            base = {k: v for k, v in base.items() if k not in DEFAULT_PRIORS[name]}
        base.update(given)
    return base


@dataclass(frozen=True)
class PanelForm:
    """What a panel spec asks of the builder, checked: effects, likelihood, the city effects' form, the
    error structure and the outcome's standardisation."""

    city: str
    year: str
    likelihood: str
    city_form: str  # "auto" resolved to "centred" / "noncentred"; unused when marginal or no city effects
    marginal: bool
    errors: ErrorStructure
    y_centre: float
    y_scale: float


def panel_form(pdata: PanelData, spec: ModelSpec, likelihood: str) -> PanelForm:
    city, year = spec.effects.get("city", "none"), spec.effects.get("year", "none")
    if city not in SUPPORTED_CITY:
        raise ValueError(f"{spec.id}: the panel builder supports city effects {SUPPORTED_CITY}")
    if year not in SUPPORTED_YEAR:
        raise ValueError(f"{spec.id}: the panel builder supports year effects {SUPPORTED_YEAR}")
    if likelihood not in SUPPORTED_LIKELIHOOD:
        raise ValueError(f"{spec.id}: the panel builder supports likelihoods {SUPPORTED_LIKELIHOOD}")
    y_centre, y_scale = outcome_scale(pdata.y, likelihood)
    city_form = spec.options.get("city_param", "auto")
    if city_form not in ("auto", "centred", "noncentred"):
        raise ValueError(f"{spec.id}: options.city_param must be auto, centred or noncentred")
    marginal = city_effects_marginal(spec, likelihood)
    errors = ErrorStructure.from_option(spec.options.get("errors"), spec.id)
    if not errors.iid and not marginal:
        raise ValueError(f"{spec.id}: options.errors = {errors.label()!r} needs city effects integrated out "
                         "(options.city_effects = 'marginal') and the Normal likelihood")
    if city_form == "auto" and city != "none" and not marginal:
        city_form = choose_city_param(pdata, likelihood)
    return PanelForm(city, year, likelihood, city_form, marginal, errors, y_centre, y_scale)


@dataclass
class PanelDesign:
    """The regressors as the builder uses them: ``Zx`` (within parts where the city effects are in
    Mundlak or RE form), the Mundlak city means ``zbar`` or the RE city means ``re_means``, the coords,
    the terms with one common slope and, with slope groups, the group of each city and the slope term."""

    Zx: np.ndarray
    zbar: np.ndarray | None
    re_means: np.ndarray | None
    coords: dict[str, Any]
    common: list[str]
    k_slope: int = -1
    g_of_city: np.ndarray | None = None


def panel_design(pdata: PanelData, spec: ModelSpec, form: PanelForm, slope_groups: pd.Series | None,
                 group_dim: str, slope_term: str) -> PanelDesign:
    terms = list(pdata.terms)
    re_means = None
    if form.city == "mundlak":
        Zx, zbar, mundlak_names = pdata.mundlak_parts(two_way=form.year != "none")
    elif form.city == "random":
        # Plain random effects written in the same basis: x = (x - xbar_i) + xbar_i, and the city effect
        # absorbs beta' xbar_i, i.e. it is centred on alpha + beta' xbar_i with the SAME beta (Mundlak's
        # gamma forced to equal beta). Identical model; the effects and beta no longer trade off.
        if slope_groups is not None:
            raise ValueError(f"{spec.id}: group-specific slopes need Mundlak city effects")
        Zx, _, _ = pdata.mundlak_parts(two_way=form.year != "none")
        re_means = pdata.city_means(pdata.Z)
        zbar, mundlak_names = None, []
    else:
        Zx, zbar, mundlak_names = pdata.Z, None, []
    coords: dict[str, Any] = {CITY: list(pdata.cities), YEAR: list(pdata.years), OBS: np.arange(pdata.n)}
    design = PanelDesign(Zx, zbar, re_means, coords, terms)
    if slope_groups is not None:
        _group_design(design, pdata, form, slope_groups, group_dim, slope_term)
    coords[COEF] = design.common
    if zbar is not None:
        coords[names.MUNDLAK] = mundlak_names
    return design


def _group_design(design: PanelDesign, pdata: PanelData, form: PanelForm, slope_groups: pd.Series,
                  group_dim: str, slope_term: str) -> None:
    """Slope groups: the group of each city, the group coords, and the slope term out of the common ones."""
    terms = list(pdata.terms)
    if slope_term not in terms:
        raise ValueError(f"slope term {slope_term!r} is not among the terms")
    labels = slope_groups.reindex(list(pdata.cities))
    if labels.isna().any():
        raise ValueError(f"no group for cities {labels.index[labels.isna()].tolist()[:5]}")
    groups = list(pd.unique(labels.astype(str).sort_values()))
    if isinstance(slope_groups.dtype, pd.CategoricalDtype):
        groups = [str(g) for g in slope_groups.cat.categories if str(g) in set(labels.astype(str))]
    design.g_of_city = pd.Index(groups).get_indexer(labels.astype(str))
    design.k_slope = terms.index(slope_term)
    if form.city == "mundlak":
        # The group-slope term keeps only its CITY deviation, x_it - xbar_i. The two-way deviation
        # would also remove beta_g (xbar_t - xbar), which varies by group and year when the slopes
        # differ; common year effects cannot absorb that, and the slopes were biased whenever the
        # groups' treatment trends differ. With the city deviation the model is the interacted
        # two-way FE model (group slopes, common year effects) in Mundlak form.
        design.Zx = design.Zx.copy()
        design.Zx[:, design.k_slope] = pdata.mundlak_parts(two_way=False)[0][:, design.k_slope]
    design.common = [t for t in terms if t != slope_term]
    design.coords[group_dim] = groups


def build_panel_model(pdata: PanelData, spec: ModelSpec, *, likelihood: str | None = None,
                      slope_groups: pd.Series | None = None, group_dim: str = names.GROUP,
                      slope_term: str = AGGLOMERATION) -> pm.Model:
    """The PyMC model of ``spec`` on ``pdata`` (no sampling).

    ``slope_groups``: city -> group label; when given, the slope of ``slope_term`` varies by group,
    partially pooled: beta_g ~ Normal(group_mean, group_sd), reported as ``beta_group``
    (dims ``group_dim``, original scale); the other terms keep one slope in ``beta``.

    The variables are created in one fixed order (slopes, group slopes, city effects, year effects,
    sigma, likelihood): the sampler's parameter vector follows it, so reordering would change the draws.
    """
    form = panel_form(pdata, spec, likelihood or spec.likelihood)
    design = panel_design(pdata, spec, form, slope_groups, group_dim, slope_term)
    terms = list(pdata.terms)
    common_idx = [terms.index(t) for t in design.common]
    with pm.Model(coords=design.coords) as model:
        # Index data only where used: nutpie drops unused shared variables, and swapping data into a
        # cached compilation must name exactly the ones it kept.
        uses_city = form.city != "none" or slope_groups is not None
        city_idx = pm.Data("city_idx", pdata.city_idx, dims=OBS) if uses_city else None
        year_idx = pm.Data("year_idx", pdata.year_idx, dims=OBS) if form.year != "none" else None
        X_c = pm.Data("X", design.Zx[:, common_idx], dims=(OBS, COEF))
        # Scales enter as data, not constants, so a cached compilation reused on new data (same
        # structure) picks up the new standardisation too.
        y_centre = pm.Data("y_centre", np.float64(form.y_centre))
        y_scale = pm.Data("y_scale", np.float64(form.y_scale))
        x_sd = pm.Data("x_sd", pdata.x_sd[common_idx], dims=COEF)
        # structured errors: the city effects are fixed effects integrated out under a flat prior, which
        # absorbs the intercept and any city-level (Mundlak) terms
        alpha = pm.Normal("alpha", 0.0, prior(spec, "alpha")["sigma"]) if form.errors.iid else None
        b_std = pm.Normal("beta_std", 0.0, prior(spec, "beta")["sigma"], dims=COEF)
        eta = X_c @ b_std
        slopes = None
        if slope_groups is not None:
            slopes = _group_slopes(pdata, spec, form, design, group_dim, city_idx)
            eta = eta + slopes.term
        eta, city = _city_effects(pdata, spec, form, design, alpha, b_std, eta, city_idx)
        eta, tau = _year_effects(pdata, spec, form, eta, year_idx)
        sigma = pm.HalfNormal("sigma_std", prior(spec, "sigma")["sigma"])
        mu = y_centre + y_scale * eta
        # Named (not a Deterministic, so no per-draw copy is stored) for ``BayesResult.fitted()``: the
        # mean of each row, without the city effects where they are integrated out.
        model.add_named_variable(mu.copy(name=FITTED_MEAN), dims=(OBS,))
        _outcome_likelihood(pdata, spec, form, design, mu, sigma, tau, city, slopes, city_idx, x_sd, terms,
                            slope_term, slope_groups is not None)
        # Back to the original scale: d y / d x = y_scale * b_std / x_sd.
        pm.Deterministic("beta", y_scale * b_std / x_sd, dims=COEF)
        pm.Deterministic("sigma", y_scale * sigma)
        if form.city != "none" and form.errors.iid:
            pm.Deterministic("sigma_city", y_scale * city.sigma_city)
        if slopes is not None:
            pm.Deterministic("beta_group", y_scale * slopes.beta_std / slopes.x_sd, dims=group_dim)
            if slopes.mean is not None:
                pm.Deterministic("group_mean", y_scale * slopes.mean / slopes.x_sd)
            pm.Deterministic("group_sd", y_scale * slopes.sd / slopes.x_sd)
    return model


@dataclass(frozen=True)
class GroupSlopes:
    """The group-slope part of the mean (``term``) and what the deterministics and the structured
    errors need (standardised scale)."""

    term: Any
    beta_std: Any
    mean: Any  # None in the marginal form (drawn afterwards, ``draw_group_mean``)
    sd: Any
    x_sd: Any


def _group_slopes(pdata: PanelData, spec: ModelSpec, form: PanelForm, design: PanelDesign, group_dim: str,
                  city_idx: Any) -> GroupSlopes:
    assert design.g_of_city is not None  # set by _group_design
    x_s = pm.Data("x_slope", design.Zx[:, design.k_slope], dims=OBS)
    x_sd_slope = pm.Data("x_sd_slope", np.float64(pdata.x_sd[design.k_slope]))
    g_idx = pm.Data("group_idx", design.g_of_city, dims=CITY)
    s_mean = prior(spec, "group_mean")["sigma"]
    p_sd = prior(spec, "group_sd")
    if p_sd["dist"] == "gamma":
        gsd = pm.Gamma("group_sd_std", alpha=p_sd["alpha"], beta=p_sd["beta"])
    else:
        gsd = pm.HalfNormal("group_sd_std", p_sd["sigma"])
    # options.slopes: "marginal" integrates the group mean out analytically, beta ~ MVN(0,
    # group_sd^2 I + s_mean^2 J): no mean-vs-slopes ridge (non-centred form, informative groups)
    # and no mean-vs-sd funnel (centred form, few groups); the group mean is drawn afterwards
    # from its exact conditional (draw_group_mean). "centred"/"noncentred" keep it sampled.
    slope_form = spec.options.get("slopes", "auto")
    if slope_form == "auto":
        common_idx = [list(pdata.terms).index(t) for t in design.common]
        slope_form = choose_slope_param(pdata, form.likelihood, design.Zx, common_idx, design.k_slope,
                                        design.g_of_city, p_sd, s_mean)
    gm = None
    if slope_form == "marginal":
        n_groups = len(design.coords[group_dim])
        cov = gsd ** 2 * pt.eye(n_groups) + s_mean ** 2 * pt.ones((n_groups, n_groups))
        bg_std = pm.MvNormal("beta_group_std", mu=pt.zeros(n_groups), cov=cov, dims=group_dim)
    elif slope_form == "centred":
        gm = pm.Normal("group_mean_std", 0.0, s_mean)
        bg_std = pm.Normal("beta_group_std", gm, gsd, dims=group_dim)
    elif slope_form == "noncentred":
        gm = pm.Normal("group_mean_std", 0.0, s_mean)
        gz = pm.Normal("group_z", 0.0, 1.0, dims=group_dim)
        bg_std = pm.Deterministic("beta_group_std", gm + gsd * gz, dims=group_dim)
    else:
        raise ValueError(f"{spec.id}: options.slopes must be auto, marginal, centred or noncentred")
    return GroupSlopes(x_s * bg_std[g_idx[city_idx]], bg_std, gm, gsd, x_sd_slope)


@dataclass(frozen=True)
class CityTerms:
    """The city effects' pieces the likelihood needs: their sd (iid errors), the count of rows per city
    and, in the marginal form, the city-level part of the mean (never expanded to the rows)."""

    sigma_city: Any = None
    counts: Any = None
    city_level: Any = None


def _city_effects(pdata: PanelData, spec: ModelSpec, form: PanelForm, design: PanelDesign, alpha: Any,
                  b_std: Any, eta: Any, city_idx: Any) -> tuple[Any, CityTerms]:
    def city_counts() -> Any:
        return pm.Data("city_count", np.bincount(pdata.city_idx, minlength=len(pdata.cities))
                       .astype(np.float64), dims=CITY)

    if form.city == "none":
        return eta + alpha, CityTerms()
    if not form.errors.iid:
        return eta, CityTerms(counts=city_counts())
    sigma_city = pm.HalfNormal("sigma_city_std", prior(spec, "sigma_city")["sigma"])
    centre = alpha
    if design.zbar is not None:
        Zbar = pm.Data("Zbar", design.zbar, dims=(CITY, names.MUNDLAK))
        gamma = pm.Normal("gamma", 0.0, prior(spec, "gamma")["sigma"], dims=names.MUNDLAK)
        centre = alpha + Zbar @ gamma
    elif design.re_means is not None:
        Xbar = pm.Data("Xbar", design.re_means, dims=(CITY, COEF))
        centre = alpha + Xbar @ b_std
    if form.marginal:
        # Integrated out: the likelihood below is the exact marginal density of each city's rows.
        # The city-level part of the mean stays at city level (never expanded to the rows).
        counts = city_counts()
        city_level = centre if centre is not alpha else alpha * pt.ones_like(counts)
        return eta, CityTerms(sigma_city, counts, city_level)
    if form.city_form == "centred":
        u = pm.Normal("city_effect_std", centre, sigma_city, dims=CITY)
    else:
        u_z = pm.Normal("city_z", 0.0, 1.0, dims=CITY)
        u = pm.Deterministic("city_effect_std", centre + sigma_city * u_z, dims=CITY)
    return eta + u[city_idx], CityTerms(sigma_city)


def _year_effects(pdata: PanelData, spec: ModelSpec, form: PanelForm, eta: Any, year_idx: Any
                  ) -> tuple[Any, Any]:
    if form.year == "zerosum":
        tau = pm.ZeroSumNormal("year_effect_std", sigma=prior(spec, "year")["sigma"], dims=YEAR)
    elif form.year == "fixed":
        raw = pm.Normal("year_dummy_std", 0.0, prior(spec, "year")["sigma"], shape=len(pdata.years) - 1)
        tau = pm.Deterministic("year_effect_std", pt.concatenate([pt.zeros(1), raw]), dims=YEAR)
    else:
        return eta, None
    return eta + tau[year_idx], tau


def _outcome_likelihood(pdata: PanelData, spec: ModelSpec, form: PanelForm, design: PanelDesign, mu: Any,
                        sigma: Any, tau: Any, city: CityTerms, slopes: GroupSlopes | None, city_idx: Any,
                        x_sd: Any, terms: list[str], slope_term: str, grouped: bool) -> None:
    """The observed ``nqp``: Normal, Student-t or LogNormal rows, or per city (the marginal form, with iid
    or structured errors)."""
    y_centre, y_scale = pm.modelcontext(None)["y_centre"], pm.modelcontext(None)["y_scale"]
    scale = y_scale * sigma
    y_data = pm.Data("y", pdata.y, dims=OBS)
    if not form.marginal:
        if form.likelihood == "normal":
            pm.Normal("nqp", mu=mu, sigma=scale, observed=y_data, dims=OBS)
        elif form.likelihood == "student_t":
            p = prior(spec, "nu")
            nu = pm.Gamma("nu", alpha=p["alpha"], beta=p["beta"])
            StudentT("nqp", nu=nu, mu=mu, sigma=scale, observed=y_data, dims=OBS)  # pm.StudentT, disk-cacheable
        else:
            pm.LogNormal("nqp", mu=mu, sigma=scale, observed=y_data, dims=OBS)
        return
    # mu holds the part of the mean that varies within a city; its city means are the year
    # effects' city means (the within regressors have zero city means by construction).
    if not np.allclose(pdata.city_means(design.Zx), 0.0, atol=1e-9):
        raise ValueError(f"{spec.id}: marginal city effects need within-city regressors")
    if form.errors.iid:
        if tau is not None:
            share = pm.Data("year_share", pdata.city_means(np.eye(len(pdata.years))[pdata.year_idx]),
                            dims=(CITY, YEAR))
            mu_bar = y_centre + y_scale * (share @ tau)
        else:
            mu_bar = y_centre * pt.ones_like(city.counts)
        pm.CustomDist("nqp", mu, mu_bar, y_scale * city.city_level, scale, y_scale * city.sigma_city, city_idx,
                      city.counts, logp=marginal_city_logp, random=marginal_city_random, observed=y_data,
                      dims=OBS)
        return
    if not grouped and slope_term not in terms:
        raise ValueError(f"{spec.id}: the random slope needs {slope_term!r} among the terms")
    slope_k = design.k_slope if grouped else terms.index(slope_term)
    extra_vars = structured_errors(pdata, spec, form.errors, sigma, slope_k, city_idx)
    pm.CustomDist("nqp", mu, extra_vars["phi"], y_scale * extra_vars["scale"],
                  y_scale * extra_vars["omega"], extra_vars["g"], city_idx, city.counts,
                  *extra_vars["order"], logp=structured_city_logp, random=structured_city_random,
                  observed=y_data, dims=OBS)
    if form.errors.random_slope:
        # x_sd as data, not a constant, so a compiled model is reused on new data
        sd_k = slopes.x_sd if slopes is not None else x_sd[design.common.index(terms[slope_k])]
        pm.Deterministic("slope_sd", y_scale * extra_vars["omega"] / sd_k)


def structured_errors(pdata: PanelData, spec: ModelSpec, errors: ErrorStructure, sigma: Any, slope_k: int,
                      city_idx: Any) -> dict[str, Any]:
    """The free parameters and data of the error structures (inside a model context), standardised scale:
    phi (0 without AR(1)), the per-row error scale (sigma, or sigma * exp(eta z_i) with city scales), the
    random-slope sd omega on the slope regressor's city deviation g (0 without random slopes) and the
    row order the AR(1) whitening needs."""
    if errors.ar1:
        p = prior(spec, "phi")
        phi = pm.Deterministic("phi", 2.0 * pm.Beta("phi_unit", alpha=p["alpha"], beta=p["beta"]) - 1.0)
    else:
        phi = pt.constant(0.0)
    if errors.city_scales:
        eta = pm.HalfNormal(CITY_SCALE_SD, prior(spec, "city_scale_sd")["sigma"])
        z = pm.Normal(CITY_SCALE_Z, 0.0, 1.0, dims=CITY)
        scale = (sigma * pt.exp(eta * z))[city_idx]
    else:
        scale = sigma * pt.ones(pdata.n)
    if errors.random_slope:
        omega = pm.HalfNormal("slope_sd_std", prior(spec, "slope_sd")["sigma"])
    else:
        omega = pt.constant(0.0)
    g = pm.Data("slope_dev", pdata.mundlak_parts(two_way=False)[0][:, slope_k], dims=OBS)
    order = row_order(pdata.city_idx, np.asarray(pdata.years)[pdata.year_idx])
    rows = (pm.Data("row_prev", order.prev, dims=OBS), pm.Data("row_first", order.first, dims=OBS),
            pm.Data("row_gap", order.gap, dims=OBS))
    return {"phi": phi, "scale": scale, "omega": omega, "g": g, "order": rows}


def city_effects_marginal(spec: ModelSpec, likelihood: str) -> bool:
    """Whether the city effects are integrated out: ``options.city_effects = "marginal"`` with city
    effects and the Normal likelihood (the only one with a closed-form marginal); otherwise "sampled"."""
    form = spec.options.get("city_effects", "sampled")
    if form not in ("sampled", "marginal"):
        raise ValueError(f"{spec.id}: options.city_effects must be sampled or marginal")
    return form == "marginal" and likelihood == "normal" and spec.effects.get("city", "none") != "none"


def marginal_city_logp(value, mu, mu_bar, city_mean, sigma, sigma_city, city_idx, counts):
    """Log-density of y with Normal city effects integrated out.

    The mean of y_it is mu_it + city_mean_i, mu_bar_i being the city mean of mu. City i's T_i rows are
    jointly Normal(mean_i, sigma^2 I + sigma_city^2 11'); with residuals r = y - mean, city means rbar_i
    and within sums of squares SS_i the exact log-density is the within part (T_i - 1 df:
    -(T_i - 1) log(sqrt(2 pi) sigma) - SS_i / (2 sigma^2)) plus the between part
    log Normal(rbar_i; 0, sigma^2 / T_i + sigma_city^2) - log(T_i) / 2.

    Cost: SS_i = sum_t (y_it - mu_it)^2 - T_i (ybar_i - mu_bar_i)^2, so the only row-level work is
    (y - mu)^2 and the city means of y (which carry no gradient); everything else is city-level. The
    per-city terms are spread evenly over the rows so the vector sums to the joint density; its entries
    are therefore not pointwise log-likelihoods (use the sampled form for LOO).
    """
    n = value.shape[0]
    ybar = pt.zeros_like(counts)[city_idx].inc(value) / counts
    rw_bar = ybar - mu_bar
    ss_within = pt.sum((value - mu) ** 2) - pt.sum(counts * rw_bar ** 2)
    log_sigma = pt.log(sigma)
    within = (-(n - counts.shape[0]) * (log_sigma + 0.5 * np.log(2.0 * np.pi))
              - ss_within / (2.0 * sigma ** 2))
    var_between = sigma ** 2 / counts + sigma_city ** 2
    rbar = rw_bar - city_mean
    between = pt.sum(-0.5 * pt.log(2.0 * np.pi * var_between) - rbar ** 2 / (2.0 * var_between)
                     - 0.5 * pt.log(counts))
    return pt.zeros_like(value) + (within + between) / n


def marginal_city_random(mu, mu_bar, city_mean, sigma, sigma_city, city_idx, counts, rng=None, size=None):
    """Draws of y from the marginal model: mean, one Normal city effect per city, Normal noise."""
    rng = rng if rng is not None else np.random.default_rng()
    mu = np.asarray(mu, dtype=float)
    city_idx = np.asarray(city_idx)
    u = np.asarray(city_mean) + rng.standard_normal(np.shape(counts)) * sigma_city
    out = mu + u[city_idx] + sigma * rng.standard_normal(mu.shape)
    return out if size is None else np.broadcast_to(out, size).copy()
