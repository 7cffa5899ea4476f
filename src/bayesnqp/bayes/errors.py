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
models in that same currency, see ``table3.within_city_loglik_iid``). With city scales, the LOO terms
integrate each city's scale innovation out first (``scale_integrated_city_logp``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import pytensor.tensor as pt
from pytensor.gradient import grad_not_implemented, grad_undefined
from pytensor.graph.basic import Apply
from pytensor.graph.op import Op
from pytensor.link.numba.dispatch.basic import register_funcify_default_op_cache_key

from .nutpie_disk_cache import source_salt

ERROR_OPTIONS: tuple[str, ...] = ("ar1", "city_scales", "random_slope")
# the city-scale parameters (``panel_model.structured_errors``): the sd of log city scales and each
# city's standard-Normal innovation
CITY_SCALE_SD, CITY_SCALE_Z = "city_scale_sd", "city_scale_z"


# Families that keep iid errors, and why (a note with each of their results; ARCHITECTURE.md says more).
IID_ONLY_NOTES: dict[str, str] = {
    "iv": ("Errors are iid across city-years: the IV model does not take column (4)'s error options (AR(1), "
           "city error scales, random slopes). Its two equations share one correlated error and the city "
           "effects are removed by the within transformation, so the structured density (one city's T x T "
           "covariance, city effects integrated out) has no two-equation counterpart here; the 2SLS SE "
           "beside it is clustered by city."),
    "mediation": ("Errors are iid across city-years: the latent-mediator model does not take column (4)'s "
                  "error options; its likelihood is over the cross-products of the within-transformed "
                  "indicators, which a per-city error covariance would replace. The Table 4 SEs beside it "
                  "are clustered by city."),
    "car": ("Errors are iid across city-years given the spatial city effects: the CAR models do not take "
            "column (4)'s error options. Their city effects are sampled, or for BYM2 integrated out jointly "
            "in the graph's eigenbasis, which needs iid errors (the spatial prior ties the cities together, so "
            "they cannot be integrated out one city at a time as column (4)'s are), and AR(1) errors would "
            "make the pointwise log-likelihood terms stop being per city-year, the currency of the CAR-vs-SDM "
            "LOO."),
    "province": ("Errors are iid across city-years: this province-slope model does not carry column (4)'s "
                 "error options. With them the demo's province model mixed too slowly (minimum bulk ESS 173 "
                 "of 4,000 draws with all three, 228 with AR(1) and city scales; a province of one city has a "
                 "slope its city's random slope duplicates), so its intervals are iid-based and likely too "
                 "narrow where errors are serially correlated. A spec can turn them on (options.city_effects "
                 "= \"marginal\", options.errors, options.errors_by_loo)."),
    "groups": ("Errors are iid across city-years: this group-slope spec does not carry column (4)'s error "
               "options (the bundled one does), so its intervals are likely too narrow where errors are "
               "serially correlated or their scale varies by city."),
    "sdm": ("Errors are iid across city-years: the SAR/SDM/SEM/SLX models do not take column (4)'s error "
            "options. Their likelihood on two-way within-transformed data carries the Jacobian "
            "(T - 1) log|I - rho W|, which holds for errors independent over time; with AR(1) errors the "
            "time and space filters no longer separate that way."),
}


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

    One fused Op (``StructuredCityLogp``) with a hand-written reverse pass: written as a PyTensor graph
    (``structured_city_logp_graph``, the same density) the seven per-city scatter-adds, three
    predecessor gathers and their transposes cost about 20 indexing kernels per gradient, twice the
    gradient of the iid model; the fused loop is one pass over the rows forward and one back.
    """
    # PyMC hands scalar parameters over padded to the value's rank (shape (1,)): take the one element
    params = pt.stack([pt.as_tensor_variable(phi).flatten()[0],
                       pt.as_tensor_variable(omega).flatten()[0]]).astype("float64")
    return _STRUCTURED_LOGP(pt.as_tensor_variable(value).astype("float64"),
                            pt.as_tensor_variable(mean).astype("float64"), params,
                            pt.as_tensor_variable(scale_row).astype("float64"),
                            pt.as_tensor_variable(g).astype("float64"),
                            pt.as_tensor_variable(city_idx).astype("int64"),
                            pt.as_tensor_variable(counts).astype("float64"),
                            pt.as_tensor_variable(prev).astype("int64"),
                            pt.as_tensor_variable(first).astype("float64"),
                            pt.as_tensor_variable(gap).astype("float64"))


def structured_city_logp_graph(value, mean, phi, scale_row, omega, g, city_idx, counts, prev, first, gap):
    """The same density as ``structured_city_logp`` written as a plain PyTensor graph (automatic
    gradients): the reference the fused Op's hand-written gradient is tested against."""
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


