"""City-level Bayesian bootstrap of the fixed-effects estimators (Rubin 1981; Chamberlain & Imbens 2003).

A design-based companion to the model-based posteriors: each replication draws Dirichlet(1, ..., 1)
weights over cities (every city-year of a city carries its city's weight) and re-solves the weighted
regression, fixed effects included. The spread of the replications is a posterior for the estimand under
a nonparametric model of the cities as draws from a population, with any correlation within a city left
unrestricted, the same assumption as the city-clustered (CRV1) standard error, whose value it approaches
as the number of cities grows.

Exact weighted two-way within estimator. Because a city's weight is the same in all its years, the
weighted city mean equals the unweighted one: demeaning within city does not depend on the weights and is
done once. Year effects enter as explicit dummies (T - 1 of them beside city effects), so the weighted
least squares of the city-demeaned outcome on the city-demeaned regressors and dummies is the weighted
two-way FE estimator by Frisch-Waugh-Lovell, exact in balanced and unbalanced panels alike (no
alternating projections, no tolerance). Every weighted cross-product is a weighted sum of per-city
cross-product matrices, computed once, so a replication costs one (cities x p^2) product and one p x p
solve: 1,000 replications of the 280-city panel take well under a second. 2SLS uses the same
cross-products (instruments and exogenous regressors together).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .. import names

DEFAULT_REPLICATIONS = 1000
DEFAULT_SEED = 20240601
METHOD = ("city-level Bayesian bootstrap: Dirichlet(1, ..., 1) weights over cities, the weighted "
          "estimator re-solved with its fixed effects in each replication (Rubin 1981; Chamberlain & "
          "Imbens 2003)")


def dirichlet_weights(cities: Sequence[str], n_rep: int = DEFAULT_REPLICATIONS, seed: int = DEFAULT_SEED
                      ) -> pd.DataFrame:
    """(n_rep, cities) Dirichlet(1, ..., 1) weights, scaled to sum to the number of cities (the scale
    does not change a weighted estimate; this one makes unit weights the ordinary estimator)."""
    cities = [str(c) for c in cities]
    if len(set(cities)) != len(cities):
        raise ValueError("city labels must be unique")
    e = np.random.default_rng(seed).standard_exponential((int(n_rep), len(cities)))
    return pd.DataFrame(e / e.sum(axis=1, keepdims=True) * len(cities), columns=pd.Index(cities, name=names.CITY))


@dataclass(frozen=True)
class _Design:
    """Per-city cross-products of [regressors, extra columns, outcome] after the city transformation."""

    cross: np.ndarray  # (n_city, q, q)
    cities: tuple[str, ...]
    columns: tuple[str, ...]
    scale: np.ndarray  # column scales divided out before the products (conditioning only)


def _design(frame: pd.DataFrame, outcome: str, regressors: Sequence[str], instruments: Sequence[str], *,
            city_fe: bool, year_fe: bool) -> _Design:
    cols = [*regressors, *instruments, outcome]
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ValueError(f"panel lacks columns {missing}")
    data = frame[cols]
    if data.isna().any().any():
        raise ValueError(f"missing values in {data.columns[data.isna().any()].tolist()}")
    city = frame.index.get_level_values(names.CITY).astype(str).to_numpy()
    year = frame.index.get_level_values(names.YEAR).astype(int).to_numpy()
    cities, city_idx = np.unique(city, return_inverse=True)
    years, year_idx = np.unique(year, return_inverse=True)
    parts = [data[list(regressors)].to_numpy(float)]
    extra: list[str] = []
    if not city_fe:
        parts.append(np.ones((len(data), 1)))
        extra.append("constant")
    if year_fe:
        dummies = (year_idx[:, None] == np.arange(1, len(years))[None, :]).astype(float)
        parts.append(dummies)
        extra += [f"year_{y}" for y in years[1:]]
    parts.append(data[list(instruments)].to_numpy(float))
    parts.append(data[[outcome]].to_numpy(float))
    m = np.column_stack(parts)
    if city_fe:
        counts = np.bincount(city_idx, minlength=len(cities)).astype(float)
        sums = np.zeros((len(cities), m.shape[1]))
        np.add.at(sums, city_idx, m)
        m = m - (sums / counts[:, None])[city_idx]
    scale = np.sqrt((m ** 2).mean(axis=0))
    scale[scale == 0] = 1.0
    m = m / scale
    cross = np.zeros((len(cities), m.shape[1], m.shape[1]))
    np.add.at(cross, city_idx, m[:, :, None] * m[:, None, :])
    return _Design(cross, tuple(cities), (*regressors, *extra, *instruments, outcome), scale)


def _solve(design: _Design, weights: np.ndarray, k: int, n_exog_extra: int, n_inst: int) -> np.ndarray:
    """Weighted OLS (n_inst = 0) or 2SLS (the first regressor endogenous, n_inst excluded instruments)
    for each row of ``weights`` (R, n_city); returns (R, k) slopes of the regressors."""
    s = np.einsum("rg,gij->rij", weights, design.cross)
    p = k + n_exog_extra
    x = np.arange(p)
    y = s.shape[1] - 1
    if n_inst == 0:
        coef = np.linalg.solve(s[:, x[:, None], x[None, :]], s[:, x, y][..., None])[..., 0]
    else:
        # instruments: the excluded ones plus every exogenous column (all regressors but the first)
        z = np.concatenate([x[1:], np.arange(p, p + n_inst)])
        szz = s[:, z[:, None], z[None, :]]
        szx = s[:, z[:, None], x[None, :]]
        szy = s[:, z, y]
        a = np.linalg.solve(szz, szx)  # Szz^-1 Szx
        lhs = np.einsum("rzi,rzj->rij", szx, a)
        rhs = np.einsum("rzi,rz->ri", a, szy)
        coef = np.linalg.solve(lhs, rhs[..., None])[..., 0]
    # undo the column scaling: b_j = b_j' * scale_y / scale_j
    return coef[:, :k] * design.scale[-1] / design.scale[:k]


def weighted_fe(frame: pd.DataFrame, outcome: str, regressors: Sequence[str],
                city_weights: pd.Series | np.ndarray | None = None, *, city_fe: bool = True, year_fe: bool = True,
                instruments: Sequence[str] = ()) -> pd.Series:
    """Weighted (two-way) fixed-effects estimate of the regressors' slopes, each city-year weighted by its
    city's weight (``city_weights`` indexed by city; None: unit weights, the ordinary estimator).

    ``instruments``: excluded instruments for the FIRST regressor (2SLS; the other regressors are
    exogenous). Without city effects an intercept is included."""
    design = _design(frame, outcome, regressors, instruments, city_fe=city_fe, year_fe=year_fe)
    w = _align(city_weights, design.cities)[None, :]
    n_extra = len(design.columns) - len(regressors) - len(instruments) - 1
    coef = _solve(design, w, len(regressors), n_extra, len(instruments))
    return pd.Series(coef[0], index=pd.Index(list(regressors), name="term"))


def _align(weights: pd.Series | pd.DataFrame | np.ndarray | None, cities: tuple[str, ...]) -> np.ndarray:
    """Weights in the order of ``cities``: a Series indexed by city, a DataFrame with a column per city
    (one row per replication), or an array already in that order; None: unit weights."""
    if weights is None:
        return np.ones(len(cities))
    if isinstance(weights, pd.Series):
        by_city = pd.Series(weights.to_numpy(float), index=weights.index.astype(str))
        missing = [c for c in cities if c not in by_city.index]
        if missing:
            raise ValueError(f"no weight for cities {missing[:5]}")
        return by_city.loc[list(cities)].to_numpy(float)
    if isinstance(weights, pd.DataFrame):
        frame = weights.set_axis(weights.columns.astype(str), axis=1)
        missing = [c for c in cities if c not in frame.columns]
        if missing:
            raise ValueError(f"no weight for cities {missing[:5]}")
        return frame[list(cities)].to_numpy(float)
    arr = np.asarray(weights, dtype=float)
    if arr.shape[-1] != len(cities):
        raise ValueError(f"{arr.shape[-1]} weights for {len(cities)} cities")
    return arr


def bootstrap_draws(frame: pd.DataFrame, outcome: str, regressors: Sequence[str], weights: pd.DataFrame, *,
                    city_fe: bool = True, year_fe: bool = True, instruments: Sequence[str] = ()) -> pd.DataFrame:
    """(replications, regressors) weighted estimates, one row per row of ``weights`` (columns: cities;
    see ``dirichlet_weights``). Cities of ``weights`` absent from ``frame`` are ignored, so one weight
    draw can serve several subsamples (the groups of a median split share it)."""
    design = _design(frame, outcome, regressors, instruments, city_fe=city_fe, year_fe=year_fe)
    w = _align(weights, design.cities)
    n_extra = len(design.columns) - len(regressors) - len(instruments) - 1
    coef = _solve(design, w, len(regressors), n_extra, len(instruments))
    return pd.DataFrame(coef, columns=pd.Index(list(regressors), name="term"))


def summarise(draws: pd.DataFrame, *, seed: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``extra["bootstrap"]`` block of an oracle: sd and 2.5/97.5 % quantiles per term."""
    q = draws.quantile([0.025, 0.975])
    return {"method": METHOD, "replications": int(len(draws)), "seed": int(seed),
            "sd": {str(t): float(draws[t].std(ddof=1)) for t in draws.columns},
            "mean": {str(t): float(draws[t].mean()) for t in draws.columns},
            "ci95": {str(t): [float(q.loc[0.025, t]), float(q.loc[0.975, t])] for t in draws.columns},
            **(extra or {})}


