"""The bundled SYNTHETIC demo panel: real geography (280 cities, their contiguity graph, distances to
Hangzhou), synthetic numbers from a documented, seeded generating process with known truth.

The process (every parameter is written to ``truth.json``):

1. City traits: a development latent ``d`` = east-west / distance gradient + a SAR spatial field on the
   real contiguity graph + a bonus for provincial capitals and the large sub-provincial cities + noise.
2. Employment and the digital share: total employment grows with ``d``; the log digital share has a city
   effect correlated with ``d`` (so city effects correlate with the treatment), a national rising trend,
   a distance-to-Hangzhou x year slope (the instrument's first stage), city trends and AR(1) shocks.
   The treatment ``agglomeration`` is the location quotient computed from these two columns.
3. Controls and heterogeneity splitters: city traits correlated with ``d``, slowly varying over years.
4. Three latent mechanisms eta_k = a_k * agglomeration + controls + city/year effects + noise, each
   measured by two indicators (log link; the two count indicators are Poisson).
5. The latent NQP y follows a spatial Durbin process with two-way effects and negative spillover,
   y_t = (I - rho W)^-1 (b_i LQ_t + theta W LQ_t + X_t g + sum_k b_k eta_kt + mu + nu_t + e_t),
   with a city-specific slope b_i that is larger where the splitters say it should be.
6. The 16 NQP indicators are positive, monotone functions of y with indicator-specific noise, in
   realistic units; the entropy index computed from them is close to linear in y (slope kappa).

The parameters were chosen so that the computed index and LQ replicate the paper's Table 2 and the
two-way FE slope of the index on agglomeration lands near the paper's 0.010 (see ``calibration``).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

from .data.weights import SpatialWeights
from .measures import entropy_index, entropy_weights, location_quotient
from .names import (
    AGGLOMERATION,
    CITY,
    CONTROLS,
    DIGITAL_EMPLOYMENT,
    DIST_HANGZHOU,
    MECHANISMS,
    MUNICIPALITY_ADCODES,
    NQP,
    NQP_INDICATOR_NAMES,
    SPLITTERS,
    SYNTHETIC_BANNER,
    TOTAL_EMPLOYMENT,
    YEAR,
)
from .panelops import within  # city means removed first (axes=(1, 0) on (city, year) arrays), as the demo was generated

GENERATOR_VERSION = "1.0.0"
DEFAULT_SEED = 20130101
YEARS: tuple[int, ...] = tuple(range(2013, 2023))

# Paper, Table 2 (N = 2,800): mean, sd, min, max.
TABLE2: dict[str, tuple[float, float, float, float]] = {
    NQP: (0.0356, 0.0482, 0.0026, 0.5463),
    AGGLOMERATION: (0.7515, 0.5726, 0.0100, 6.6905),
    "develop": (5.5973, 2.8370, 0.8407, 15.5916),
    "unemployed": (0.0100, 0.0100, 0.0002, 0.2548),
    "finance": (1.1320, 0.6550, 0.1833, 7.5000),
    "human": (9.6812, 17.1086, 0.0078, 120.0000),
    "traffic": (0.0478, 0.0327, 0.0029, 0.8262),
    "support": (0.1902, 0.0418, 0.0466, 0.3567),
}
PAPER_TWFE = (0.0100, 0.0010)  # Table 3 column (4): estimate, SE

# Large non-capital cities (sub-provincial cities and the biggest prefecture economies): a development bonus.
MAJOR_CITIES: tuple[str, ...] = ("440300", "330200", "350200", "370200", "210200", "320500", "320200",
                                 "441900", "440600")
# The four first-tier cities (Beijing, Shanghai, Guangzhou, Shenzhen): fixed NQP city levels (mu_tier1).
TIER1_CITIES: tuple[str, ...] = ("110000", "310000", "440100", "440300")

# ---------------------------------------------------------------------------------------------------
# Generating parameters. Changing any of them changes the bundled file: bump GENERATOR_VERSION.
# ---------------------------------------------------------------------------------------------------
PARAMS: dict[str, Any] = {
    "development": {
        "w_east": 0.55, "w_hangzhou": 0.35, "w_field": 0.55, "sar_lambda": 0.8,
        "capital_bonus": 1.1, "municipality_bonus": 0.6, "major_bonus": 1.0, "tier1_bonus": 1.0, "noise_sd": 0.35, "cap": 2.5,
    },
    "employment": {"log_median": np.log(32.0), "d_slope": 0.55, "city_sd": 0.45, "growth": 0.012,
                   "shock_sd": 0.04},
    "digital_share": {
        "national_2013": 0.018, "national_2022": 0.031,
        "d_slope": 0.62, "city_sd": 0.35, "field_slope": 0.15,
        "gamma_distance_year": -0.055,  # d log share / d year per sd of distance to Hangzhou
        "trend_sd": 0.02, "ar_phi": 0.5, "shock_sd": 0.13,
    },
    "controls": {
        "develop": {"log_median": np.log(4.9), "d_slope": 0.50, "city_sd": 0.18, "growth": 0.055,
                    "shock_sd": 0.05},
        "unemployed": {"log_median": np.log(0.0068), "d_slope": -0.15, "city_sd": 0.75, "shock_sd": 0.35,
                       "max": 0.2548},
        "finance": {"log_median": np.log(0.95), "d_slope": 0.22, "city_sd": 0.38, "growth": 0.02,
                    "shock_sd": 0.12},
        "human": {"log_median": np.log(4.4), "d_slope": 0.85, "city_sd": 0.55, "capital_bonus": 1.0,
                  "growth": 0.02, "shock_sd": 0.05, "max": 120.0},
        "traffic": {"log_median": np.log(0.040), "d_slope": 0.15, "city_sd": 0.55, "growth": 0.02,
                    "shock_sd": 0.08},
        "support": {"mean": 0.188, "d_slope": 0.012, "city_sd": 0.033, "trend": 0.001, "shock_sd": 0.012,
                    "min": 0.0466, "max": 0.3567},
    },
    "splitters": {
        # level (log scale for the positive ones), d slope, city sd, trend per year, shock sd
        "digital_support": {"log_median": np.log(8.0), "d_slope": 0.35, "city_sd": 0.45, "trend": 0.10,
                            "shock_sd": 0.15},
        "nqp_emphasis": {"log_median": np.log(14.0), "d_slope": 0.30, "city_sd": 0.45, "trend": 0.04,
                         "shock_sd": 0.15},
        "marketization": {"mean": 6.6, "d_slope": 1.1, "city_sd": 1.0, "trend": 0.08, "shock_sd": 0.15},
        "market_integration": {"logit_mean": 0.4, "d_slope": 0.45, "city_sd": 0.6, "trend": 0.03,
                               "shock_sd": 0.08},
        "gov_dominance": {"log_median": np.log(0.19), "d_slope": -0.30, "city_sd": 0.30, "trend": -0.005,
                          "shock_sd": 0.05},
    },
    # Slope heterogeneity: b_i = b * exp(sum_s h_s z_si) / mean_i(...), z_si the standardised city mean of
    # splitter s with gov_dominance sign-reversed, so "high" groups (low gov_dominance) have larger slopes.
    "heterogeneity": {"digital_support": 0.12, "nqp_emphasis": 0.12, "marketization": 0.12,
                      "market_integration": 0.20, "gov_dominance": 0.12},
    "mechanisms": {
        # eta_k = a_k * LQ + sum_c s_kc * std(control_c) + d_slope * d + city noise + trend * (t - 2017.5) + noise
        "inno": {"a": 0.60, "d_slope": 0.6, "city_sd": 0.5, "trend": 0.08, "noise_sd": 0.45,
                 "controls": {"human": 0.15, "support": 0.10}},
        "factor": {"a": 0.55, "d_slope": 0.5, "city_sd": 0.5, "trend": 0.15, "noise_sd": 0.45,
                   "controls": {"finance": 0.10, "develop": 0.10}},
        "industry": {"a": 0.50, "d_slope": 0.6, "city_sd": 0.5, "trend": 0.06, "noise_sd": 0.45,
                     "controls": {"develop": 0.15, "traffic": 0.05}},
    },
    # indicator = exp(intercept + loading * eta + noise) (log link), or Poisson(exp(intercept + loading * eta)).
    "measurement": {
        "inno_rd_staff": {"link": "log", "intercept": np.log(0.9), "loading": 0.6, "noise_sd": 0.25,
                          "unit": "10k persons"},
        "inno_patents_pc": {"link": "log", "intercept": np.log(20.0), "loading": 0.5, "noise_sd": 0.25,
                            "unit": "applications per 10k residents"},
        "factor_exchanges": {"link": "poisson", "intercept": -1.9, "loading": 0.55, "unit": "count"},
        "factor_pilots": {"link": "poisson", "intercept": 0.4, "loading": 0.5, "unit": "count"},
        "industry_tertiary_ratio": {"link": "log", "intercept": np.log(0.95), "loading": 0.25,
                                    "noise_sd": 0.08, "unit": "ratio"},
        "industry_productivity": {"link": "log", "intercept": np.log(11.0), "loading": 0.35,
                                  "noise_sd": 0.08, "unit": "10k yuan per worker"},
    },
    "nqp": {
        "rho": -0.20, "b": 0.0031, "theta": -0.0031,
        "g": {"develop": 0.0010, "unemployed": -0.050, "finance": 0.0015, "human": 0.00020,
              "traffic": 0.010, "support": 0.040},
        "b_k": {"inno": 0.0014, "factor": 0.0011, "industry": 0.0009},
        "mu_scale": 0.008, "mu_d_slope": 1.0, "mu_noise_sd": 0.25,
        "mu_tier1": {"110000": 0.16, "310000": 0.125, "440300": 0.10, "440100": 0.08}, "mu_tier1_noise_sd": 0.05,
        "nu_2013": 0.0, "nu_2022": 0.012, "year_shock_sd": 0.0006,
        "e_sd": 0.002,
    },
    "indicators": {
        # Each indicator: x = base + scale * (softplus_h(y + offset) ^ power) * exp(m_ij + eps_ijt), or a
        # saturating rate 100 * (1 - exp(-(r0 + r1 * softplus(...)) * exp(m + eps))); city-indicator
        # effects m_ij ~ N(0, city_sd) make different cities lead different indicators.
        "softplus_h": 0.003, "offset": 0.015,
        "spec": {
            "emerging_industry_staff": {"kind": "count", "scale": 6.0e5, "power": 1.85, "city_sd": 1.228, "noise_sd": 0.092},
            "research_staff": {"kind": "level", "base": 0.05, "scale": 180.0, "power": 1.65, "city_sd": 0.956, "noise_sd": 0.0552},
            "avg_wage": {"kind": "level", "base": 38000.0, "scale": 1.6e5, "power": 0.6, "city_sd": 0.328, "noise_sd": 0.0184},
            "consumption_pc": {"kind": "level", "base": 9000.0, "scale": 6.0e4, "power": 0.6, "city_sd": 0.328, "noise_sd": 0.0184},
            "telecom_volume": {"kind": "level", "base": 5.0, "scale": 3000.0, "power": 1.65, "city_sd": 0.956, "noise_sd": 0.0552},
            "ai_firm_share": {"kind": "rate", "r0": 0.002, "r1": 0.35, "city_sd": 0.956, "noise_sd": 0.0552},
            "robot_density": {"kind": "level", "base": 3.0, "scale": 3000.0, "power": 1.65, "city_sd": 1.092, "noise_sd": 0.0552},
            "pollution_investment": {"kind": "level", "base": 0.5, "scale": 600.0, "power": 1.65, "city_sd": 1.228, "noise_sd": 0.092},
            "waste_treatment_rate": {"kind": "rate", "r0": 2.0, "r1": 150.0, "city_sd": 0.546, "noise_sd": 0.0736},
            "emission_trading": {"kind": "level", "base": 0.0, "scale": 250.0, "power": 1.95, "city_sd": 1.638, "noise_sd": 0.1288},
            "green_invention_patents": {"kind": "count", "scale": 1.1e5, "power": 1.85, "city_sd": 1.228, "noise_sd": 0.0736},
            "green_utility_patents": {"kind": "count", "scale": 1.6e5, "power": 1.75, "city_sd": 1.092, "noise_sd": 0.0736},
            "broadband_users": {"kind": "level", "base": 10.0, "scale": 2500.0, "power": 1.55, "city_sd": 0.819, "noise_sd": 0.0368},
            "internet_penetration": {"kind": "rate", "r0": 0.25, "r1": 12.0, "city_sd": 0.41, "noise_sd": 0.0294},
            "gov_science_spending": {"kind": "level", "base": 0.2, "scale": 900.0, "power": 1.75, "city_sd": 1.092, "noise_sd": 0.0552},
            "gov_education_spending": {"kind": "level", "base": 8.0, "scale": 3000.0, "power": 1.55, "city_sd": 0.683, "noise_sd": 0.0294},
        },
    },
}


@dataclass(frozen=True)
class DemoData:
    """The synthetic panel (one row per city-year, raw columns only) and its generating truth."""

    panel: pd.DataFrame
    truth: dict = field(repr=False)
    # Latent draws, (city, year) arrays in panel order: y (latent NQP), eta_<k>, plus mu (city), nu (year),
    # slope (city-specific agglomeration slope b_i). Not written to disk; for recovery checks.
    latent: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class _Geo:
    ids: tuple[str, ...]
    cities: pd.DataFrame
    weights: SpatialWeights


# ---------------------------------------------------------------------------------------------------
def _load_geo(geography: Any) -> _Geo:
    if geography is None:
        from .data.geography import load_geography

        geography = load_geography()
    cities = geography.cities.copy()
    cities.index = cities.index.astype(str)
    ids = tuple(sorted(cities.index))
    weights = geography.weights
    if tuple(weights.ids) != ids:
        weights = weights.subset(list(ids))
    return _Geo(ids=ids, cities=cities.loc[list(ids)], weights=weights)


def _standardise(x: np.ndarray) -> np.ndarray:
    return (x - x.mean()) / x.std()


def _sar_field(w: sp.csr_array, lam: float, rng: np.random.Generator) -> np.ndarray:
    """A standardised SAR draw u = (I - lam W)^-1 eps on the row-standardised W (islands: u = eps)."""
    n = w.shape[0]
    eps = rng.standard_normal(n)
    u = np.linalg.solve(np.eye(n) - lam * w.toarray(), eps)
    return _standardise(u)


def _softplus(x: np.ndarray, h: float) -> np.ndarray:
    return h * np.logaddexp(0.0, x / h)


def _indicators(y: np.ndarray, noise: dict[str, np.ndarray], rounded: bool) -> dict[str, np.ndarray]:
    """The 16 raw indicators as positive, monotone functions of y with the given multiplicative noise.

    ``rounded=False`` skips the reporting rounding (counts, rates), for derivatives of the index in y.
    """
    pi = PARAMS["indicators"]
    pos = _softplus(y + pi["offset"], pi["softplus_h"])
    out: dict[str, np.ndarray] = {}
    for name in NQP_INDICATOR_NAMES:
        spec = pi["spec"][name]
        if spec["kind"] == "rate":
            # reported to two decimals, as yearbooks do; saturates at exactly 100
            x = 100.0 * (1.0 - np.exp(-(spec["r0"] + spec["r1"] * pos) * noise[name]))
            out[name] = np.round(x, 2) if rounded else x
        elif spec["kind"] == "count":
            x = spec["scale"] * pos ** spec["power"] * noise[name]
            out[name] = np.round(x) if rounded else x
        else:
            out[name] = spec["base"] + spec["scale"] * pos ** spec["power"] * noise[name]
    return out


def twfe(y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-way FE slopes and city-clustered (CRV1) SEs for a balanced (n, T) outcome and (n, T, k) regressors.

    Small-sample factor as pyfixest's default: G/(G-1) * (N-1)/(N-k-T) (the city effects are nested in
    the clusters and not counted; the T year effects are).
    """
    n, t, k = x.shape
    yt = within(y, axes=(1, 0)).reshape(-1)
    xt = within(x, axes=(1, 0)).reshape(n * t, k)
    bread = np.linalg.inv(xt.T @ xt)
    beta = bread @ xt.T @ yt
    resid = (yt - xt @ beta).reshape(n, t)
    scores = np.einsum("itk,it->ik", xt.reshape(n, t, k), resid)
    meat = scores.T @ scores
    # pyfixest counts the year effects (not nested in the city clusters) among the parameters
    adj = n / (n - 1) * (n * t - 1) / (n * t - k - t)
    vcov = adj * bread @ meat @ bread
    return beta, np.sqrt(np.diag(vcov))