# ---- the fused Op -------------------------------------------------------------------------------------
# Kernels over the rows (sorted by city, then year). Per row t of city c with predecessor p:
#   rho_t = phi^gap_t (0 on a first row), w_t = 1 / (sqrt(1 - rho_t^2) s_t),
#   a_t = (r_t - rho_t r_p) w_t (r = y - mean), f_t = (1 - rho_t) w_t, h_t = (g_t - rho_t g_p) w_t;
# per city the sums AA FF HH FH FA HA and LD = sum log(1 - rho^2) + 2 sum log s give
#   L_c = -1/2 [(T_c - 1) log 2 pi + LD + log q + AA - N / q],
#   q = FF (1 + o HH) - o FH^2,  N = FA^2 (1 + o HH) + o FF HA^2 - 2 o FH FA HA,  o = omega^2,
# and every row of the city carries L_c / T_c.

_LOG_2PI = float(np.log(2.0 * np.pi))


@numba.njit(cache=True)
def _rho(phi, first, gap):
    if first > 0.0:
        return 0.0
    if gap == 1.0:
        return phi
    return np.sign(phi) ** gap * np.abs(phi) ** gap


@numba.njit(cache=True)
def _row_terms(value, mean, phi, scale, g, prev, first, gap):
    """Per row: rho, w, a, f, h and log(1 - rho^2) + 2 log s (logs and square roots reused across rows
    that share them: a balanced panel has one rho and one scale per city)."""
    n = value.shape[0]
    rho, w, a, f, h, ld = np.empty(n), np.empty(n), np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    sq1, ld1 = np.sqrt(1.0 - phi * phi), np.log(1.0 - phi * phi)  # lag 1
    last_s, log_s = np.nan, 0.0
    for t in range(n):
        p = prev[t]
        if scale[t] != last_s:
            last_s, log_s = scale[t], 2.0 * np.log(scale[t])
        if first[t] > 0.0:
            r, sq, l1 = 0.0, 1.0, 0.0
        elif gap[t] == 1.0:
            r, sq, l1 = phi, sq1, ld1
        else:
            r = _rho(phi, 0.0, gap[t])
            sq, l1 = np.sqrt(1.0 - r * r), np.log(1.0 - r * r)
        rho[t] = r
        w[t] = 1.0 / (sq * scale[t])
        a[t] = ((value[t] - mean[t]) - r * (value[p] - mean[p])) * w[t]
        f[t] = (1.0 - r) * w[t]
        h[t] = (g[t] - r * g[p]) * w[t]
        ld[t] = l1 + log_s
    return rho, w, a, f, h, ld


@numba.njit(cache=True)
def _city_sums(a, f, h, ld, city_idx, n_city):
    sums = np.zeros((n_city, 7))
    for t in range(a.shape[0]):
        c = city_idx[t]
        sums[c, 0] += a[t] * a[t]
        sums[c, 1] += f[t] * f[t]
        sums[c, 2] += h[t] * h[t]
        sums[c, 3] += f[t] * h[t]
        sums[c, 4] += f[t] * a[t]
        sums[c, 5] += h[t] * a[t]
        sums[c, 6] += ld[t]
    return sums


