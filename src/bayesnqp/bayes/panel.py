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

from ..conventions import hdi_bounds, hdi_contains
from .. import names
from ..names import AGGLOMERATION, CITY, COEF, YEAR
from ..results import AnalysisResult
from .errors import ErrorStructure, row_order, structured_city_logp, structured_city_random
from .result import BayesResult, assemble
from .sampling import SamplerSettings, sample
from .spec import PANEL_CITY_EFFECTS, PANEL_LIKELIHOODS, PANEL_YEAR_EFFECTS, ModelSpec, load_spec

OBS = names.OBS
FITTED_MEAN = "fitted_mean"
# Posterior draws used for fitted values (evenly spaced over the chains, so the answer is reproducible).
FITTED_DRAWS = 400
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
    y_centre, y_scale = _outcome_scale(pdata.y, likelihood)
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
                                        design.g_of_city)
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
            pm.StudentT("nqp", nu=nu, mu=mu, sigma=scale, observed=y_data, dims=OBS)
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
    or at its least-squares value given the draw where it is a flat-prior fixed effect, as with the
    structured errors); the posterior mean and HDI of those over ``FITTED_DRAWS`` draws. For the
    LogNormal likelihood the mean is on the log scale and the fitted value is its exponential (the
    median of y)."""
    post = idata.posterior.stack(sample=("chain", "draw"))
    pick = np.unique(np.linspace(0, post.sizes["sample"] - 1, FITTED_DRAWS).astype(int))
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
    return "pooled" if city == "none" else "other"


def fit_panel(frame: pd.DataFrame, controls: tuple[str, ...] | list[str], settings: SamplerSettings,
              spec: ModelSpec, oracle: AnalysisResult | None) -> BayesResult:
    """The panel family's driver for one spec: build, sample (``fit_spec``), then summarise against the
    oracle; ``meant_to_match`` and the note follow from what the spec rebuilds (``panel_kind``).
    ``options.prior_predictive`` adds the prior predictive check."""
    kind = panel_kind(spec)
    model, idata, pdata = fit_spec(frame, spec, controls, settings, log_likelihood=kind == "honest")
    extra: dict[str, Any] = {}
    figures: dict[str, Any] = {}
    if spec.options.get("prior_predictive"):
        check = prior_predictive_check(model, pdata, seed=spec.sampler_settings(settings).seed)
        extra["prior_predictive"] = check.numbers
        figures["prior_predictive"] = check.figure
    return finish(spec, model, idata, oracle=oracle, meant_to_match=kind in ("pooled", "city", "twoway"),
                  agreement_note=MATCH_NOTES[kind], extra=extra, figures=figures, pdata=pdata)


def fit_random_effects(frame: pd.DataFrame, controls: tuple[str, ...] | list[str], settings: SamplerSettings,
                       oracle: AnalysisResult | None) -> BayesResult:
    """Column (4) with plain random city effects (no Mundlak terms), compared with two-way FE."""
    return fit_panel(frame, controls, settings, load_spec("bayes_re"), oracle)


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


__all__ = ["PanelData", "panel_data", "build_panel_model", "fit_spec", "fit_panel", "panel_kind",
           "city_effects_marginal", "marginal_city_logp", "draw_city_effects", "fit_random_effects",
           "prior_predictive_check", "finish", "panel_fitted", "prior", "hdi_contains"]