def _describe(x: np.ndarray) -> dict[str, float]:
    x = np.asarray(x, dtype=float).ravel()
    return {"mean": float(x.mean()), "sd": float(x.std(ddof=1)), "min": float(x.min()), "max": float(x.max()),
            "skewness": float(stats.skew(x))}


# ---------------------------------------------------------------------------------------------------
def generate_demo(seed: int = DEFAULT_SEED, geography: Any = None) -> DemoData:
    """Generate the synthetic demo panel for ``seed`` over the bundled (or the given) geography.

    ``geography``: any object with ``.cities`` (indexed by adcode; name_zh, province, lon, lat,
    dist_hangzhou_km) and ``.weights`` (SpatialWeights); default ``load_geography()``.
    """
    geo = _load_geo(geography)
    # One generator, drawn from step by step in the order of the module notes (1-6): the steps must run
    # in this order, or the bundled file changes.
    rng = np.random.default_rng(seed)
    s = _setting(geo)
    d = _development(s, rng)
    total, digital, lq_arr = _employment(s, d, rng)
    controls = _controls(s, d, rng)
    split = _splitters(s, d, rng)
    slope_mult = _slope_multiplier(split)
    eta, mech_cols = _mechanisms(s, d, lq_arr, controls, rng)
    y, mu, nu, slope_i = _latent_nqp(s, d, lq_arr, controls, eta, slope_mult, rng)
    # step 6: each indicator's multiplicative noise (a city effect, then city-year noise), then y -> indicators
    pi = PARAMS["indicators"]
    noise = {name: np.exp(pi["spec"][name]["city_sd"] * rng.standard_normal((s.n, 1))
                          + pi["spec"][name]["noise_sd"] * rng.standard_normal((s.n, s.t_len)))
             for name in NQP_INDICATOR_NAMES}
    raw = _indicators(y, noise, rounded=True)
    panel = _panel(s, raw, digital, total, controls, mech_cols, split)

    latent = {"y": y, "noise": noise, "w": s.wd, "slope_i": slope_i, "lq": lq_arr, "eta": eta,
              "slope_mult": slope_mult, "mu": mu, "nu": nu, "d": d}
    truth = _truth(seed, panel, latent, geo)
    public = {"y": y, **{f"eta_{k}": v for k, v in eta.items()}, "mu": mu, "nu": nu, "slope": slope_i}
    return DemoData(panel=panel, truth=truth, latent=public)


