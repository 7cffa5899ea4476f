"""Panels with known truth for calibration studies and recovery tests (numpy and pandas only).

``calibration_panel`` draws the four data-generating processes of the calibration study, each with city
effects correlated with the treatment (so only a within-type estimator is unbiased):

* ``iid``: iid Normal errors given the city and year effects;
* ``ar1_scales``: within-city AR(1) errors (phi = 0.5) with log-normal city error scales (sd of log 0.5);
* ``random_slopes``: city slopes beta_i ~ Normal(beta, 0.5), iid errors (the truth is the mean slope);
* ``groups``: two halves of the cities with slopes 0.5 and 1.5 and different treatment trends (0.05 and
  0.4 per year), the case in which a two-way deviation of a group-slope term is biased.

``simulate_panel`` (a two-way panel with correlated city effects, Normal or LogNormal) and
``simulate_mediation_panel`` (the latent-mediator model's panel) serve the models' recovery tests.

``county_graph`` / ``county_panel`` build a county-size panel (2,850 regions x 10 years) on a planar
contiguity graph with several components and islands, for the scale benchmarks.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

from .data.weights import SpatialWeights
from . import names
from .names import AGGLOMERATION, CITY, NQP, YEAR

Process = Literal["iid", "ar1_scales", "random_slopes", "groups"]
PROCESSES: tuple[str, ...] = get_args(Process)
BETA, CONTROL_BETA, GROUP_SLOPES = 1.0, 0.5, (0.5, 1.5)


def ar1_errors(rng: np.random.Generator, n_city: int, n_year: int, phi: float) -> np.ndarray:
    """(n_city, n_year) stationary AR(1) series of unit marginal variance."""
    z = rng.standard_normal((n_city, n_year))
    e = np.empty_like(z)
    e[:, 0] = z[:, 0]
    for t in range(1, n_year):
        e[:, t] = phi * e[:, t - 1] + np.sqrt(1.0 - phi**2) * z[:, t]
    return e


def calibration_panel(process: Process, seed: int, n_city: int = 100, n_year: int = 8
                      ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A (city, year) panel of ``process`` with outcome ``nqp``, treatment ``agglomeration``, one control
    ``develop`` and, for ``groups``, a splitter ``group_score`` (its median split gives the two groups).
    Returns the frame and the truth: ``beta`` (mean treatment slope), for ``groups`` also ``beta_low``,
    ``beta_high`` and ``difference``."""
    if process not in PROCESSES:
        raise ValueError(f"process must be one of {PROCESSES}, got {process!r}")
    rng = np.random.default_rng(seed)
    ci, ti = np.repeat(np.arange(n_city), n_year), np.tile(np.arange(n_year), n_city)
    u = rng.standard_normal(n_city)
    high = np.arange(n_city) >= n_city // 2
    trend = np.where(high, 0.4, 0.05) if process == "groups" else np.full(n_city, 0.1)
    x = 0.8 * u[ci] + trend[ci] * ti + rng.standard_normal(ci.size)
    develop = rng.standard_normal(ci.size) + 0.3 * u[ci]
    slope = np.full(n_city, BETA)
    if process == "random_slopes":
        slope = BETA + 0.5 * rng.standard_normal(n_city)
    elif process == "groups":
        slope = np.where(high, GROUP_SLOPES[1], GROUP_SLOPES[0])
    if process == "ar1_scales":
        errors = (np.exp(0.5 * rng.standard_normal(n_city))[:, None] * ar1_errors(rng, n_city, n_year, 0.5)).ravel()
    else:
        errors = rng.standard_normal(ci.size)
    year_effect = rng.normal(0.0, 0.5, n_year)
    y = slope[ci] * x + CONTROL_BETA * develop + 2.0 * u[ci] + year_effect[ti] + errors
    cities = np.array([f"{110000 + 100 * i:06d}" for i in range(n_city)])
    index = pd.MultiIndex.from_arrays([cities[ci], 2013 + ti], names=[CITY, YEAR])
    frame = pd.DataFrame({NQP: y, AGGLOMERATION: x, "develop": develop}, index=index)
    truth: dict[str, Any] = {"beta": BETA}
    if process == "groups":
        frame["group_score"] = high[ci] + rng.normal(0.0, 0.01, ci.size)
        truth.update(beta_low=GROUP_SLOPES[0], beta_high=GROUP_SLOPES[1],
                     difference=GROUP_SLOPES[1] - GROUP_SLOPES[0])
    return frame, truth