# Oracle ids whose estimator the bootstrap re-solves (robustness variants change the data, not the
# estimator, and have no Bayesian counterpart).
COVERED = ("table3_col", "table4_", "hetero_", "iv_2sls")


def covers(result_id: str) -> bool:
    return str(result_id).startswith(COVERED)


def _regressors(result: Any) -> list[str]:
    return [t for t in result.coefs.index if t != "constant"]


def companion(result: Any, frame: pd.DataFrame, weights: pd.DataFrame, *, seed: int,
              instrument: str | None = None) -> dict[str, Any] | None:
    """The bootstrap block for a fixed-effects oracle (``AnalysisResult``), or None for a kind it does
    not cover. ``weights``: one ``dirichlet_weights`` draw over all cities, shared by every oracle so
    their bootstraps are jointly coherent.

    Covered: Table 3 columns and Table 4 regressions (their own fixed effects); the median splits
    (each group's two-way FE on its cities, the difference as high - low within each replication, which
    equals the interacted model's coefficient); 2SLS with two-way effects when ``instrument`` (the
    distance column) is given."""
    fe = set(result.fixed_effects)
    city_fe, year_fe = names.CITY in fe, names.YEAR in fe
    rid = str(result.id)
    if rid.startswith(("table3_col", "table4_")):
        draws = bootstrap_draws(frame, result.dep_var, _regressors(result), weights, city_fe=city_fe,
                                year_fe=year_fe)
        return summarise(draws, seed=seed)
    if rid.startswith("hetero_") and "splitter" in result.extra:
        from .panel import median_split

        high, _ = median_split(frame, result.extra["splitter"])
        city = frame.index.get_level_values(names.CITY)
        is_high = high.reindex(city).to_numpy(dtype=bool)
        term = str(result.coefs.index[0]).split("[", 1)[0]
        fits = result.extra.get("group_fits", {}).get("low", {}).get("terms", {})
        regs = [t for t in fits if t != "constant"] or [term]
        parts = {g: bootstrap_draws(frame.loc[mask], result.dep_var, regs, weights)[term]
                 for g, mask in (("low", ~is_high), ("high", is_high))}
        draws = pd.DataFrame({f"{term}[low]": parts["low"], f"{term}[high]": parts["high"],
                              "difference": parts["high"] - parts["low"]})
        return summarise(draws, seed=seed, extra={"groups": "each group's two-way FE on its own cities; "
                                                            "difference = high - low per replication"})
    if rid in ("iv_2sls", "iv_2sls_trend") and instrument is not None:
        data = frame.copy()
        year = data.index.get_level_values(names.YEAR).astype(int).to_numpy()
        years = np.unique(year)
        dist = data[instrument].to_numpy(float) / 1000.0
        if rid == "iv_2sls_trend":
            zs = ["_z_trend"]
            data["_z_trend"] = dist * (year - years[0])
        else:  # distance x year dummies, first year omitted (as the oracle)
            zs = [f"_z_{y}" for y in years[1:]]
            for y, z in zip(years[1:], zs):
                data[z] = dist * (year == y)
        draws = bootstrap_draws(data, result.dep_var, _regressors(result), weights, instruments=zs)
        return summarise(draws, seed=seed)
    return None