@numba.njit(cache=True)
def _structured_forward(value, mean, params, scale, g, city_idx, counts, prev, first, gap):
    phi, om = params[0], params[1] * params[1]
    rho, w, a, f, h, ld = _row_terms(value, mean, phi, scale, g, prev, first, gap)
    sums = _city_sums(a, f, h, ld, city_idx, counts.shape[0])
    per_city = np.zeros(counts.shape[0])
    for c in range(counts.shape[0]):
        if counts[c] <= 0.0:
            continue
        aa, ff, hh, fh, fa, ha, ld = sums[c, 0], sums[c, 1], sums[c, 2], sums[c, 3], sums[c, 4], sums[c, 5], \
            sums[c, 6]
        q = ff * (1.0 + om * hh) - om * fh * fh
        num = fa * fa * (1.0 + om * hh) + om * ff * ha * ha - 2.0 * om * fh * fa * ha
        per_city[c] = -0.5 * ((counts[c] - 1.0) * _LOG_2PI + ld + np.log(q) + aa - num / q) / counts[c]
    out = np.empty(value.shape[0])
    for t in range(value.shape[0]):
        out[t] = per_city[city_idx[t]]
    return out


@numba.njit(cache=True)
def _structured_backward(value, mean, params, scale, g, city_idx, counts, prev, first, gap, gout):
    """Reverse pass: d(sum_t gout_t out_t) / d(mean, (phi, omega), scale)."""
    phi, omega = params[0], params[1]
    om = omega * omega
    n, n_city = value.shape[0], counts.shape[0]
    rho, w, a, f, h, ld = _row_terms(value, mean, phi, scale, g, prev, first, gap)
    sums = _city_sums(a, f, h, ld, city_idx, n_city)
    # adjoint of each city's L_c: the row adjoints of its (evenly spread) entries
    lbar = np.zeros(n_city)
    for t in range(n):
        lbar[city_idx[t]] += gout[t]
    # adjoints of the sums (AA FF HH FH FA HA LD) and of omega^2
    bar = np.zeros((n_city, 7))
    om_bar = 0.0
    for c in range(n_city):
        if counts[c] <= 0.0:
            continue
        lb = lbar[c] / counts[c]
        ff, hh, fh, fa, ha = sums[c, 1], sums[c, 2], sums[c, 3], sums[c, 4], sums[c, 5]
        q = ff * (1.0 + om * hh) - om * fh * fh
        num = fa * fa * (1.0 + om * hh) + om * ff * ha * ha - 2.0 * om * fh * fa * ha
        corr = num / q
        # dL/dX = -1/2 [dq/dX (1 + corr) - dN/dX] / q for X in FF HH FH FA HA (dL/dAA = dL/dLD = -1/2)
        k = -0.5 * lb / q
        bar[c, 0] = -0.5 * lb
        bar[c, 1] = k * ((1.0 + om * hh) * (1.0 + corr) - om * ha * ha)
        bar[c, 2] = k * (ff * om * (1.0 + corr) - om * fa * fa)
        bar[c, 3] = k * (-2.0 * om * fh * (1.0 + corr) + 2.0 * om * fa * ha)
        bar[c, 4] = k * (-(2.0 * fa * (1.0 + om * hh) - 2.0 * om * fh * ha))
        bar[c, 5] = k * (-(2.0 * om * ff * ha - 2.0 * om * fh * fa))
        bar[c, 6] = -0.5 * lb
        om_bar += k * ((ff * hh - fh * fh) * (1.0 + corr) - (fa * fa * hh + ff * ha * ha - 2.0 * fh * fa * ha))
    r_bar, s_bar = np.zeros(n), np.zeros(n)
    phi_bar = 0.0
    for t in range(n):
        c, p = city_idx[t], prev[t]
        abar = 2.0 * bar[c, 0] * a[t] + bar[c, 4] * f[t] + bar[c, 5] * h[t]
        fbar = 2.0 * bar[c, 1] * f[t] + bar[c, 3] * h[t] + bar[c, 4] * a[t]
        hbar = 2.0 * bar[c, 2] * h[t] + bar[c, 3] * f[t] + bar[c, 5] * a[t]
        r_t, rho_t, w_t = value[t] - mean[t], rho[t], w[t]
        r_bar[t] += abar * w_t
        if first[t] > 0.0:
            w_bar = (abar * a[t] + fbar * f[t] + hbar * h[t]) / w_t
            s_bar[t] += -w_bar * w_t / scale[t] + 2.0 * bar[c, 6] / scale[t]
            continue
        r_p = value[p] - mean[p]
        r_bar[p] -= abar * rho_t * w_t
        w_bar = (abar * a[t] + fbar * f[t] + hbar * h[t]) / w_t
        one_minus = 1.0 - rho_t * rho_t
        rho_bar = (-abar * r_p * w_t - fbar * w_t - hbar * g[p] * w_t + w_bar * w_t * rho_t / one_minus
                   - 2.0 * bar[c, 6] * rho_t / one_minus)
        s_bar[t] += -w_bar * w_t / scale[t] + 2.0 * bar[c, 6] / scale[t]
        # d rho / d phi for rho = phi^gap (integer gaps): gap phi^(gap - 1)
        if gap[t] == 1.0:
            d_rho = 1.0
        elif phi != 0.0:
            d_rho = gap[t] * rho_t / phi
        else:
            d_rho = 0.0
        phi_bar += rho_bar * d_rho
    params_bar = np.empty(2)
    params_bar[0] = phi_bar
    params_bar[1] = om_bar * 2.0 * omega
    return -r_bar, params_bar, s_bar