@dataclass(frozen=True)
class _Setting:
    """What every generating step shares: the cities and years, and arrays derived from the geography."""

    ids: tuple[str, ...]
    cities: pd.DataFrame
    n: int
    t_len: int
    tc: np.ndarray  # centred year, 2013 -> -4.5
    w: sp.csr_array  # row-standardised contiguity
    wd: np.ndarray  # the same, dense
    dist: np.ndarray  # km to Hangzhou
    lon: np.ndarray
    capital: np.ndarray  # provincial capitals and the municipalities
    municipality: np.ndarray
    major: np.ndarray  # MAJOR_CITIES
    tier1: np.ndarray  # TIER1_CITIES


def _setting(geo: _Geo) -> _Setting:
    ids = geo.ids
    t_len = len(YEARS)
    w = geo.weights.row_standardised
    return _Setting(ids=ids, cities=geo.cities, n=len(ids), t_len=t_len, tc=np.arange(t_len) - (t_len - 1) / 2.0,
                    w=w, wd=w.toarray(), dist=geo.cities["dist_hangzhou_km"].to_numpy(dtype=float),
                    lon=geo.cities["lon"].to_numpy(dtype=float),
                    capital=np.array([c[2:4] == "01" for c in ids]) | np.isin(ids, MUNICIPALITY_ADCODES),
                    municipality=np.isin(ids, MUNICIPALITY_ADCODES), major=np.isin(ids, MAJOR_CITIES),
                    tier1=np.isin(ids, TIER1_CITIES))


