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

from dataclasses import dataclass, field
from typing import Any

import arviz as az
# Figures are built as matplotlib.figure.Figure objects: no pyplot state, no backend switch at import
# (a notebook keeps its own backend).
from matplotlib.figure import Figure
import numpy as np
import pandas as pd
import pymc as pm
import pytensor.tensor as pt
import xarray as xr

from ..conventions import agreement, diagnose, hdi_contains, posterior_summary
from .. import names
from ..names import AGGLOMERATION, CITY, COEF, YEAR
from ..results import AnalysisResult
from .errors import ErrorStructure, row_order, structured_city_logp, structured_city_random
from .result import BayesResult
from .sampling import SamplerSettings, sample
from .spec import PANEL_CITY_EFFECTS, PANEL_LIKELIHOODS, PANEL_YEAR_EFFECTS, ModelSpec, load_spec

OBS = names.OBS
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
class PanelData:
    """Numpy view of a (city, year) panel with the standardisation used by the builders."""

    y: np.ndarray
    X: np.ndarray
    terms: tuple[str, ...]
    cities: tuple[str, ...]
    years: tuple[int, ...]
    city_idx: np.ndarray
    year_idx: np.ndarray
    x_mean: np.ndarray
    x_sd: np.ndarray
    balanced: bool
    index: pd.MultiIndex = field(repr=False)

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def Z(self) -> np.ndarray:
        return (self.X - self.x_mean) / self.x_sd

    def city_means(self, values: np.ndarray) -> np.ndarray:
        """(n_city, k) means over each city's rows."""
        values = np.asarray(values, dtype=float).reshape(self.n, -1)
        sums = np.zeros((len(self.cities), values.shape[1]))
        np.add.at(sums, self.city_idx, values)
        counts = np.bincount(self.city_idx, minlength=len(self.cities))[:, None]
        return sums / counts

    def mundlak_parts(self, two_way: bool = False) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Within deviations (n, k) of the standardised regressors, city-level predictors (n_city, m) and
        their names: the city means of the regressors, plus the city means of the year dummies when the
        panel is unbalanced.

        ``two_way`` (balanced panels with year effects): the deviations also lose their year means. The
        removed part, beta' (zbar_t - zbar), depends on the year only and sums to zero over the years, so
        the zero-sum year effects absorb it: the same model, but the slopes no longer trade off against
        the year effects (regressors with a common trend otherwise mix several times slower)."""
        Z = self.Z
        zbar = self.city_means(Z)
        within = Z - zbar[self.city_idx]
        if two_way and self.balanced:
            year_means = np.zeros((len(self.years), Z.shape[1]))
            np.add.at(year_means, self.year_idx, within)
            within = within - (year_means / len(self.cities))[self.year_idx]
        names = [f"mean_{t}" for t in self.terms]
        if not self.balanced and len(self.years) > 1:
            dummies = np.eye(len(self.years))[self.year_idx][:, 1:]
            dbar = self.city_means(dummies)
            dbar = (dbar - dbar.mean(axis=0)) / np.where(dbar.std(axis=0) > 0, dbar.std(axis=0), 1.0)
            zbar = np.column_stack([zbar, dbar])
            names += [f"mean_year_{y}" for y in self.years[1:]]
        return within, zbar, names


def panel_data(frame: pd.DataFrame, outcome: str, terms: list[str]) -> PanelData:
    """Extract and check the columns; rows with a missing value in any used column are an error."""
    if not isinstance(frame.index, pd.MultiIndex) or list(frame.index.names) != [CITY, YEAR]:
        raise ValueError(f"panel must be indexed by ({CITY}, {YEAR})")
    cols = [outcome, *terms]
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ValueError(f"panel lacks columns {missing}")
    data = frame[cols].sort_index()
    if data.isna().any().any():
        bad = data.columns[data.isna().any()].tolist()
        raise ValueError(f"missing values in {bad}")
    city = data.index.get_level_values(CITY).astype(str)
    year = data.index.get_level_values(YEAR).astype(int)
    cities = tuple(sorted(set(city)))
    years = tuple(sorted(set(year)))
    city_idx = pd.Index(cities).get_indexer(city)
    year_idx = pd.Index(years).get_indexer(year)
    X = data[terms].to_numpy(dtype=float)
    x_sd = X.std(axis=0)
    if (x_sd <= 0).any():
        raise ValueError(f"constant regressor(s): {[t for t, s in zip(terms, x_sd) if s <= 0]}")
    return PanelData(y=data[outcome].to_numpy(dtype=float), X=X, terms=tuple(terms), cities=cities,
                     years=years, city_idx=city_idx, year_idx=year_idx, x_mean=X.mean(axis=0), x_sd=x_sd,
                     balanced=len(data) == len(cities) * len(years), index=data.index)


def city_information(pdata: PanelData, likelihood: str = "normal") -> float:
    """How well the data pin down each city effect: T * s_u^2 / s_e^2 from a least-squares fit of the
    (log) outcome on the regressors, their city means and year dummies (s_e^2 from the within-city
    spread of its residuals, s_u^2 from the spread of their city means beyond what s_e^2 explains)."""
    y = np.log(pdata.y) if likelihood == "lognormal" else pdata.y
    y = (y - y.mean()) / y.std()
    Z = pdata.Z
    zbar = pdata.city_means(Z)[pdata.city_idx]
    years = np.eye(len(pdata.years))[pdata.year_idx][:, 1:]
    D = np.column_stack([np.ones(pdata.n), Z, zbar, years])
    resid = y - D @ np.linalg.lstsq(D, y, rcond=None)[0]
    rbar = pdata.city_means(resid)[:, 0]
    n_city = len(pdata.cities)
    t_mean = pdata.n / n_city
    s_e2 = float(np.sum((resid - rbar[pdata.city_idx]) ** 2) / max(pdata.n - n_city, 1))
    s_u2 = max(float(np.var(rbar)) - s_e2 / t_mean, 0.0)
    return t_mean * s_u2 / s_e2 if s_e2 > 0 else np.inf


def choose_slope_param(pdata: PanelData, likelihood: str, Zx: np.ndarray, common_idx: list[int], k_slope: int,
                       g_of_city: np.ndarray) -> str:
    """'marginal' when the group slopes differ by more than their own noise, 'noncentred' otherwise.

    Least-squares pre-fit of the city-demeaned (log) outcome on the regressors, the slope term split by
    group and year dummies; DerSimonian-Laird between-group variance tau^2 of the group slopes against
    their median squared standard error. Informative, heterogeneous groups sample best with the slopes
    kept as parameters (mean integrated out); near-identical slopes put the posterior of group_sd at
    zero, where only the non-centred form avoids the funnel.
    """
    y = np.log(pdata.y) if likelihood == "lognormal" else pdata.y
    y = (y - y.mean()) / y.std()
    y = y - pdata.city_means(y)[:, 0][pdata.city_idx]
    n_groups = int(g_of_city.max()) + 1
    g_obs = g_of_city[pdata.city_idx]
    slopes = np.eye(n_groups)[g_obs] * Zx[:, [k_slope]]
    years = np.eye(len(pdata.years))[pdata.year_idx][:, 1:]
    D = np.column_stack([slopes, Zx[:, common_idx], years])
    coef, *_ = np.linalg.lstsq(D, y, rcond=None)
    resid = y - D @ coef
    dof = max(pdata.n - D.shape[1] - len(pdata.cities), 1)
    s2 = float(resid @ resid) / dof
    cov = s2 * np.linalg.pinv(D.T @ D)
    b, se2 = coef[:n_groups], np.diag(cov)[:n_groups]
    if n_groups < 2 or not np.all(se2 > 0):
        return "noncentred"
    w = 1.0 / se2
    b_bar = float(np.sum(w * b) / np.sum(w))
    q = float(np.sum(w * (b - b_bar) ** 2))
    tau2 = max(0.0, (q - (n_groups - 1)) / (np.sum(w) - np.sum(w ** 2) / np.sum(w)))
    return "marginal" if tau2 > float(np.median(se2)) else "noncentred"


def choose_city_param(pdata: PanelData, likelihood: str = "normal") -> str:
    """Centred city effects when each city's data are informative about its effect (information > 1),
    non-centred otherwise (the usual rule: the centred form has a funnel when the likelihood is weak)."""
    return "centred" if city_information(pdata, likelihood) > 1.0 else "noncentred"


def _outcome_scale(y: np.ndarray, likelihood: str) -> tuple[float, float]:
    """Centre and scale of the modelled outcome (log y for LogNormal)."""
    if likelihood == "lognormal":
        if (y <= 0).any():
            raise ValueError("the LogNormal likelihood needs a positive outcome")
        ly = np.log(y)
        return float(ly.mean()), float(ly.std())
    return float(y.mean()), float(y.std())


def build_panel_model(pdata: PanelData, spec: ModelSpec, *, likelihood: str | None = None,
                      slope_groups: pd.Series | None = None, group_dim: str = names.GROUP,
                      slope_term: str = AGGLOMERATION) -> pm.Model:
    """The PyMC model of ``spec`` on ``pdata`` (no sampling).

    ``slope_groups``: city -> group label; when given, the slope of ``slope_term`` varies by group,
    partially pooled: beta_g ~ Normal(group_mean, group_sd), reported as ``beta_group``
    (dims ``group_dim``, original scale); the other terms keep one slope in ``beta``.
    """
    likelihood = likelihood or spec.likelihood
    city_eff = spec.effects.get("city", "none")
    year_eff = spec.effects.get("year", "none")
    if city_eff not in SUPPORTED_CITY:
        raise ValueError(f"{spec.id}: the panel builder supports city effects {SUPPORTED_CITY}")
    if year_eff not in SUPPORTED_YEAR:
        raise ValueError(f"{spec.id}: the panel builder supports year effects {SUPPORTED_YEAR}")
    if likelihood not in SUPPORTED_LIKELIHOOD:
        raise ValueError(f"{spec.id}: the panel builder supports likelihoods {SUPPORTED_LIKELIHOOD}")
    y_centre, y_scale = _outcome_scale(pdata.y, likelihood)
    city_form = spec.options.get("city_param", "auto")
    if city_form not in ("auto", "centred", "noncentred"):
        raise ValueError(f"{spec.id}: options.city_param must be auto, centred or noncentred")
    marginal = city_effects_marginal(spec, likelihood)
    errors = ErrorStructure.from_option(spec.options.get("errors"), spec.id)
    if not errors.iid and not marginal:
        raise ValueError(f"{spec.id}: options.errors = {errors.label()!r} needs city effects integrated out "
                         "(options.city_effects = 'marginal') and the Normal likelihood")
    if city_form == "auto" and city_eff != "none" and not marginal:
        city_form = choose_city_param(pdata, likelihood)

    terms = list(pdata.terms)
    re_means = None
    if city_eff == "mundlak":
        Zx, zbar, mundlak_names = pdata.mundlak_parts(two_way=year_eff != "none")
    elif city_eff == "random":
        # Plain random effects written in the same basis: x = (x - xbar_i) + xbar_i, and the city effect
        # absorbs beta' xbar_i, i.e. it is centred on alpha + beta' xbar_i with the SAME beta (Mundlak's
        # gamma forced to equal beta). Identical model; the effects and beta no longer trade off.
        if slope_groups is not None:
            raise ValueError(f"{spec.id}: group-specific slopes need Mundlak city effects")
        Zx, _, _ = pdata.mundlak_parts(two_way=year_eff != "none")
        re_means = pdata.city_means(pdata.Z)
        zbar, mundlak_names = None, []
    else:
        Zx, zbar, mundlak_names = pdata.Z, None, []

    coords: dict[str, Any] = {CITY: list(pdata.cities), YEAR: list(pdata.years), OBS: np.arange(pdata.n)}
    if slope_groups is not None:
        if slope_term not in terms:
            raise ValueError(f"slope term {slope_term!r} is not among the terms")
        labels = slope_groups.reindex(list(pdata.cities))
        if labels.isna().any():
            raise ValueError(f"no group for cities {labels.index[labels.isna()].tolist()[:5]}")
        groups = list(pd.unique(labels.astype(str).sort_values()))
        if isinstance(slope_groups.dtype, pd.CategoricalDtype):
            groups = [str(g) for g in slope_groups.cat.categories if str(g) in set(labels.astype(str))]
        g_of_city = pd.Index(groups).get_indexer(labels.astype(str))
        k_slope = terms.index(slope_term)
        if city_eff == "mundlak":
            # The group-slope term keeps only its CITY deviation, x_it - xbar_i. The two-way deviation
            # would also remove beta_g (xbar_t - xbar), which varies by group and year when the slopes
            # differ; common year effects cannot absorb that, and the slopes were biased whenever the
            # groups' treatment trends differ. With the city deviation the model is the interacted
            # two-way FE model (group slopes, common year effects) in Mundlak form.
            Zx = Zx.copy()
            Zx[:, k_slope] = pdata.mundlak_parts(two_way=False)[0][:, k_slope]
        common = [t for t in terms if t != slope_term]
        coords[group_dim] = groups
        coords[COEF] = common
    else:
        common = terms
        coords[COEF] = terms
    if zbar is not None:
        coords[names.MUNDLAK] = mundlak_names

    common_idx = [terms.index(t) for t in common]
    with pm.Model(coords=coords) as model:
        # Index data only where used: nutpie drops unused shared variables, and swapping data into a
        # cached compilation must name exactly the ones it kept.
        uses_city = city_eff != "none" or slope_groups is not None
        city_idx = pm.Data("city_idx", pdata.city_idx, dims=OBS) if uses_city else None
        year_idx = pm.Data("year_idx", pdata.year_idx, dims=OBS) if year_eff != "none" else None
        X_c = pm.Data("X", Zx[:, common_idx], dims=(OBS, COEF))

        # Scales enter as data, not constants, so a cached compilation reused on new data (same
        # structure) picks up the new standardisation too.
        y_centre = pm.Data("y_centre", np.float64(y_centre))
        y_scale = pm.Data("y_scale", np.float64(y_scale))
        x_sd = pm.Data("x_sd", pdata.x_sd[common_idx], dims=COEF)
        # structured errors: the city effects are fixed effects integrated out under a flat prior, which
        # absorbs the intercept and any city-level (Mundlak) terms
        alpha = pm.Normal("alpha", 0.0, prior(spec, "alpha")["sigma"]) if errors.iid else None
        b_std = pm.Normal("beta_std", 0.0, prior(spec, "beta")["sigma"], dims=COEF)
        eta = X_c @ b_std
        if slope_groups is not None:
            x_s = pm.Data("x_slope", Zx[:, k_slope], dims=OBS)
            x_sd_slope = pm.Data("x_sd_slope", np.float64(pdata.x_sd[k_slope]))
            g_idx = pm.Data("group_idx", g_of_city, dims=CITY)
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
            form = spec.options.get("slopes", "auto")
            if form == "auto":
                form = choose_slope_param(pdata, likelihood, Zx, common_idx, k_slope, g_of_city)
            gm = None
            if form == "marginal":
                n_groups = len(coords[group_dim])
                cov = gsd ** 2 * pt.eye(n_groups) + s_mean ** 2 * pt.ones((n_groups, n_groups))
                bg_std = pm.MvNormal("beta_group_std", mu=pt.zeros(n_groups), cov=cov, dims=group_dim)
            elif form == "centred":
                gm = pm.Normal("group_mean_std", 0.0, s_mean)
                bg_std = pm.Normal("beta_group_std", gm, gsd, dims=group_dim)
            elif form == "noncentred":
                gm = pm.Normal("group_mean_std", 0.0, s_mean)
                gz = pm.Normal("group_z", 0.0, 1.0, dims=group_dim)
                bg_std = pm.Deterministic("beta_group_std", gm + gsd * gz, dims=group_dim)
            else:
                raise ValueError(f"{spec.id}: options.slopes must be auto, marginal, centred or noncentred")
            eta = eta + x_s * bg_std[g_idx[city_idx]]

        if city_eff == "none":
            eta = eta + alpha
        elif not errors.iid:
            counts = pm.Data("city_count", np.bincount(pdata.city_idx, minlength=len(pdata.cities))
                             .astype(np.float64), dims=CITY)
        else:
            sigma_city = pm.HalfNormal("sigma_city_std", prior(spec, "sigma_city")["sigma"])
            centre = alpha
            if zbar is not None:
                Zbar = pm.Data("Zbar", zbar, dims=(CITY, names.MUNDLAK))
                gamma = pm.Normal("gamma", 0.0, prior(spec, "gamma")["sigma"], dims=names.MUNDLAK)
                centre = alpha + Zbar @ gamma
            elif re_means is not None:
                Xbar = pm.Data("Xbar", re_means, dims=(CITY, COEF))
                centre = alpha + Xbar @ b_std
            if marginal:
                # Integrated out: the likelihood below is the exact marginal density of each city's rows.
                # The city-level part of the mean stays at city level (never expanded to the rows).
                counts = pm.Data("city_count", np.bincount(pdata.city_idx, minlength=len(pdata.cities))
                                 .astype(np.float64), dims=CITY)
                city_level = centre if centre is not alpha else alpha * pt.ones_like(counts)
            elif city_form == "centred":
                u = pm.Normal("city_effect_std", centre, sigma_city, dims=CITY)
                eta = eta + u[city_idx]
            else:
                u_z = pm.Normal("city_z", 0.0, 1.0, dims=CITY)
                u = pm.Deterministic("city_effect_std", centre + sigma_city * u_z, dims=CITY)
                eta = eta + u[city_idx]

        if year_eff == "zerosum":
            tau = pm.ZeroSumNormal("year_effect_std", sigma=prior(spec, "year")["sigma"], dims=YEAR)
            eta = eta + tau[year_idx]
        elif year_eff == "fixed":
            raw = pm.Normal("year_dummy_std", 0.0, prior(spec, "year")["sigma"], shape=len(pdata.years) - 1)
            tau = pm.Deterministic("year_effect_std", pt.concatenate([pt.zeros(1), raw]), dims=YEAR)
            eta = eta + tau[year_idx]

        sigma = pm.HalfNormal("sigma_std", prior(spec, "sigma")["sigma"])
        mu = y_centre + y_scale * eta
        scale = y_scale * sigma
        y_data = pm.Data("y", pdata.y, dims=OBS)
        if marginal:
            # mu holds the part of the mean that varies within a city; its city means are the year
            # effects' city means (the within regressors have zero city means by construction).
            if not np.allclose(pdata.city_means(Zx), 0.0, atol=1e-9):
                raise ValueError(f"{spec.id}: marginal city effects need within-city regressors")
            if errors.iid:
                if year_eff != "none":
                    share = pm.Data("year_share", pdata.city_means(np.eye(len(pdata.years))[pdata.year_idx]),
                                    dims=(CITY, YEAR))
                    mu_bar = y_centre + y_scale * (share @ tau)
                else:
                    mu_bar = y_centre * pt.ones_like(counts)
                pm.CustomDist("nqp", mu, mu_bar, y_scale * city_level, scale, y_scale * sigma_city, city_idx,
                              counts, logp=marginal_city_logp, random=marginal_city_random, observed=y_data,
                              dims=OBS)
            else:
                if slope_groups is None and slope_term not in terms:
                    raise ValueError(f"{spec.id}: the random slope needs {slope_term!r} among the terms")
                slope_k = k_slope if slope_groups is not None else terms.index(slope_term)
                extra_vars = structured_errors(pdata, spec, errors, sigma, slope_k, city_idx)
                pm.CustomDist("nqp", mu, extra_vars["phi"], y_scale * extra_vars["scale"],
                              y_scale * extra_vars["omega"], extra_vars["g"], city_idx, counts,
                              *extra_vars["order"], logp=structured_city_logp, random=structured_city_random,
                              observed=y_data, dims=OBS)
                if errors.random_slope:
                    # x_sd as data, not a constant, so a compiled model is reused on new data
                    sd_k = x_sd_slope if slope_groups is not None else x_sd[common.index(terms[slope_k])]
                    pm.Deterministic("slope_sd", y_scale * extra_vars["omega"] / sd_k)
        elif likelihood == "normal":
            pm.Normal("nqp", mu=mu, sigma=scale, observed=y_data, dims=OBS)
        elif likelihood == "student_t":
            p = prior(spec, "nu")
            nu = pm.Gamma("nu", alpha=p["alpha"], beta=p["beta"])
            pm.StudentT("nqp", nu=nu, mu=mu, sigma=scale, observed=y_data, dims=OBS)
        else:
            pm.LogNormal("nqp", mu=mu, sigma=scale, observed=y_data, dims=OBS)

        # Back to the original scale: d y / d x = y_scale * b_std / x_sd.
        pm.Deterministic("beta", y_scale * b_std / x_sd, dims=COEF)
        pm.Deterministic("sigma", scale)
        if city_eff != "none" and errors.iid:
            pm.Deterministic("sigma_city", y_scale * sigma_city)
        if slope_groups is not None:
            pm.Deterministic("beta_group", y_scale * bg_std / x_sd_slope, dims=group_dim)
            if gm is not None:
                pm.Deterministic("group_mean", y_scale * gm / x_sd_slope)
            pm.Deterministic("group_sd", y_scale * gsd / x_sd_slope)
    return model


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
        eta = pm.HalfNormal("city_scale_sd", prior(spec, "city_scale_sd")["sigma"])
        z = pm.Normal("city_scale_z", 0.0, 1.0, dims=CITY)
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
    _, y_scale = _outcome_scale(pdata.y, spec.likelihood)
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
           terms: dict[str, str] | None = None, meant_to_match: bool, agreement_note: str,
           notes: tuple[str, ...] = (), extra: dict[str, Any] | None = None,
           figures: dict[str, Any] | None = None, tables: dict[str, pd.DataFrame] | None = None,
           var_names: list[str] | None = None, result_id: str | None = None,
           title: str | None = None) -> BayesResult:
    """Summary, diagnostics and agreement for a sampled panel model."""
    idata.attrs.update(spec.attrs())
    var_names = var_names or reported_vars(model)
    summary = posterior_summary(idata, var_names)
    diagnostics = diagnose(idata, var_names)
    table = None
    if oracle is not None:
        terms = terms if terms is not None else oracle_terms(oracle, list(model.coords[COEF]))
        if terms:
            table = agreement(summary, oracle, terms)
    return BayesResult(id=result_id or spec.id, title=title or spec.title, idata=idata, summary=summary,
                       diagnostics=diagnostics, agreement=table, meant_to_match=meant_to_match,
                       agreement_note=agreement_note if table is not None else "", notes=notes,
                       extra=extra or {}, tables=tables or {}, figures=figures or {})


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


MATCH_NOTES = {
    "pooled": "Weak priors and a Normal likelihood: the posterior mean reproduces pooled OLS.",
    "city": ("City effects in Mundlak (correlated random effects) form: given the variance components the "
             "posterior mean of beta is the within estimator, so it reproduces city fixed effects."),
    "twoway": ("City effects in Mundlak form and year effects of fixed scale (the Bayesian year dummies): "
               "the posterior mean of beta reproduces the two-way within estimator."),
    "honest": ("Same mean structure as the two-way within estimator, with AR(1) errors within cities, "
               "city-specific error scales and random city slopes. It weights cities and years by their "
               "modelled error covariance (like feasible GLS), so when the model holds its mean sits within "
               "a fraction of a standard error of the least-squares estimate and its interval is narrower "
               "only by the efficiency it gains. A larger |z| means the weighting changes the answer: the "
               "city slopes or error scales vary with how much the treatment moves within each city, or the "
               "treatment is measured with error (quasi-differencing attenuates more). The iid rebuild "
               "(bayes_table3_col4_iid) reproduces the least-squares point estimate (|z| <= 0.1), and the "
               "bootstrap sd beside it is the design-based spread of that estimate."),
}


def fit_table3(frame: pd.DataFrame, controls: tuple[str, ...] | list[str], settings: SamplerSettings,
               oracles: dict[str, AnalysisResult] | None, *, columns: tuple[int, ...] = (1, 2, 3, 4)
               ) -> list[BayesResult]:
    """Table 3 columns (1)-(4): pooled without and with controls, city effects, city and year effects."""
    oracles = oracles or {}
    results = []
    # column 4 comes twice: the honest error structure (the headline) and the iid exact rebuild
    fits = [(f"bayes_table3_col{col}", {1: "pooled", 2: "pooled", 3: "city", 4: "honest"}[col])
            for col in columns]
    if 4 in columns:
        fits.append(("bayes_table3_col4_iid", "twoway"))
    fitted: dict[str, tuple[pm.Model, az.InferenceData]] = {}
    for spec_id, kind in fits:
        spec = load_spec(spec_id)
        model, idata, pdata = fit_spec(frame, spec, controls, settings, log_likelihood=kind == "honest")
        fitted[spec_id] = (model, idata)
        extra: dict[str, Any] = {}
        figures: dict[str, Any] = {}
        if kind == "twoway":  # the iid model: its prior predictive includes the city effects (the honest
            # model's flat-prior city effects have none)
            check = prior_predictive_check(model, pdata, seed=settings.seed)
            extra["prior_predictive"] = check.numbers
            figures["prior_predictive_col4"] = check.figure
        results.append(finish(spec, model, idata, oracle=oracles.get("table3_col4" if kind in ("honest", "twoway")
                                                                     else spec_id.removeprefix("bayes_")),
                              meant_to_match=kind != "honest", agreement_note=MATCH_NOTES[kind], extra=extra,
                              figures=figures))
    if {"bayes_table3_col4", "bayes_table3_col4_iid"} <= set(fitted):
        try:
            comparison = compare_error_structures(fitted["bayes_table3_col4"], fitted["bayes_table3_col4_iid"])
        except Exception as exc:  # noqa: BLE001 - a failed comparison must not discard the sampled fits
            comparison = {"error": f"{type(exc).__name__}: {exc}"}
        results[columns.index(4)].extra["error_structure_loo"] = comparison
    return results


def within_city_loglik_iid(model: pm.Model, idata: az.InferenceData) -> np.ndarray:
    """(chain, draw, city) log-density of each city's within-city contrasts under an iid-error marginal
    model (column (4) iid): -1/2 [(T_i - 1) log(2 pi s^2) + log T_i + SS_i / s^2], SS_i the within-city sum
    of squares of y - (X beta + year effects), s = sigma. The same currency as the structured models'
    pointwise terms (bayes/errors.py), so leave-one-city-out LOO compares them like for like."""
    post = idata.posterior
    y_centre, y_scale = float(model["y_centre"].get_value()), float(model["y_scale"].get_value())
    X = np.asarray(model["X"].get_value())
    city_idx = np.asarray(model["city_idx"].get_value())
    mean = np.einsum("nk,cdk->cdn", X, post["beta_std"].transpose("chain", "draw", COEF).values)
    if "year_effect_std" in post:
        tau = post["year_effect_std"].transpose("chain", "draw", YEAR).values
        mean = mean + tau[..., np.asarray(model["year_idx"].get_value())]
    resid = np.asarray(model["y"].get_value()) - (y_centre + y_scale * mean)
    n_city = int(city_idx.max()) + 1
    counts = np.bincount(city_idx, minlength=n_city).astype(float)
    from .errors import city_sums

    sums, squares = city_sums(resid, city_idx, n_city), city_sums(resid ** 2, city_idx, n_city)
    ss_within = squares - sums ** 2 / counts
    s2 = (y_scale * post["sigma_std"].values[..., None]) ** 2
    return -0.5 * ((counts - 1) * np.log(2 * np.pi * s2) + np.log(counts) + ss_within / s2)


def compare_error_structures(honest: tuple[pm.Model, az.InferenceData], iid: tuple[pm.Model, az.InferenceData]
                             ) -> dict[str, Any]:
    """Leave-one-city-out PSIS-LOO of the structured column (4) against the iid one, both on each city's
    density of its within-city contrasts (the structured model's pointwise entries summed per city; the
    iid model's from ``within_city_loglik_iid``). Returns per model elpd, se, p_loo, the share of Pareto k
    above 0.7 and the elpd difference to the better one."""
    import warnings

    from .errors import city_sums

    model, idata = honest
    city_idx = np.asarray(model["city_idx"].get_value())
    per_city = {"bayes_table3_col4": city_sums(idata.log_likelihood["nqp"].transpose("chain", "draw", OBS).values,
                                               city_idx, int(city_idx.max()) + 1),
                "bayes_table3_col4_iid": within_city_loglik_iid(*iid)}
    posteriors = {"bayes_table3_col4": idata.posterior, "bayes_table3_col4_iid": iid[1].posterior}
    out: dict[str, Any] = {}
    pointwise: dict[str, np.ndarray] = {}
    for name, ll in per_city.items():
        data = az.InferenceData(posterior=posteriors[name],
                                log_likelihood=xr.Dataset({"nqp": (("chain", "draw", CITY), ll)}))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*(Pareto|shape parameter).*", category=UserWarning)
            loo = az.loo(data, pointwise=True)
        k = np.asarray(loo.pareto_k)
        pointwise[name] = np.asarray(loo.loo_i)
        out[name] = {"elpd_loo": float(loo.elpd_loo), "se": float(loo.se), "p_loo": float(loo.p_loo),
                     "share_k_above_0.7": float(np.mean(k > 0.7))}
    best = max(out, key=lambda m: out[m]["elpd_loo"])
    for name in list(out):
        diff = pointwise[name] - pointwise[best]  # paired over the same cities
        out[name]["elpd_diff"] = float(diff.sum())
        out[name]["dse"] = float(np.sqrt(len(diff)) * diff.std())
    out["unit"] = ("leave-one-city-out, density of each city's within-city contrasts (the iid model's draws "
                   "come from its random-effects likelihood, so its importance weights are approximate)")
    out["best"] = best
    return out


RE_NOTE = ("Plain random effects (no Mundlak terms) assume the city effects are independent of the "
           "regressors. Where they correlate (richer cities have both more digital agglomeration and more "
           "NQP), the random-effects posterior mixes within and between variation and is pulled toward the "
           "between-city slope, so it is biased against the two-way within estimate; a large |z| here is "
           "the Hausman contrast, not a sampling failure.")


def fit_random_effects(frame: pd.DataFrame, controls: tuple[str, ...] | list[str], settings: SamplerSettings,
                       oracle: AnalysisResult | None) -> BayesResult:
    """Column (4) with plain random city effects (no Mundlak terms), compared with two-way FE."""
    spec = load_spec("bayes_re")
    model, idata, _ = fit_spec(frame, spec, controls, settings)
    return finish(spec, model, idata, oracle=oracle, meant_to_match=False, agreement_note=RE_NOTE)


@dataclass(frozen=True)
class PriorPredictive:
    numbers: dict[str, float]
    figure: Any


def prior_predictive_check(model: pm.Model, pdata: PanelData, *, seed: int, draws: int = 500
                           ) -> PriorPredictive:
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
    ax.set_xlabel("nqp")
    ax.set_ylabel("density")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title("Prior predictive check, Table 3 (4)")
    fig.tight_layout()
    return PriorPredictive(numbers=numbers, figure=fig)


def fit_likelihoods(frame: pd.DataFrame, controls: tuple[str, ...] | list[str], settings: SamplerSettings
                    ) -> BayesResult:
    """The column (4) structure under Normal, Student-t and LogNormal likelihoods: PPC and LOO."""
    from ..checks import compare, ppc

    spec = load_spec("bayes_likelihoods")
    likelihoods = list(spec.options.get("likelihoods", ["normal", "student_t", "lognormal"]))
    fits: dict[str, az.InferenceData] = {}
    pdata = None
    for lik in likelihoods:
        model, idata, pdata = fit_spec(frame, spec, controls, settings, likelihood=lik, log_likelihood=True)
        with model:
            pm.sample_posterior_predictive(idata, extend_inferencedata=True, random_seed=settings.seed,
                                           progressbar=False)
        idata.attrs.update(spec.attrs())
        idata.attrs["likelihood"] = lik
        fits[lik] = idata
    assert pdata is not None
    table = compare.compare_loo(fits, var_name="nqp")
    pareto = {lik: compare.pareto_k_counts(fits[lik], "nqp") for lik in likelihoods}
    figures: dict[str, Any] = {}
    ppc_numbers: dict[str, Any] = {}
    year_of_obs = np.asarray(pdata.years)[pdata.year_idx]
    city_of_obs = np.asarray(pdata.cities)[pdata.city_idx]
    for lik, idata in fits.items():
        stats = ppc.test_statistics(idata, "nqp")
        ppc_numbers[lik] = stats
        figures[f"ppc_density_{lik}"] = ppc.density_overlay(idata, "nqp", title=f"PPC density ({lik})")
        figures[f"ppc_stats_{lik}"] = ppc.statistics_figure(idata, "nqp", title=f"PPC statistics ({lik})")
        figures[f"ppc_year_means_{lik}"] = ppc.group_means_figure(idata, "nqp", year_of_obs, label="year",
                                                                 title=f"PPC per-year means ({lik})")
        resid = ppc.residuals_by_group(idata, "nqp", city_of_obs)
        ppc_numbers[lik]["max_abs_city_residual"] = float(resid["mean_residual"].abs().max())
        figures[f"ppc_city_residuals_{lik}"] = ppc.residuals_figure(resid, title=f"Mean residual by city ({lik})")

    # The reported posterior: the coefficients of every likelihood side by side in one InferenceData.
    combined = az.InferenceData(posterior=_stack_likelihoods(fits, ["beta", "sigma", "sigma_city"]),
                                sample_stats=_stack_stats(fits))
    combined.attrs.update(spec.attrs())
    var_names = [str(v) for v in combined.posterior.data_vars]
    summary = posterior_summary(combined, var_names)
    diagnostics = diagnose(combined, var_names)
    best = str(table.index[0])
    notes = (f"LOO prefers the {best} likelihood (elpd_loo {table.loc[best, 'elpd_loo']:.1f}).",
             "LogNormal coefficients are semi-elasticities (d log nqp / d x), not comparable in size with "
             "the Normal and Student-t slopes; all log-likelihoods are densities of nqp itself, so LOO "
             "compares them on one scale.")
    return BayesResult(id=spec.id, title=spec.title, idata=combined, summary=summary,
                       diagnostics=diagnostics, notes=notes,
                       extra={"compare": _json_table(table), "pareto_k": pareto, "ppc": ppc_numbers,
                              "likelihoods": likelihoods},
                       tables={"loo_compare": table}, figures=figures)


def _stack_likelihoods(fits: dict[str, az.InferenceData], names: list[str]):
    """Posterior variables renamed by likelihood ('beta_normal' ...), so one summary shows all."""
    import xarray as xr

    parts = {}
    for lik, idata in fits.items():
        for n in names:
            if n in idata.posterior:
                parts[f"{n}_{lik}"] = idata.posterior[n]
    return xr.Dataset(parts)


def _stack_stats(fits: dict[str, az.InferenceData]):
    """Divergences summed over the likelihoods' fits (each fit has the same chains and draws)."""
    stats = [f.sample_stats["diverging"] for f in fits.values() if "diverging" in f.sample_stats]
    out = stats[0].astype(int)
    for s in stats[1:]:
        out = out + s.astype(int).values
    return out.to_dataset(name="diverging")


def _json_table(table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    out = {}
    for idx, row in table.iterrows():
        out[str(idx)] = {k: (v if isinstance(v, (str, bool)) else float(v)) for k, v in row.items()
                         if not isinstance(v, (np.ndarray, list))}
    return out


__all__ = ["PanelData", "panel_data", "build_panel_model", "fit_spec", "city_effects_marginal",
           "marginal_city_logp", "draw_city_effects", "fit_table3", "fit_random_effects",
           "fit_likelihoods", "prior_predictive_check", "finish", "prior", "hdi_contains", "simulate_panel"]


def simulate_panel(n_city: int = 60, n_year: int = 8, *, seed: int = 0, beta: float = 0.01,
                   controls: tuple[str, ...] = ("develop", "finance"), control_beta: float = 0.004,
                   city_corr: float = 0.8, sigma: float = 0.01, sigma_city: float = 0.02,
                   lognormal: bool = False) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A (city, year) panel with known truth in which the city effects correlate with the regressors.

    y = 0.15 + beta * agglomeration + control_beta * sum(controls) + u_i + tau_t + e   (Normal), or
    log y = -3 + ... (LogNormal). Used by the recovery tests and the benchmark.
    """
    rng = np.random.default_rng(seed)
    cities = [f"{110000 + 100 * i:06d}" for i in range(n_city)]
    years = list(range(2013, 2013 + n_year))
    u = rng.normal(0.0, 1.0, n_city)
    tau = rng.normal(0.0, 0.5, n_year)
    ci = np.repeat(np.arange(n_city), n_year)
    ti = np.tile(np.arange(n_year), n_city)
    data: dict[str, np.ndarray] = {}
    data[AGGLOMERATION] = 0.75 + 0.3 * (city_corr * u[ci] + rng.normal(0, 1, ci.size) + 0.2 * tau[ti])
    for j, c in enumerate(controls):
        data[c] = 1.0 + 0.5 * (0.5 * city_corr * u[ci] + rng.normal(0, 1, ci.size) + 0.1 * j * ti)
    lin = (beta * data[AGGLOMERATION] + control_beta * sum(data[c] for c in controls)
           + sigma_city * u[ci] + 0.5 * sigma_city * tau[ti] + rng.normal(0, sigma, ci.size))
    data["nqp"] = np.exp(-3.0 + lin) if lognormal else 0.15 + lin
    index = pd.MultiIndex.from_arrays([np.asarray(cities)[ci], np.asarray(years)[ti]], names=[CITY, YEAR])
    truth = {"beta": {AGGLOMERATION: beta, **{c: control_beta for c in controls}}, "sigma": sigma,
             "sigma_city_scale": sigma_city}
    return pd.DataFrame(data, index=index), truth