# parallel over cities (each city's sum stays serial, so the result does not depend on the thread count):
# LOO calls this once per posterior draw, 4,000 times a fit
@numba.njit(cache=True, parallel=True)
def scale_integrated_city_logp(value, mean, params, base_scale, g, city_idx, counts, prev, first, gap, eta,
                               nodes, log_weights):
    """Each city's log-density (whole city, not spread over rows) with its scale innovation integrated
    out: log sum_k w_k p_c(y | s_c = base_c exp(eta x_k)) over a grid of x ~ N(0, 1).

    Scaling every error scale of a city by e^u scales its whitened sums AA FF HH FH FA HA by lam = e^-2u
    and adds 2 T_c u to LD, so the sums are formed once at the base scale. With D = FF HH - FH^2 and
    E = FA^2 HH + FF HA^2 - 2 FH FA HA (base sums, o = omega^2) the forward density's terms become
    q = lam A, A = FF + o lam D, and N / q = lam (FA^2 + o lam E) / A: each node costs a few products
    (and one log when o > 0)."""
    phi, om = params[0], params[1] * params[1]
    rho, w, a, f, h, ld = _row_terms(value, mean, phi, base_scale, g, prev, first, gap)
    sums = _city_sums(a, f, h, ld, city_idx, counts.shape[0])
    n_nodes = nodes.shape[0]
    u = eta * nodes
    lam = np.exp(-2.0 * u)
    out = np.zeros(counts.shape[0])
    for c in numba.prange(counts.shape[0]):
        if counts[c] <= 1.0:
            continue  # a city seen once has no within-city contrast: its density is 1 at every scale
        terms = np.empty(n_nodes)
        aa, ff, hh, fh, fa, ha = sums[c, 0], sums[c, 1], sums[c, 2], sums[c, 3], sums[c, 4], sums[c, 5]
        d_term = max(ff * hh - fh * fh, 0.0)  # >= 0 (Cauchy-Schwarz); rounding must not make it negative
        e_term = fa * fa * hh + ff * ha * ha - 2.0 * fh * fa * ha
        constant = (counts[c] - 1.0) * _LOG_2PI + sums[c, 6]
        log_ff = np.log(ff)
        top = -np.inf
        for k in range(n_nodes):
            big_a = ff + om * lam[k] * d_term
            log_a = log_ff if om == 0.0 else np.log(big_a)
            # log q = -2u + log A, so 2 T u + log q = 2 (T - 1) u + log A
            terms[k] = log_weights[k] - 0.5 * (constant + 2.0 * (counts[c] - 1.0) * u[k] + log_a
                                               + lam[k] * (aa - (fa * fa + om * lam[k] * e_term) / big_a))
            top = max(top, terms[k])
        out[c] = top + np.log(np.sum(np.exp(terms - top)))
    return out


