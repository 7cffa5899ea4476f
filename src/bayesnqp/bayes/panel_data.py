"""The panel family's data: the (city, year) rows as arrays (``PanelData``), their within and Mundlak
parts, and the choices of parametrisation the data dictate (centred or non-centred city effects and
group slopes, from a least-squares pre-fit)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..names import CITY, YEAR


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
                       g_of_city: np.ndarray, group_sd_prior: dict, group_mean_sd: float) -> str:
    """'marginal' when the data pin each group slope down more tightly than the groups spread,
    'noncentred' otherwise.

    The usual rule (Papaspiliopoulos et al. 2007): the centred form samples well when each group's
    likelihood is sharper than the population of slopes (se_g < group_sd), the non-centred form when it
    is flatter. group_sd is not known before sampling, so the rule weighs it by its approximate
    posterior: a least-squares pre-fit of the city-demeaned (log) outcome on the regressors, the slope term
    split by group and year dummies, gives slopes b_g and their SEs; on a grid of group_sd the
    normal-normal marginal likelihood b ~ N(0, diag(se^2) + group_sd^2 I + group_mean_sd^2 J) times the
    spec's prior gives the approximate posterior (approximate: the slopes' SEs only, not their
    correlations); the marginal (centred, mean integrated out) form is chosen when
    P(group_sd^2 > median se^2) > 1/2. Heterogeneous slopes and few groups whose prior keeps group_sd
    off zero (two median-split halves, Gamma prior) both go centred, even when the halves share one slope
    that thousands of cities pin down (where the non-centred form has a thin curved ridge); many
    look-alike groups whose posterior piles group_sd near zero go non-centred.
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
    p_above = group_sd_posterior_above(b, se2, group_sd_prior, group_mean_sd, float(np.median(se2)))
    return "marginal" if p_above > 0.5 else "noncentred"


def group_sd_posterior_above(b: np.ndarray, se2: np.ndarray, prior_sd: dict, group_mean_sd: float,
                             threshold2: float) -> float:
    """P(group_sd^2 > threshold2 | b) for estimated group slopes b with sampling variances se2, under
    b_g ~ N(m, group_sd^2 + se2_g), m ~ N(0, group_mean_sd^2) (m integrated out) and the spec's prior
    on group_sd (Gamma or HalfNormal), on a log-spaced grid.

    The covariance diag(se2 + g^2) + s^2 11' is a diagonal plus rank one, so its log-determinant and
    quadratic form come from the determinant lemma and Sherman-Morrison: O(groups) per grid point, with
    no solve that tiny SEs could make singular."""
    if prior_sd["dist"] == "gamma":
        prior_scale = prior_sd["alpha"] / prior_sd["beta"]
    else:
        prior_scale = prior_sd["sigma"]
    top = 20.0 * max(1.0, float(np.abs(b).max()), prior_scale)
    grid = np.geomspace(1e-3 * np.sqrt(float(se2.min())), top, 2000)
    if prior_sd["dist"] == "gamma":
        log_prior = (prior_sd["alpha"] - 1.0) * np.log(grid) - prior_sd["beta"] * grid
    else:
        log_prior = -0.5 * (grid / prior_sd["sigma"]) ** 2
    d = se2[None, :] + grid[:, None] ** 2  # (grid, groups): the diagonal part
    s2 = group_mean_sd ** 2
    inv_sum = (1.0 / d).sum(axis=1)
    b_bar = (b / d).sum(axis=1) / inv_sum  # precision-weighted mean: the quadratic form without cancellation
    logdet = np.log(d).sum(axis=1) + np.log1p(s2 * inv_sum)
    quad = ((b[None, :] - b_bar[:, None]) ** 2 / d).sum(axis=1) + b_bar ** 2 * inv_sum / (1.0 + s2 * inv_sum)
    log_post = log_prior - 0.5 * (logdet + quad) + np.log(grid)  # + log g: density per log-spaced step
    w = np.exp(log_post - log_post.max())
    return float(w[grid ** 2 > threshold2].sum() / w.sum())


def choose_city_param(pdata: PanelData, likelihood: str = "normal") -> str:
    """Centred city effects when each city's data are informative about its effect (information > 1),
    non-centred otherwise (the usual rule: the centred form has a funnel when the likelihood is weak)."""
    return "centred" if city_information(pdata, likelihood) > 1.0 else "noncentred"


def outcome_scale(y: np.ndarray, likelihood: str) -> tuple[float, float]:
    """Centre and scale of the modelled outcome (log y for LogNormal)."""
    if likelihood == "lognormal":
        if (y <= 0).any():
            raise ValueError("the LogNormal likelihood needs a positive outcome")
        ly = np.log(y)
        return float(ly.mean()), float(ly.std())
    return float(y.mean()), float(y.std())
