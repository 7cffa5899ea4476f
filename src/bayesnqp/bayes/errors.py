"""Error structures for the Normal panel models with city effects integrated out: within-city AR(1)
errors, city-specific error scales and random city slopes on the key regressor.

Why. With iid errors given the effects, the posterior sd of the treatment slope was 0.13-0.25 of the
city-clustered SE on the demo: the residuals are serially correlated within a city (lag-1 +0.12 where iid
gives -0.11), their sd varies 3.5x across cities and the slopes vary by city. Each of these makes the iid
posterior overconfident about the mean slope. The options here model them instead of assuming them away.

The model for city i's T_i rows (sorted by year):

    y_i = m_i + 1 u_i + g_i b_i + e_i,   u_i flat (a fixed effect),  b_i ~ N(0, omega^2),
    e_i ~ N(0, s_i^2 R_i(phi)),          R_i[s, t] = phi^|year_s - year_t|,  log s_i ~ N(log sigma, eta^2)

m_i holds the mean without a city effect, g_i the city deviation of the key regressor (so the random
slope is partially pooled around the common slope). u_i is integrated out under a flat prior and b_i
under its Normal prior: what remains is the exact density of each city's within-city contrasts, so the
model targets the two-way fixed-effects slope like the within estimator, with the error covariance
modelled. (With a Normal random effect u_i ~ N(c_i, sigma_city^2) instead, a near-unit-root AR(1) and the
city effect explain the same within-city correlation over ten years: on the demo the chains split between
phi ~ 0.3 and phi ~ 1 with sigma_city ~ 0, r_hat 1.7. The flat-prior limit has no such ridge.)
R_i^-1 is tridiagonal (AR(1) is Markov, gaps in the years included: the lag-d correlation is phi^d), so
with the whitening L_i^-1 (x_1, (x_t - rho_t x_prev) / sqrt(1 - rho_t^2)) and the Woodbury identity for
U_i = [1, g_i] every term is a per-city sum of products of whitened vectors and a 2x2 solve in closed
form (the flat prior is the limit sigma_city -> infinity, less the constant log sigma_city). The cost is
O(rows) per gradient and no city effect is sampled; the city scales add one standard-Normal parameter
per city.

The per-city log-density is spread evenly over that city's rows, so the pointwise entries sum (per city)
to the city's density of its within-city contrasts: LOO on city sums is leave-one-city-out (compare
models in that same currency, see ``panel.within_city_loglik_iid``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytensor.tensor as pt

ERROR_OPTIONS: tuple[str, ...] = ("ar1", "city_scales", "random_slope")


@dataclass(frozen=True)
class ErrorStructure:
    """Which error terms a model carries (all False is the iid model)."""

    ar1: bool = False
    city_scales: bool = False
    random_slope: bool = False

    @classmethod
    def from_option(cls, value: Any, spec_id: str) -> "ErrorStructure":
        """From ``options.errors`` of a spec: a list drawn from ERROR_OPTIONS, or "iid" / absent."""
        if value is None or value == "iid" or value == []:
            return cls()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{spec_id}: options.errors must be 'iid' or a list drawn from {ERROR_OPTIONS}")
        unknown = sorted(set(value) - set(ERROR_OPTIONS))
        if unknown:
            raise ValueError(f"{spec_id}: options.errors has unknown entries {unknown}; "
                             f"choose from {ERROR_OPTIONS}")
        return cls(ar1="ar1" in value, city_scales="city_scales" in value, random_slope="random_slope" in value)

    @property
    def iid(self) -> bool:
        return not (self.ar1 or self.city_scales or self.random_slope)

    def label(self) -> str:
        parts = [name for name, on in zip(ERROR_OPTIONS, (self.ar1, self.city_scales, self.random_slope)) if on]
        return "+".join(parts) if parts else "iid"


@dataclass(frozen=True)
class RowOrder:
    """Where each row's predecessor in its city sits (rows sorted by city, then year): ``prev`` (own index
    for a city's first row), ``first`` (1.0 on first rows) and ``gap`` (years since the predecessor)."""

    prev: np.ndarray
    first: np.ndarray
    gap: np.ndarray


def row_order(city_idx: np.ndarray, years: np.ndarray) -> RowOrder:
    """Predecessor structure of a panel whose rows are sorted by city and then year."""
    city_idx = np.asarray(city_idx)
    years = np.asarray(years, dtype=float)
    n = len(city_idx)
    same = np.r_[False, city_idx[1:] == city_idx[:-1]]
    if np.any(same & (np.r_[np.inf, np.diff(years)] <= 0)):
        raise ValueError("rows must be sorted by city and then strictly by year")
    prev = np.where(same, np.arange(n) - 1, np.arange(n))
    gap = np.where(same, years - years[prev], 1.0)
    return RowOrder(prev=prev, first=(~same).astype(float), gap=gap)