# ---- county-size panels ------------------------------------------------------------------------------
COUNTY_REGIONS, COUNTY_YEARS = 2850, 10
COUNTY_TRUTH = {"beta": 0.8, "theta": -0.3, "rho": 0.35, "control_beta": 0.5}


def county_graph(n_regions: int = COUNTY_REGIONS, *, seed: int = 0, n_components: int = 3,
                 n_islands: int = 6) -> SpatialWeights:
    """A planar contiguity graph the size of China's counties: random points in ``n_components``
    separated clusters (unequal sizes), each joined by its Delaunay triangulation (a planar graph, about
    six neighbours per region, like polygons that share borders), plus ``n_islands`` regions with no
    neighbour. Region ids ``R0001``.. in cluster order, islands last."""
    from scipy.spatial import Delaunay

    if n_regions < n_islands + 4 * n_components:
        raise ValueError("too few regions for the requested components and islands")
    rng = np.random.default_rng(seed)
    shares = rng.dirichlet(np.full(n_components, 4.0))
    sizes = np.maximum(4, np.floor(shares * (n_regions - n_islands)).astype(int))
    sizes[0] += n_regions - n_islands - sizes.sum()
    edges, start = [], 0
    for size in sizes:
        points = rng.uniform(0.0, 1.0, (size, 2))
        for simplex in Delaunay(points).simplices:
            for a, b in ((0, 1), (1, 2), (0, 2)):
                edges.append((start + simplex[a], start + simplex[b]))
        start += size
    ids = [f"R{i + 1:04d}" for i in range(n_regions)]
    return SpatialWeights(tuple(ids), np.array(edges, dtype=np.int64))


def county_panel(weights: SpatialWeights | None = None, *, n_years: int = COUNTY_YEARS, seed: int = 0
                 ) -> tuple[pd.DataFrame, SpatialWeights, dict[str, Any]]:
    """A (region, year) panel on ``weights`` (default ``county_graph()``) from a spatial Durbin process
    with two-way effects: y_t = rho W y_t + beta x_t + theta W x_t + 0.5 develop_t + mu + nu_t + e_t,
    region effects correlated with x (solved per year with a sparse LU, so it scales to thousands of
    regions). Columns ``city``, ``year``, ``nqp``, ``agglomeration``, ``develop``; returns the frame, the
    weights and the truth (``COUNTY_TRUTH``)."""
    from scipy.sparse import identity
    from scipy.sparse.linalg import splu

    weights = county_graph(seed=seed) if weights is None else weights
    rng = np.random.default_rng(seed + 1)
    n, w = weights.n, weights.row_standardised
    u = rng.standard_normal(n)
    x = 0.6 * u[:, None] + 0.05 * np.arange(n_years)[None, :] + rng.standard_normal((n, n_years))
    develop = 0.3 * u[:, None] + rng.standard_normal((n, n_years))
    mu, nu = u + 0.5 * rng.standard_normal(n), 0.1 * rng.standard_normal(n_years)
    t = COUNTY_TRUTH
    rhs = (t["beta"] * x + t["theta"] * (w @ x) + t["control_beta"] * develop + mu[:, None] + nu[None, :]
           + rng.standard_normal((n, n_years)))
    y = splu((identity(n, format="csc") - t["rho"] * w).tocsc()).solve(rhs)
    frame = pd.DataFrame({CITY: np.repeat(np.array(weights.ids, dtype=object), n_years),
                          YEAR: np.tile(np.arange(2013, 2013 + n_years), n), NQP: y.ravel(),
                          AGGLOMERATION: x.ravel(), "develop": develop.ravel()})
    return frame, weights, dict(t)


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


