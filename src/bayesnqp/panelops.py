"""Panel operations, numpy only: the two-way within transformation, reshaping between the two layouts of a
balanced panel, and the median split of cities. Frames and validation stay with the callers (thin pandas
wrappers on top); every copy that used to live beside a model or an oracle now calls these.

Layouts of a balanced panel of n regions and T years:
* region-major ``(n, T, ...)`` (the Bayesian spatial models, the demo generator, the residual PPC);
* year-major ``(T, n, ...)``, stacked as ``T * n`` rows (the ML spatial oracles: one cross-section after
  another, as spreg stacks them).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


# ------------------------------------------------------------------------------------------------
# two-way within transformation
def within(x: np.ndarray, axes: Sequence[int] = (0, 1)) -> np.ndarray:
    """Two-way within transformation of a balanced array over its two panel ``axes`` (any layout):
    x - mean over axes[0] - mean over axes[1] + the grand mean, subtracted in that order (the order only
    moves the last bit; callers keep the one they had so their numbers do not change)."""
    a, b = axes
    return (x - x.mean(axis=a, keepdims=True) - x.mean(axis=b, keepdims=True)
            + x.mean(axis=(a, b), keepdims=True))


def within_stacked(stacked: np.ndarray, n: int, t: int) -> np.ndarray:
    """``within`` of a year-major stacked array (T n,) or (T n, k)."""
    return within(stacked.reshape((t, n) + stacked.shape[1:])).reshape(stacked.shape)


def city_demean_stacked(stacked: np.ndarray, n: int, t: int) -> np.ndarray:
    """Subtract each region's time mean from a year-major stacked array (T n,) or (T n, k)."""
    a = stacked.reshape((t, n) + stacked.shape[1:])
    return (a - a.mean(axis=0, keepdims=True)).reshape(stacked.shape)


def _group_demean(values: np.ndarray, codes: np.ndarray, n_groups: int) -> np.ndarray:
    sums = np.zeros((n_groups, values.shape[1]))
    np.add.at(sums, codes, values)
    counts = np.bincount(codes, minlength=n_groups)[:, None]
    return values - (sums / counts)[codes]


def two_way_within(values: np.ndarray, city_codes: np.ndarray, year_codes: np.ndarray,
                   *, tol: float = 1e-13, max_iter: int = 10_000) -> np.ndarray:
    """Residuals of ``values`` (rows, p) on city and year dummies, by alternating projections: any
    (connected) panel, balanced or not. Column means removed first; stops when the city means left are
    below ``tol`` times the largest centred value.

    On a balanced panel one sweep is exact; on an unbalanced one the sweeps converge to the projection.
    """
    values = np.asarray(values, dtype=float)
    n_city, n_year = int(city_codes.max()) + 1, int(year_codes.max()) + 1
    out = values - values.mean(axis=0)
    scale = max(float(np.abs(out).max()), 1e-300)
    for _ in range(max_iter):
        out = _group_demean(out, city_codes, n_city)
        out = _group_demean(out, year_codes, n_year)
        # year means are now exactly zero; stop when the city means are too.
        sums = np.zeros((n_city, out.shape[1]))
        np.add.at(sums, city_codes, out)
        if np.abs(sums / np.bincount(city_codes)[:, None]).max() <= tol * scale:
            return out
    raise RuntimeError("two-way demeaning did not converge (is the panel connected?)")


def two_way_within_uncentred(values: np.ndarray, city_idx: np.ndarray, year_idx: np.ndarray, *,
                             tol: float = 1e-13, max_iter: int = 10_000) -> np.ndarray:
    """The same projection as ``two_way_within`` without removing the column means first, stopping when
    both the city means left and the year means just removed are below ``tol`` times the largest absolute
    value (at least 1). The two agree to ``tol``; the IV model keeps this one (its data, and so its
    posterior, stay as they were), the mediation model the other."""
    x = np.array(values, dtype=float, copy=True).reshape(len(city_idx), -1)
    scale = np.maximum(np.abs(x).max(axis=0), 1.0)
    nc, nt = city_idx.max() + 1, year_idx.max() + 1
    cc = np.bincount(city_idx, minlength=nc)[:, None]
    ct = np.bincount(year_idx, minlength=nt)[:, None]
    for _ in range(max_iter):
        sums = np.zeros((nc, x.shape[1]))
        np.add.at(sums, city_idx, x)
        x -= (sums / cc)[city_idx]
        sums = np.zeros((nt, x.shape[1]))
        np.add.at(sums, year_idx, x)
        year_means = sums / ct
        x -= year_means[year_idx]
        sums = np.zeros((nc, x.shape[1]))
        np.add.at(sums, city_idx, x)
        if max(np.abs(sums / cc).max(), np.abs(year_means).max()) < tol * scale.max():
            return x
    raise RuntimeError("two-way demeaning did not converge")


# ------------------------------------------------------------------------------------------------
# reshaping between (n, T) and (T, n)
def region_major(rows: np.ndarray, n: int, t: int) -> np.ndarray:
    """Rows sorted by (region, year) -> (n, T, ...)."""
    return rows.reshape((n, t) + rows.shape[1:])


def year_major(region_rows: np.ndarray, n: int, t: int) -> np.ndarray:
    """Rows sorted by (region, year), one column -> (T, n) (a contiguous copy)."""
    return region_rows.reshape(n, t).T.copy()


# ------------------------------------------------------------------------------------------------
# group splits
def median_split(city_means: np.ndarray) -> tuple[np.ndarray, float]:
    """High / low by the median of the cities' means: True where a city's mean lies above it (a city at
    the median goes low, as the paper's "above the median" is high). Returns (mask, median)."""
    means = np.asarray(city_means, dtype=float)
    med = float(np.median(means))
    return means > med, med
