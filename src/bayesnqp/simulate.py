"""Panels with known truth for calibration studies and recovery tests (numpy and pandas only).

``calibration_panel`` draws the four data-generating processes of the calibration study, each with city
effects correlated with the treatment (so only a within-type estimator is unbiased):

* ``iid``: iid Normal errors given the city and year effects;
* ``ar1_scales``: within-city AR(1) errors (phi = 0.5) with log-normal city error scales (sd of log 0.5);
* ``random_slopes``: city slopes beta_i ~ Normal(beta, 0.5), iid errors (the truth is the mean slope);
* ``groups``: two halves of the cities with slopes 0.5 and 1.5 and different treatment trends (0.05 and
  0.4 per year), the case in which a two-way deviation of a group-slope term is biased.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np
import pandas as pd

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
