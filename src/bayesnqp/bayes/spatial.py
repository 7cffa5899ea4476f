"""What the spatial model families share: the panel as (region, year) arrays, Moran's I, the conditional
log-density of the SAR-type innovations (spatial LOO) and the spec and scale helpers.

The families: ``car`` (BYM2 and Leroux CAR city effects) and ``sdm`` (SDM, SAR, SEM, SLX); the design
notes are in their docstrings. Everything that needs a matrix factorisation is computed once in
numpy/scipy outside the log-densities (``spatial_linalg``); the log-densities are O(edges).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import names
from ..data.weights import SpatialWeights
from ..errors import InputError, Problem
from ..panelops import region_major
from .spec import ModelSpec, load_spec


def conditional_loglik(e: np.ndarray, rho: np.ndarray, sigma: np.ndarray, weights: SpatialWeights, *,
                       two_way: bool = True, data_level_years: bool = False) -> np.ndarray:
    """log p(y_it | y_-it) of a Gaussian SAR/SDM/SEM process for every draw, region and year.

    With A = I - rho W and r = y - m (m the regressor part), the structural innovations A r are iid
    N(0, sigma^2) around the two-way effects. ``two_way=True`` (the models of this package): the city and
    year effects are integrated out under flat priors, as PSIS-LOO integrates out the sampled effects of
    the CAR and non-spatial models, so the comparison is like-for-like. The density of y is then the
    improper Gaussian with precision P = (I_T x A)' M (I_T x A) / sigma^2, M the two-way projection, and
    y_it | y_-it ~ N(y_it - (P r)_it / P_ii, 1 / P_ii) with
    (P r) = A' e / sigma^2 for e = M A r (the within innovations, as ``sdm_innovations`` returns them) and
    P_ii = (1 - 1/T) [1 + rho^2 c_i - (1 - rho s_i)^2 / n] / sigma^2, c_i = sum_k W_ki^2, s_i = sum_k W_ki
    (W has a zero diagonal; M = (I_T - J/T) x (I_n - J/n) in a balanced panel). Conditioning on the
    effects at their profiled values instead would credit every model of this family with about one
    nat per effect. ``two_way=False``: raw innovations e = A r and P = I_T x A'A / sigma^2.
    ``data_level_years`` (the SEM, whose year effects sit in y, not in the innovations): the year part
    of M projects out a = A 1 instead of 1 in every year (``year_direction``), so P_ii uses
    (A'a)_i^2 / a'a in place of (1 - rho s_i)^2 / n; ``e`` must be projected the same way
    (``project_out_years``). O(edges) per draw. ``e``: (draws, n, T); ``rho``, ``sigma``: (draws,).
    """
    w = weights.row_standardised
    c = np.asarray(w.multiply(w).sum(axis=0)).ravel()
    draws, n, t = e.shape
    wte = (w.T @ e.transpose(1, 0, 2).reshape(n, -1)).reshape(n, draws, t).transpose(1, 0, 2)
    r = rho[:, None, None]
    quad = 1.0 + r ** 2 * c[None, :, None]
    if two_way:  # (A'v)_i^2 / v'v for the year direction v: 1, or a = A 1 for data-level year effects
        if data_level_years:
            v = year_direction(rho, weights)
            share = (v - rho[:, None] * (w.T @ v.T).T) ** 2 / (v ** 2).sum(axis=1, keepdims=True)
        else:
            s = np.asarray(w.sum(axis=0)).ravel()
            share = (1.0 - rho[:, None] * s[None, :]) ** 2 / n
        quad = (1.0 - 1.0 / t) * (quad - share[:, :, None])
    qii = quad / sigma[:, None, None] ** 2
    resid = (e - r * wte) / sigma[:, None, None] ** 2 / qii
    return 0.5 * np.log(qii / (2 * np.pi)) - 0.5 * qii * resid**2


def year_direction(rho: np.ndarray, weights: SpatialWeights) -> np.ndarray:
    """a = (I - rho W) 1 for every draw, (draws, n): where a year effect that sits in y (the SEM's
    y = X beta + mu + nu_t + u, u = rho W u + e) points among the innovations. 1 - rho for a region
    with neighbours (row-standardised W), 1 for an island."""
    row_sums = np.asarray(weights.row_standardised.sum(axis=1)).ravel()
    return 1.0 - np.asarray(rho, dtype=float)[:, None] * row_sums[None, :]


def project_out_years(u: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Innovations (draws, n, T) with each year's component along a (draws, n) removed: the data-level
    year effects integrated out under a flat prior."""
    coef = np.einsum("dn,dnt->dt", a, u) / (a ** 2).sum(axis=1)[:, None]
    return u - a[:, :, None] * coef[:, None, :]


def moran_i(values: np.ndarray, weights: SpatialWeights) -> np.ndarray:
    """Moran's I with the row-standardised W along the last-but-one axis (regions), vectorised.

    ``values``: (..., n, T) -> (..., T). S0 is the number of non-island regions (row sums of W).
    """
    w = weights.row_standardised
    x = values - values.mean(axis=-2, keepdims=True)
    n = weights.n
    s0 = float(w.sum())
    lead = x.shape[:-2]
    t = x.shape[-1]
    flat = np.moveaxis(x, -2, 0).reshape(n, -1)
    wx = (w @ flat).reshape((n,) + lead + (t,))
    wx = np.moveaxis(wx, 0, -2)
    return (n / s0) * (x * wx).sum(axis=-2) / (x**2).sum(axis=-2)


# ================================================================================================
# data preparation
# ================================================================================================
def panel_arrays(frame: pd.DataFrame, columns: list[str], weights: SpatialWeights, who: str
                 ) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(n, T) outcome and (n, T, k) regressors in the order of ``weights.ids``; validates the panel."""
    problems: list[Problem] = []
    missing = [c for c in columns if c not in frame.columns]
    problems += [Problem(who, "column is missing from the panel", column=c) for c in missing]
    if list(frame.index.names) != [names.CITY, names.YEAR]:
        problems.append(Problem(who, f"panel index must be ({names.CITY}, {names.YEAR})"))
    if problems:
        raise InputError(problems)
    cities = frame.index.get_level_values(names.CITY).unique()
    years = sorted(frame.index.get_level_values(names.YEAR).unique())
    ids = list(weights.ids)
    problems += [Problem(who, "panel city is not in the spatial weights", city=str(c))
                 for c in sorted(set(cities) - set(ids))]
    problems += [Problem(who, "region of the spatial weights is not in the panel", city=c)
                 for c in sorted(set(ids) - set(cities))]
    if len(frame) != len(ids) * len(years):
        problems.append(Problem(who, "spatial models need a balanced panel (every city in every year)"))
    if problems:
        raise InputError(problems)
    full = pd.MultiIndex.from_product([ids, years], names=[names.CITY, names.YEAR])
    sub = frame.reindex(full)[columns]
    bad = sub.isna().any(axis=1)
    if bad.any():
        raise InputError([Problem(who, "missing value in a spatial model column", city=str(c), year=int(y))
                          for c, y in sub.index[bad][:20]])
    arr = region_major(sub.to_numpy(float), len(ids), len(years))  # (n, T, columns)
    return arr[..., 0], arr[..., 1:], [int(y) for y in years]


def nonzero_sd(x: np.ndarray, axis=None) -> np.ndarray:
    """Standard deviation with 1 where it is 0 (a constant column keeps its scale when standardised)."""
    s = np.std(x, axis=axis)
    return np.where(s > 0, s, 1.0)


def model_terms(spec: ModelSpec, controls: list[str] | tuple[str, ...]) -> list[str]:
    """The regressors of a spatial model: the spec's terms, or the treatment and the controls."""
    return spec.expand_terms(tuple(controls)) if spec.terms else [names.AGGLOMERATION, *controls]


def resolve_spec(spec: ModelSpec | str | None, default: str) -> ModelSpec:
    """A spec given as an object, an id or nothing (then ``default``'s bundled spec)."""
    return spec if isinstance(spec, ModelSpec) else load_spec(spec or default)