def scale_quadrature(eta: float, max_rows: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and log-weights for integrating a city's scale innovation x ~ N(0, 1) out: an even grid on
    [-8, 8] (trapezoid rule) with spacing half the integrand's width in x, min(1, 1 / (eta sqrt(2 T))) for a
    city of T rows. For a smooth integrand of width s the trapezoid rule's relative error is about
    exp(-2 pi^2 s^2 / h^2), here below 1e-30."""
    width = min(1.0, 1.0 / (max(eta, 1e-12) * np.sqrt(2.0 * max(max_rows, 1.0))))
    nodes = np.linspace(-8.0, 8.0, int(np.ceil(16.0 / (0.5 * width))) + 1)
    log_w = -0.5 * nodes ** 2
    return nodes, log_w - np.logaddexp.reduce(log_w)


class StructuredCityLogp(Op):
    """Per-row entries of the structured density (inputs: value, mean, (phi, omega), scale_row, g,
    city_idx, counts, prev, first, gap). Gradients reach value, mean, (phi, omega) and scale_row."""

    __props__ = ()

    def make_node(self, *inputs):
        tensors = [pt.as_tensor_variable(x) for x in inputs]
        return Apply(self, tensors, [pt.dvector()])

    def perform(self, node, inputs, output_storage):
        output_storage[0][0] = _structured_forward(*[np.asarray(x) for x in inputs])

    def infer_shape(self, fgraph, node, shapes):
        return [shapes[0]]

    def L_op(self, inputs, outputs, output_grads):
        d_mean, d_params, d_scale = _STRUCTURED_GRAD(*inputs, output_grads[0])
        value, g, city_idx, counts, prev, first, gap = (inputs[i] for i in (0, 4, 5, 6, 7, 8, 9))
        return [-d_mean, d_mean, d_params, d_scale,
                grad_not_implemented(self, 4, g), grad_undefined(self, 5, city_idx),
                grad_not_implemented(self, 6, counts), grad_undefined(self, 7, prev),
                grad_not_implemented(self, 8, first), grad_not_implemented(self, 9, gap)]


class StructuredCityLogpGrad(Op):
    """The reverse pass of ``StructuredCityLogp``: (d mean, d (phi, omega), d scale_row)."""

    __props__ = ()

    def make_node(self, *inputs):
        tensors = [pt.as_tensor_variable(x) for x in inputs]
        return Apply(self, tensors, [pt.dvector(), pt.dvector(), pt.dvector()])

    def perform(self, node, inputs, output_storage):
        for storage, value in zip(output_storage, _structured_backward(*[np.asarray(x) for x in inputs])):
            storage[0] = value

    def infer_shape(self, fgraph, node, shapes):
        return [shapes[0], (2,), shapes[0]]


_STRUCTURED_LOGP = StructuredCityLogp()
_STRUCTURED_GRAD = StructuredCityLogpGrad()


# PyTensor keys its disk cache of a compiled graph by the Op's type and props only
_KERNEL_VERSION = source_salt(__file__)


@register_funcify_default_op_cache_key(StructuredCityLogp)
def _numba_structured_logp(op, node, **kwargs):
    return _structured_forward, _KERNEL_VERSION


@register_funcify_default_op_cache_key(StructuredCityLogpGrad)
def _numba_structured_logp_grad(op, node, **kwargs):
    return _structured_backward, _KERNEL_VERSION


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