def _development(s: _Setting, rng: np.random.Generator) -> np.ndarray:
    """Step 1: the development latent d per city (standardised, soft-capped)."""
    pd_ = PARAMS["development"]
    field_d = _sar_field(s.w, pd_["sar_lambda"], rng)
    d_raw = (pd_["w_east"] * _standardise(s.lon) - pd_["w_hangzhou"] * _standardise(s.dist)
             + pd_["w_field"] * field_d + pd_["capital_bonus"] * s.capital
             + pd_["municipality_bonus"] * s.municipality + pd_["major_bonus"] * s.major
             + pd_["tier1_bonus"] * s.tier1 + pd_["noise_sd"] * rng.standard_normal(s.n))
    # soft cap of the tails, so the leading cities are comparable and none leads every indicator
    return pd_["cap"] * np.tanh(_standardise(d_raw) / pd_["cap"])


def _employment(s: _Setting, d: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 2: (total employment, digital employment, their location quotient), each (city, year)."""
    n, t_len, tc = s.n, s.t_len, s.tc
    pe = PARAMS["employment"]
    log_e = (pe["log_median"] + pe["d_slope"] * d[:, None] + pe["city_sd"] * rng.standard_normal((n, 1))
             + pe["growth"] * tc[None, :] + pe["shock_sd"] * rng.standard_normal((n, t_len)))
    total = np.exp(log_e)
    ps = PARAMS["digital_share"]
    national = np.exp(np.linspace(np.log(ps["national_2013"]), np.log(ps["national_2022"]), t_len))
    field_s = _sar_field(s.w, PARAMS["development"]["sar_lambda"], rng)
    c_share = (ps["d_slope"] * d + ps["city_sd"] * rng.standard_normal(n) + ps["field_slope"] * field_s)
    # the distance x year slope is the instrument's first stage
    trend = ps["gamma_distance_year"] * _standardise(s.dist) + ps["trend_sd"] * rng.standard_normal(n)
    shocks = np.empty((n, t_len))
    shocks[:, 0] = rng.standard_normal(n) * ps["shock_sd"] / np.sqrt(1 - ps["ar_phi"] ** 2)
    for t in range(1, t_len):
        shocks[:, t] = ps["ar_phi"] * shocks[:, t - 1] + ps["shock_sd"] * rng.standard_normal(n)
    log_share = np.log(national)[None, :] + c_share[:, None] + trend[:, None] * tc[None, :] + shocks
    share = np.minimum(np.exp(log_share), 0.5)
    digital = share * total
    index = pd.MultiIndex.from_product([list(s.ids), list(YEARS)], names=[CITY, YEAR])
    lq = location_quotient(pd.Series(digital.ravel(), index=index), pd.Series(total.ravel(), index=index))
    return total, digital, lq.to_numpy().reshape(n, t_len)


def _lognormal_panel(s: _Setting, d: np.ndarray, spec: dict, rng: np.random.Generator,
                     extra: np.ndarray | float = 0.0) -> np.ndarray:
    """exp(level + d slope + city noise + growth/trend + extra + shock), drawing city noise then shocks."""
    return np.exp(spec["log_median"] + spec["d_slope"] * d[:, None] + spec["city_sd"] * rng.standard_normal((s.n, 1))
                  + spec.get("growth", 0.0) * s.tc[None, :] + spec.get("trend", 0.0) * s.tc[None, :] + extra
                  + spec["shock_sd"] * rng.standard_normal((s.n, s.t_len)))


def _linear_panel(s: _Setting, d: np.ndarray, level: float, spec: dict, rng: np.random.Generator) -> np.ndarray:
    """level + d slope + city noise + trend + shock on the generating scale, drawing city noise then shocks."""
    return (level + spec["d_slope"] * d[:, None] + spec["city_sd"] * rng.standard_normal((s.n, 1))
            + spec["trend"] * s.tc[None, :] + spec["shock_sd"] * rng.standard_normal((s.n, s.t_len)))


def _controls(s: _Setting, d: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Step 3a: the six controls, (city, year) each, drawn in the order of ``CONTROLS``."""
    pc = PARAMS["controls"]
    controls: dict[str, np.ndarray] = {}
    controls["develop"] = _lognormal_panel(s, d, pc["develop"], rng)
    controls["unemployed"] = np.minimum(_lognormal_panel(s, d, pc["unemployed"], rng), pc["unemployed"]["max"])
    controls["finance"] = _lognormal_panel(s, d, pc["finance"], rng)
    controls["human"] = np.minimum(_lognormal_panel(s, d, pc["human"], rng,
                                                    pc["human"]["capital_bonus"] * s.capital[:, None]),
                                   pc["human"]["max"])
    controls["traffic"] = _lognormal_panel(s, d, pc["traffic"], rng)
    sp_ = pc["support"]
    controls["support"] = np.clip(_linear_panel(s, d, sp_["mean"], sp_, rng), sp_["min"], sp_["max"])
    return controls


def _splitters(s: _Setting, d: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Step 3b: the five heterogeneity splitters, (city, year) each."""
    psp = PARAMS["splitters"]
    split: dict[str, np.ndarray] = {}
    split["digital_support"] = _lognormal_panel(s, d, psp["digital_support"], rng)
    split["nqp_emphasis"] = _lognormal_panel(s, d, psp["nqp_emphasis"], rng)
    m = psp["marketization"]
    split["marketization"] = np.clip(_linear_panel(s, d, m["mean"], m, rng), 0.5, 12.5)
    m = psp["market_integration"]
    split["market_integration"] = 1.0 / (1.0 + np.exp(-_linear_panel(s, d, m["logit_mean"], m, rng)))
    split["gov_dominance"] = _lognormal_panel(s, d, psp["gov_dominance"], rng)
    return split


def _slope_multiplier(split: dict[str, np.ndarray]) -> np.ndarray:
    """Slope heterogeneity from the city means of the splitters (gov_dominance reversed), mean 1.

    z: the standardised city mean on the generating scale (log / logit / level), soft-capped at +-2.
    """
    hetero = np.zeros(next(iter(split.values())).shape[0])
    for s, h in PARAMS["heterogeneity"].items():
        level = split[s].mean(axis=1)
        if s == "market_integration":
            level = np.log(level / (1.0 - level))
        elif s != "marketization":
            level = np.log(level)
        z = 2.0 * np.tanh(_standardise(level) / 2.0)
        hetero += h * (-z if s == "gov_dominance" else z)
    slope_mult = np.exp(hetero)
    slope_mult /= slope_mult.mean()
    return slope_mult


def _mechanisms(s: _Setting, d: np.ndarray, lq_arr: np.ndarray, controls: dict[str, np.ndarray],
                rng: np.random.Generator) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Step 4: (latent mechanisms eta_k, their two measured indicators each); all eta are drawn first."""
    n, t_len = s.n, s.t_len
    ctrl_std = {c: (v - v.mean()) / v.std() for c, v in controls.items()}
    eta: dict[str, np.ndarray] = {}
    for k, spec in PARAMS["mechanisms"].items():
        e = (spec["a"] * lq_arr + spec["d_slope"] * d[:, None] + spec["city_sd"] * rng.standard_normal((n, 1))
             + spec["trend"] * s.tc[None, :] + spec["noise_sd"] * rng.standard_normal((n, t_len)))
        for c, sl in spec["controls"].items():
            e = e + sl * ctrl_std[c]
        eta[k] = e
    mech_cols: dict[str, np.ndarray] = {}
    for k, (c1, c2) in MECHANISMS.items():
        for c in (c1, c2):
            spec = PARAMS["measurement"][c]
            lin = spec["intercept"] + spec["loading"] * eta[k]
            if spec["link"] == "poisson":
                mech_cols[c] = rng.poisson(np.exp(lin)).astype(float)
            else:
                mech_cols[c] = np.exp(lin + spec["noise_sd"] * rng.standard_normal((n, t_len)))
    return eta, mech_cols


def _latent_nqp(s: _Setting, d: np.ndarray, lq_arr: np.ndarray, controls: dict[str, np.ndarray],
                eta: dict[str, np.ndarray], slope_mult: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Step 5: the latent NQP y from the spatial Durbin process with two-way effects; returns
    (y, mu city effects, nu year effects, city slopes b_i)."""
    n, t_len = s.n, s.t_len
    pn = PARAMS["nqp"]
    # the first-tier cities get a common level (with small noise), so none of them leads every indicator
    zmu = rng.standard_normal(n)
    tier1_level = np.array([pn["mu_tier1"].get(c, 0.0) for c in s.ids])
    mu = np.where(s.tier1, tier1_level * np.exp(pn["mu_tier1_noise_sd"] * zmu),
                  pn["mu_scale"] * np.exp(pn["mu_d_slope"] * d + pn["mu_noise_sd"] * zmu))
    nu = np.linspace(pn["nu_2013"], pn["nu_2022"], t_len) + pn["year_shock_sd"] * rng.standard_normal(t_len)
    w_lq = s.wd @ lq_arr
    slope_i = pn["b"] * slope_mult
    z = (slope_i[:, None] * lq_arr + pn["theta"] * (w_lq - w_lq.mean())
         + mu[:, None] + nu[None, :] + pn["e_sd"] * rng.standard_normal((n, t_len)))
    for c, g in pn["g"].items():
        z = z + g * (controls[c] - controls[c].mean())
    for k, bk in pn["b_k"].items():
        z = z + bk * (eta[k] - eta[k].mean())
    y = np.linalg.solve(np.eye(n) - pn["rho"] * s.wd, z)
    return y, mu, nu, slope_i


def _flat(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=float).ravel()


def _panel(s: _Setting, raw: dict[str, np.ndarray], digital: np.ndarray, total: np.ndarray,
           controls: dict[str, np.ndarray], mech_cols: dict[str, np.ndarray],
           split: dict[str, np.ndarray]) -> pd.DataFrame:
    """The long panel, one row per city-year, in the column order of the bundled file."""
    t_len = s.t_len
    cols: dict[str, Any] = {
        CITY: np.repeat(np.array(s.ids, dtype=object), t_len),
        "city_name": np.repeat(s.cities["name_zh"].to_numpy(dtype=object), t_len),
        "province": np.repeat(s.cities["province"].to_numpy(dtype=object), t_len),
        YEAR: np.tile(np.array(YEARS, dtype=np.int64), s.n),
    }
    for name in NQP_INDICATOR_NAMES:
        cols[name] = _flat(raw[name])
    cols[DIGITAL_EMPLOYMENT] = _flat(digital)
    cols[TOTAL_EMPLOYMENT] = _flat(total)
    for c in CONTROLS:
        cols[c] = _flat(controls[c])
    for c1, c2 in MECHANISMS.values():
        cols[c1] = _flat(mech_cols[c1])
        cols[c2] = _flat(mech_cols[c2])
    for c in SPLITTERS:
        cols[c] = _flat(split[c])
    cols[DIST_HANGZHOU] = np.repeat(s.dist, t_len)
    return pd.DataFrame(cols)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    return x


def computed_measures(panel: pd.DataFrame) -> pd.DataFrame:
    """The index (entropy weights over the 16 indicators) and the LQ, indexed by (city, year)."""
    frame = panel.set_index([CITY, YEAR]).sort_index()
    nqp = entropy_index(frame, list(NQP_INDICATOR_NAMES)).index
    lq = location_quotient(frame[DIGITAL_EMPLOYMENT], frame[TOTAL_EMPLOYMENT])
    return pd.concat([nqp, lq], axis=1)


def calibration(panel: pd.DataFrame) -> dict[str, Any]:
    """Table 2 replica of the computed index and LQ (and controls), and the two-way FE baseline."""
    frame = panel.set_index([CITY, YEAR]).sort_index()
    meas = computed_measures(panel)
    n = frame.index.get_level_values(CITY).nunique()
    t = frame.index.get_level_values(YEAR).nunique()
    table2 = {NQP: _describe(meas[NQP]), AGGLOMERATION: _describe(meas[AGGLOMERATION])}
    for c in CONTROLS:
        table2[c] = _describe(frame[c])
    y = meas[NQP].to_numpy().reshape(n, t)
    x = np.stack([meas[AGGLOMERATION].to_numpy().reshape(n, t)]
                 + [frame[c].to_numpy().reshape(n, t) for c in CONTROLS], axis=-1)
    beta, se = twfe(y, x)
    return {
        "table2": table2,
        "table2_paper": {k: dict(zip(("mean", "sd", "min", "max"), v)) for k, v in TABLE2.items()},
        "twfe": {"formula": "nqp ~ agglomeration + " + " + ".join(CONTROLS) + " | city + year",
                 "vcov": "CRV1 by city, small-sample factor G/(G-1) (N-1)/(N-k-T)",
                 "estimate": float(beta[0]), "se": float(se[0]), "t": float(beta[0] / se[0]),
                 "controls": {c: {"estimate": float(b), "se": float(s)}
                              for c, b, s in zip(CONTROLS, beta[1:], se[1:])},
                 "paper": {"estimate": PAPER_TWFE[0], "se": PAPER_TWFE[1]}},
    }


def _index_effects(panel: pd.DataFrame, latent: dict) -> dict[str, Any]:
    """Marginal effects of agglomeration on the computed index (LeSage-Pace direct / indirect / total).

    The index is a fixed linear map of the raw indicators (weights, minima and ranges of this panel), and
    each raw indicator a function of its own city-year's y, so d index_it / d y_it = f'_it (numerical,
    noise held fixed, reporting rounding skipped). An LQ change dx moves y by S dx with
    S = (I - rho W)^-1 (diag(b_i + sum_k b_k a_k) + theta W); the effects are averages over city-years of
    the diagonal (direct) and of the row sums (total) of diag(f'_t) S.
    """
    frame = panel[list(NQP_INDICATOR_NAMES)].to_numpy(dtype=float)
    weights, _ = entropy_weights(frame)
    lo, span = frame.min(axis=0), frame.max(axis=0) - frame.min(axis=0)
    y = latent["y"]

    def index_of(yy: np.ndarray) -> np.ndarray:
        raw = _indicators(yy, latent["noise"], rounded=False)
        return sum(w * (raw[c] - l) / s_ for c, w, l, s_ in zip(NQP_INDICATOR_NAMES, weights, lo, span))

    eps = 1e-7
    fprime = (index_of(y + eps) - index_of(y - eps)) / (2 * eps)
    pn, mech = PARAMS["nqp"], PARAMS["mechanisms"]
    mediated = sum(pn["b_k"][k] * mech[k]["a"] for k in mech)
    n = y.shape[0]
    inv = np.linalg.inv(np.eye(n) - pn["rho"] * latent["w"])
    out: dict[str, Any] = {}
    for label, local in (("total_path", latent["slope_i"] + mediated), ("excluding_mediators", latent["slope_i"])):
        s_mat = inv @ (np.diag(local) + pn["theta"] * latent["w"])
        direct = float(np.mean(fprime * np.diag(s_mat)[:, None]))
        total = float(np.mean(fprime * s_mat.sum(axis=1)[:, None]))
        out[label] = {"direct": direct, "indirect": total - direct, "total": total}
    # the same, weighted as a within (FE) estimator weights city-years: by the squared two-way demeaned LQ
    vw = within(latent["lq"], axes=(1, 0)) ** 2
    vw = vw / vw.sum()
    s_mat = inv @ (np.diag(latent["slope_i"] + mediated) + pn["theta"] * latent["w"])
    out["fe_weighted_total_path"] = {"direct": float(np.sum(vw * fprime * np.diag(s_mat)[:, None])),
                                     "total": float(np.sum(vw * fprime * s_mat.sum(axis=1)[:, None]))}
    out["fe_weighted_local_slope_plus_mediated_index"] = float(np.sum(vw * fprime * (latent["slope_i"] + mediated)[:, None]))
    out["mean_dindex_dy"] = float(fprime.mean())
    out["local_slope_index"] = float(np.mean(fprime * latent["slope_i"][:, None]))
    out["local_slope_plus_mediated_index"] = float(np.mean(fprime * (latent["slope_i"] + mediated)[:, None]))
    out["theta_index"] = float(np.mean(fprime) * pn["theta"])
    return out


def _truth(seed: int, panel: pd.DataFrame, latent: dict, geo: _Geo) -> dict[str, Any]:
    meas = computed_measures(panel)
    n, t = latent["y"].shape
    idx = meas[NQP].to_numpy().reshape(n, t)
    yv = latent["y"].ravel()
    slope, intercept, r, _, _ = stats.linregress(yv, idx.ravel())
    # within (two-way demeaned) mapping: the one relevant to the FE slopes
    wy = within(latent["y"], axes=(1, 0)).ravel()
    wi = within(idx, axes=(1, 0)).ravel()
    kappa_within = float(wy @ wi / (wy @ wy))
    pn = PARAMS["nqp"]
    lo, hi = geo.weights.rho_bounds
    mech = PARAMS["mechanisms"]
    indirect_mech = sum(pn["b_k"][k] * mech[k]["a"] for k in mech)
    truth: dict[str, Any] = {
        "banner": SYNTHETIC_BANNER,
        "generator": "bayesnqp.demo.generate_demo",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "n_cities": n, "years": list(YEARS),
        "spatial_weights": {"kind": "contiguity, row-standardised; islands keep a zero row",
                            "n_islands": len(geo.weights.islands), "rho_bounds": [lo, hi]},
        "parameters": PARAMS,
        "descriptions": _DESCRIPTIONS,
        "sdm": {
            "equation": "y_t = (I - rho W)^-1 (b_i LQ_t + theta W LQ_t + X_t g + sum_k b_k eta_kt + mu + nu_t + e_t)",
            "rho": pn["rho"], "b_mean": pn["b"], "theta": pn["theta"], "g": pn["g"], "b_k": pn["b_k"],
            "slope_multiplier_sd": float(latent["slope_mult"].std()),
            "mediated_effect": float(indirect_mech),
            "total_local_effect": float(pn["b"] + indirect_mech),
            "note": ("rho lies inside (1/lambda_min, 1) of the row-standardised W: negative NQP spillover; "
                     "theta < 0: neighbours' agglomeration lowers own NQP."),
        },
        "mechanisms": {k: {"a": mech[k]["a"],
                           "indicators": {c: PARAMS["measurement"][c] for c in MECHANISMS[k]}}
                       for k in MECHANISMS},
        "index_mapping": {
            "regression": "computed index on latent y, pooled OLS",
            "kappa": float(slope), "intercept": float(intercept), "r2": float(r ** 2),
            "kappa_within": kappa_within,
            "note": "kappa_within: slope after two-way demeaning, the scale the FE estimators see",
        },
        "index_scale_truth": {
            "b_index": pn["b"] * slope, "theta_index": pn["theta"] * slope,
            "b_k_index": {k: v * slope for k, v in pn["b_k"].items()},
            "g_index": {k: v * slope for k, v in pn["g"].items()},
            "mediated_effect_index": indirect_mech * slope,
            "total_local_effect_index": (pn["b"] + indirect_mech) * slope,
            "rho": pn["rho"],
        },
        "index_effects": _index_effects(panel, latent),
        "calibration": calibration(panel),
    }
    return _jsonable(truth)


_DESCRIPTIONS: dict[str, str] = {
    "development": "city development latent d: w_east*z(lon) - w_hangzhou*z(dist) + w_field*SAR(sar_lambda) "
                   "+ bonuses for provincial capitals, municipalities, MAJOR_CITIES, TIER1_CITIES + noise; "
                   "standardised, then soft-capped: cap*tanh(z/cap)",
    "employment": "log total employment (10k persons) = log_median + d_slope*d + city noise + growth*(t-2017.5) + shock",
    "digital_share": "log digital share = log national_t + d_slope*d + city noise + field_slope*SAR + "
                     "(gamma_distance_year*z(dist) + trend noise)*(t-2017.5) + AR(1) shock; LQ computed by eq. 3",
    "controls": "log-normal city-year panels (support: normal, clipped) with a d slope, city noise, growth and shocks",
    "splitters": "city traits with small trends and shocks: digital_support and nqp_emphasis (term counts per "
                 "government work report), marketization (index), market_integration (0-1), gov_dominance "
                 "(fiscal spending / GDP)",
    "heterogeneity": "b_i = b * exp(sum_s h_s z_s(city mean of splitter s), gov_dominance reversed), renormalised to mean 1",
    "mechanisms": "eta_k = a*LQ + d_slope*d + city noise + trend*(t-2017.5) + sum s_c * z(control_c) + noise",
    "measurement": "log link: x = exp(intercept + loading*eta + noise); poisson: x ~ Poisson(exp(intercept + loading*eta))",
    "nqp": "SDM for latent y (rho, b = mean of b_i, theta, g, b_k); mu_i = mu_scale*exp(mu_d_slope*d + noise), "
           "first-tier cities mu_tier1*exp(small noise); nu_t linear from nu_2013 to nu_2022 + shocks; e ~ N(0, e_sd); "
           "regressors centred at their panel means",
    "indicators": "x = base + scale*softplus_h(y+offset)^power*exp(m_ij + eps); rates 100*(1-exp(-(r0+r1*softplus)*exp(m+eps))); "
                  "counts rounded",
}


def write_demo(path: Path, seed: int = DEFAULT_SEED, geography: Any = None) -> None:
    """Write the demo CSV at ``path`` and ``truth.json`` beside it (each atomically: temp file + rename)."""
    path = Path(path)
    demo = generate_demo(seed=seed, geography=geography)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, csv_text(demo.panel))
    _atomic_write(path.with_name("truth.json"), json.dumps(demo.truth, indent=2, ensure_ascii=False) + "\n")


def csv_text(panel: pd.DataFrame) -> str:
    """The CSV form of a demo panel (no province column; 8 significant digits)."""
    return panel.drop(columns=["province"]).to_csv(index=False, float_format="%.8g", lineterminator="\n")


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a bundled data file is world-readable
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_demo(path: Path | None = None) -> pd.DataFrame:
    """The bundled demo CSV (adcodes kept as strings)."""
    from .paths import bundled

    path = Path(path) if path is not None else bundled("demo") / "demo_panel.csv"
    return pd.read_csv(path, dtype={CITY: str})