def _whiten(v, rho_row, prev):
    """L^-1 v row by row for unit-variance AR(1): v_t on a first row, else (v_t - rho v_prev) / sqrt(1 - rho^2)."""
    return (v - rho_row * v[prev]) / pt.sqrt(1.0 - rho_row ** 2)


def structured_city_logp(value, mean, phi, scale_row, omega, g, city_idx, counts, prev, first, gap):
    """Log-density of y with the city effects integrated out under a flat prior (fixed effects) and the
    random slopes under Normal(0, omega^2) (see the module notes).

    ``mean``: the mean per row without a city effect (data scale); ``scale_row``: s_i per row; ``phi`` the
    AR(1) coefficient (0 for none); ``omega`` the random-slope sd on ``g`` (0 for none). Returns each
    city's log-density spread evenly over its rows. With B = U' V_e^-1 U for U = [1, g] and the whitened
    vectors f = L^-1 1 / s, h = L^-1 g / s, a = L^-1 r / s:
    log p_i = -1/2 [(T_i - 1) log 2 pi + log|R_i| + 2 T_i log s_i + log q_i + a'a - c_i] with
    q_i = f'f (1 + omega^2 h'h) - omega^2 (f'h)^2 and c_i the Woodbury correction; a city seen once
    contributes 0, as in the within estimator.
    """
    # lag-d correlation phi^d; first rows have no predecessor (rho 0)
    rho_row = (1.0 - first) * pt.sign(phi) ** gap * pt.abs(phi) ** gap

    def city_sum(v):
        return pt.zeros_like(counts)[city_idx].inc(v)

    a = _whiten(value - mean, rho_row, prev) / scale_row
    f = _whiten(pt.ones_like(value), rho_row, prev) / scale_row
    h = _whiten(g, rho_row, prev) / scale_row
    aa, ff, hh = city_sum(a * a), city_sum(f * f), city_sum(h * h)
    fh, fa, ha = city_sum(f * h), city_sum(f * a), city_sum(h * a)
    om2 = omega ** 2
    q = ff * (1.0 + om2 * hh) - om2 * fh ** 2
    correction = (fa ** 2 * (1.0 + om2 * hh) + om2 * ff * ha ** 2 - 2.0 * om2 * fh * fa * ha) / q
    log_det = city_sum(pt.log(1.0 - rho_row ** 2)) + 2.0 * city_sum(pt.log(scale_row)) + pt.log(q)
    per_city = -0.5 * ((counts - 1.0) * np.log(2.0 * np.pi) + log_det + aa - correction)
    return (per_city / counts)[city_idx]


def structured_city_random(mean, phi, scale_row, omega, g, city_idx, counts, prev, first, gap,
                           rng=None, size=None):
    """Draws of y given the (flat-prior) city effects at zero: random slopes and AR(1) errors of scale s_i,
    a year at a time. Replicates are compared through within-city statistics only."""
    rng = rng if rng is not None else np.random.default_rng()
    mean = np.asarray(mean, dtype=float)
    city_idx, prev = np.asarray(city_idx), np.asarray(prev)
    first, gap = np.asarray(first), np.asarray(gap)
    b = rng.standard_normal(np.shape(counts)[0]) * omega
    rho = np.where(first > 0, 0.0, np.sign(phi) ** gap * np.abs(phi) ** gap)
    e = rng.standard_normal(mean.shape)
    # rows are sorted by city and year: fill the k-th row of every city at once, k = 1, 2, ...
    position = np.arange(len(prev)) - np.maximum.accumulate(np.where(first > 0, np.arange(len(prev)), 0))
    for k in range(1, int(position.max(initial=0)) + 1):
        rows = position == k
        e[rows] = rho[rows] * e[prev[rows]] + np.sqrt(1.0 - rho[rows] ** 2) * e[rows]
    out = mean + b[city_idx] * np.asarray(g) + np.asarray(scale_row) * e
    return out if size is None else np.broadcast_to(out, size).copy()


def city_sums(values: np.ndarray, city_idx: np.ndarray, n_city: int) -> np.ndarray:
    """Sum the trailing row axis of ``values`` (..., rows) within cities -> (..., n_city): turns the evenly
    spread per-row entries of the marginal models back into per-city log-densities (for city-level LOO)."""
    onehot = np.zeros((len(city_idx), n_city))
    onehot[np.arange(len(city_idx)), city_idx] = 1.0
    return np.asarray(values) @ onehot