def simulate_mediation_panel(n_city: int = 80, n_year: int = 8, seed: int = 0,
                             controls: tuple[str, ...] = names.CONTROLS
                             ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A (city, year) panel from the joint model, with city and year effects correlated with the
    treatment and indicators in very different units. Returns the frame and the truth on the reported
    scales (a, b, loading, indirect, direct, total, indicator_effect)."""
    rng = np.random.default_rng(seed)
    mechs = names.MECHANISMS
    cities = [f"{110000 + 100 * i:06d}" for i in range(n_city)]
    years = list(range(2013, 2013 + n_year))
    idx = pd.MultiIndex.from_product([cities, years], names=[names.CITY, names.YEAR])
    n = n_city * n_year
    ci = np.repeat(np.arange(n_city), n_year)
    ti = np.tile(np.arange(n_year), n_city)
    u = rng.normal(size=n_city)
    x = 0.75 + 0.3 * u[ci] + 0.03 * ti + 0.3 * rng.normal(size=n)
    w = 0.4 * u[ci][:, None] + 0.3 * (x - x.mean())[:, None] + rng.normal(size=(n, len(controls)))
    unit = {"inno": (1.0, 40.0), "factor": (0.1, 0.9), "industry": (0.05, 4.0)}   # marker, 2nd indicator
    a0 = {"inno": 0.8, "factor": 0.6, "industry": -0.5}     # marker sds per unit agglomeration
    lam0 = {"inno": 0.9, "factor": 0.7, "industry": 1.1}    # standardised loadings of the 2nd indicator
    b0 = {"inno": 0.3, "factor": 0.25, "industry": -0.2}    # outcome units per marker sd
    nqp_unit, c0 = 0.01, 0.4
    corr = np.array([[1.0, 0.0, 0.3], [0.0, 1.0, 0.0], [0.3, 0.0, 1.0]])
    zeta = rng.multivariate_normal(np.zeros(3), 0.5**2 * corr, size=n)
    cols: dict[str, np.ndarray] = {names.AGGLOMERATION: x}
    y = c0 * x + 0.2 * w[:, 0] - 0.1 * w[:, 1] + 0.5 * u[ci] + 0.1 * ti
    truth: dict[str, Any] = {"a": {}, "b": {}, "loading": {}, "indirect": {}, "indicator_effect": {}}
    for m, (mech, (i1, i2)) in enumerate(mechs.items()):
        u1, u2 = unit[mech]
        eta = a0[mech] * x + 0.3 * w[:, m] + 0.6 * u[ci] + 0.05 * ti + zeta[:, m]   # in marker sds
        cols[i1] = u1 * (2.0 + eta + 0.4 * rng.normal(size=n))
        cols[i2] = u2 * (5.0 + lam0[mech] * eta + 0.2 * w[:, 3] + 0.3 * u[ci] + 0.4 * rng.normal(size=n))
        y = y + b0[mech] * eta
        truth["a"][mech] = a0[mech] * u1
        truth["b"][mech] = b0[mech] * nqp_unit / u1
        truth["loading"][mech] = lam0[mech] * u2 / u1
        truth["indirect"][mech] = a0[mech] * b0[mech] * nqp_unit
        truth["indicator_effect"][i1] = a0[mech] * u1
        truth["indicator_effect"][i2] = a0[mech] * lam0[mech] * u2
    cols[names.NQP] = nqp_unit * (y + 0.5 * rng.normal(size=n))
    truth["direct"] = c0 * nqp_unit
    truth["indirect_sum"] = sum(truth["indirect"].values())
    truth["total"] = truth["direct"] + truth["indirect_sum"]
    for j, cname in enumerate(controls):
        cols[cname] = w[:, j]
    frame = pd.DataFrame(cols, index=idx)
    return frame, truth
