"""Spatial linear algebra, numpy and scipy only: the spectrum of W (computed once and cached on
``SpatialWeights``), log|I - rho W|, the spatial lag of a panel in either layout, and the direct /
indirect / total effects of S(rho) = (I - rho W)^-1 (beta I + theta W). The ML oracles and the Bayesian
spatial models both use these.

W = D^-1 A is the row-standardised contiguity matrix. It is similar to the symmetric D^-1/2 A D^-1/2, so
its eigenvalues are real and W = P diag(lam) P^-1 with P = D^-1/2 V (V the orthonormal eigenvectors).
An island (no neighbour) keeps a zero row: any positive scale reproduces it, so its d is taken as 1.
Nothing here imports the rest of the package; a graph is read through ``binary``, ``n_neighbors`` and
``row_standardised`` (what ``SpatialWeights`` has).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import scipy.sparse as sp

# above this many regions: trace-approximated effects (and, in the CAR models, sparse scaling factors)
DENSE_LIMIT = 3000


class Graph(Protocol):
    """What the functions here read of a ``SpatialWeights``."""

    @property
    def binary(self) -> sp.csr_array: ...

    @property
    def n_neighbors(self) -> np.ndarray: ...

    @property
    def row_standardised(self) -> sp.csr_array: ...

    @property
    def n(self) -> int: ...


# ------------------------------------------------------------------------------------------------
# spectrum
def eigenvalues(binary: sp.csr_array, n_neighbors: np.ndarray) -> np.ndarray:
    """Real eigenvalues of the row-standardised W, ascending (islands contribute zeros); values only."""
    d = n_neighbors.astype(float)
    inv_sqrt = np.divide(1.0, np.sqrt(d), out=np.zeros_like(d), where=d > 0)
    sym = (inv_sqrt[:, None] * binary.toarray()) * inv_sqrt[None, :]
    return np.linalg.eigvalsh(sym)


@dataclass(frozen=True, eq=False)
class Spectrum:
    """W = P diag(lam) P^-1 through the symmetric similar matrix D^-1/2 A D^-1/2 (islands: d = 1).

    ``total_weight``: a_j = (1'P)_j (P^-1 1)_j / n, so the mean row sum of f(W) is sum_j a_j f(lam_j).
    ``U``, ``Uinv`` and ``W`` are the ML oracle's names for ``p``, ``p_inv`` and the row-standardised W.
    """

    lam: np.ndarray
    p: np.ndarray
    p_inv: np.ndarray
    total_weight: np.ndarray
    W: sp.csr_array  # noqa: N815 (the matrix's usual symbol)

    @classmethod
    def of(cls, weights: Graph) -> Spectrum:
        d = weights.n_neighbors.astype(float)
        # islands: any positive scale works, their rows and columns of A are zero
        s = np.sqrt(np.where(d > 0, d, 1.0))
        sym = weights.binary.toarray() / s[:, None] / s[None, :]
        lam, v = np.linalg.eigh(sym)
        p = v / s[:, None]
        p_inv = v.T * s[None, :]
        a = p.sum(axis=0) * p_inv.sum(axis=1) / weights.n
        return cls(lam, p, p_inv, a, sp.csr_array(weights.row_standardised))

    @property
    def U(self) -> np.ndarray:  # noqa: N802
        return self.p

    @property
    def Uinv(self) -> np.ndarray:  # noqa: N802
        return self.p_inv

    def matfun(self, values: np.ndarray) -> np.ndarray:
        """Dense f(W) = P diag(values) P^-1."""
        return (self.p * values[None, :]) @ self.p_inv


def log_det(rho: float | np.ndarray, eigenvalues: np.ndarray) -> np.ndarray:
    """log|I - rho W| = sum_i log(1 - rho lambda_i) (real eigenvalues, rho inside the interval;
    vectorised over rho)."""
    r = np.asarray(rho, dtype=float)
    return np.log1p(-np.multiply.outer(r, eigenvalues)).sum(axis=-1)


# ------------------------------------------------------------------------------------------------
# spatial lag
def lag(w: sp.csr_array, x: np.ndarray, region_axis: int = 0) -> np.ndarray:
    """W applied to every year (and regressor) of a panel array whose regions lie along ``region_axis``:
    0 for (n, T, ...), 1 for the year-major (T, n[, k])."""
    moved = np.moveaxis(x, region_axis, 0)
    out = (w @ moved.reshape(moved.shape[0], -1)).reshape(moved.shape)
    return np.moveaxis(out, 0, region_axis)


# ------------------------------------------------------------------------------------------------
# effects (LeSage & Pace 2009)
def average_effects(beta: np.ndarray, theta: np.ndarray, rho: np.ndarray, spec: Spectrum) -> dict[str, np.ndarray]:
    """LeSage-Pace summaries of S_k = (I - rho W)^-1 (beta_k I + theta_k W), vectorised over draws.

    ``beta``, ``theta``: (..., k); ``rho``: (...). Returns arrays (..., k): direct (mean diagonal),
    total (mean row sum), indirect, and theta_part (theta_k tr((I - rho W)^-1 W) / n, the part of the
    direct effect that comes from the spatially lagged regressor). Traces from the eigenvalues alone.
    """
    rho = np.asarray(rho, dtype=float)[..., None]  # (..., 1)
    inv = 1.0 / (1.0 - rho * spec.lam)  # (..., n)
    m0 = inv.mean(axis=-1)  # tr((I - rho W)^-1) / n
    m1 = (spec.lam * inv).mean(axis=-1)  # tr((I - rho W)^-1 W) / n
    t0 = inv @ spec.total_weight
    t1 = (spec.lam * inv) @ spec.total_weight
    beta, theta = np.asarray(beta, dtype=float), np.asarray(theta, dtype=float)
    direct = beta * m0[..., None] + theta * m1[..., None]
    total = beta * t0[..., None] + theta * t1[..., None]
    return dict(direct=direct, indirect=total - direct, total=total, theta_part=theta * m1[..., None])


def spatial_effects(rho: np.ndarray, beta: np.ndarray, theta: np.ndarray, weights: Graph,
                    method: Literal["auto", "exact", "trace"] = "auto", n_terms: int | None = None,
                    n_probes: int = 50, seed: int = 0, eig: Spectrum | None = None) -> dict[str, np.ndarray]:
    """Direct / indirect / total effects of one regressor for every draw, with each region's effects.

    S(rho) = (I - rho W)^-1 (beta I + theta W). ``rho``, ``beta``, ``theta``: arrays of draws (same shape).
    Returns average effects (``direct``, ``indirect``, ``total``, ``theta_share`` = theta's part of the
    direct effect / direct) with the draws' shape, and per-region ``direct_city``, ``total_city``,
    ``indirect_city`` with shape (draws, n). ``exact`` uses the eigen-decomposition of W (n up to a few
    thousand); ``trace`` the power series sum_k rho^k W^k with diagonals of W^k from Hutchinson probes
    (Rademacher, ``n_probes``) and exact W^k 1; ``auto`` switches at ``DENSE_LIMIT`` regions.
    The series is truncated after ``n_terms`` (default: enough that max|rho|^(K+1) / (1 - max|rho|) <= 0.01,
    at most 4000) and its remainder added in closed form, each parity's last term carried on geometrically
    (exact once diag(W^k) has settled, and for bipartite components, where lambda_min = -1 makes it
    alternate), so the effects stay accurate for |rho| near 1.
    """
    rho, beta, theta = (np.asarray(x, dtype=float) for x in (rho, beta, theta))
    shape = rho.shape
    rho, beta, theta = rho.ravel(), beta.ravel(), theta.ravel()
    n = weights.n
    use_exact = method == "exact" or (method == "auto" and n <= DENSE_LIMIT)
    if use_exact:
        eig = eig or Spectrum.of(weights)
        lam = eig.lam
        denom = 1.0 - rho[:, None] * lam[None, :]
        f = (beta[:, None] + theta[:, None] * lam[None, :]) / denom  # (draws, n): eigenvalues of S
        f_theta = theta[:, None] * lam[None, :] / denom
        g = eig.p * eig.p_inv.T  # G_ik = P_ik (P^-1)_ki, so diag(S) = G f
        direct_city = f @ g.T
        b1 = eig.p_inv @ np.ones(n)
        total_city = (f * b1[None, :]) @ eig.p.T
        direct_theta = (f_theta @ g.T).mean(axis=1)
    else:
        rng = np.random.default_rng(seed)
        w = weights.row_standardised
        if n_terms is None:
            r_max = min(float(np.max(np.abs(rho), initial=0.0)), 0.999)
            n_terms = 100 if r_max <= 0.0 else int(np.clip(np.log(0.01 * (1 - r_max)) / np.log(r_max), 100, 4000))
        probes = rng.choice([-1.0, 1.0], size=(n, n_probes))
        diag_k = np.zeros((n_terms + 2, n))  # diag(W^k) estimates, k = 0..n_terms+1
        rows_k = np.zeros((n_terms + 2, n))  # W^k 1 (exact)
        z, one = probes.copy(), np.ones(n)
        for k in range(n_terms + 2):
            diag_k[k] = (probes * z).mean(axis=1) if k else 1.0
            rows_k[k] = one
            z, one = w @ z, w @ one
        inv_diag = _power_series(rho, diag_k)        # diag((I - rho W)^-1)
        winv_diag = _power_series(rho, diag_k[1:])   # diag(W (I - rho W)^-1)
        inv_rows = _power_series(rho, rows_k)
        winv_rows = _power_series(rho, rows_k[1:])
        direct_city = beta[:, None] * inv_diag + theta[:, None] * winv_diag
        total_city = beta[:, None] * inv_rows + theta[:, None] * winv_rows
        direct_theta = (theta[:, None] * winv_diag).mean(axis=1)
    direct = direct_city.mean(axis=1)
    total = total_city.mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(direct != 0, direct_theta / direct, np.nan)
    return {"direct": direct.reshape(shape), "indirect": (total - direct).reshape(shape),
            "total": total.reshape(shape), "theta_share": share.reshape(shape),
            "direct_city": direct_city, "total_city": total_city, "indirect_city": total_city - direct_city,
            "method": np.array("exact" if use_exact else "trace")}


def _power_series(rho: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """sum_k rho^k a_k for (draws,) rho and (M + 1, n) terms a_0..a_M, the remainder k > M in closed form
    with a_k taken equal to the last computed term of the same parity."""
    m = len(terms) - 1
    powers = rho[:, None] ** np.arange(m + 1)[None, :]
    head = powers @ terms
    r = rho[:, None]
    tail = (terms[m - 1][None, :] * r ** (m + 1) + terms[m][None, :] * r ** (m + 2)) / (1.0 - r ** 2)
    return head + tail
