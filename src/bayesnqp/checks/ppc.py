"""Posterior predictive checks: density overlay, test statistics (skewness, maximum) with Bayesian
p-values, group means (per year) and mean residuals by group (per city).

Pure numpy underneath (``*_values`` functions on arrays of shape (draws, n)); thin wrappers take an
InferenceData with ``posterior_predictive`` and ``observed_data`` groups and return numbers or
matplotlib ``Figure`` objects (made without pyplot, so importing this module leaves the plotting
backend alone).
"""

from __future__ import annotations


import arviz as az
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats

STATISTICS = ("mean", "sd", "skewness", "max", "min")


def _stat(name: str, values: np.ndarray) -> np.ndarray:
    """Statistic over the last axis."""
    if name == "mean":
        return values.mean(axis=-1)
    if name == "sd":
        return values.std(axis=-1)
    if name == "skewness":
        return stats.skew(values, axis=-1, bias=True)
    if name == "max":
        return values.max(axis=-1)
    if name == "min":
        return values.min(axis=-1)
    raise ValueError(f"unknown statistic {name!r}")


def draws_matrix(idata: az.InferenceData, var: str) -> tuple[np.ndarray, np.ndarray]:
    """(replicates (S, n), observed (n,)) from an InferenceData."""
    if "posterior_predictive" not in idata.groups() or var not in idata.posterior_predictive:
        raise ValueError(f"no posterior predictive draws of {var!r}")
    rep = np.asarray(idata.posterior_predictive[var])
    rep = rep.reshape(rep.shape[0] * rep.shape[1], -1)
    obs = np.asarray(idata.observed_data[var]).ravel()
    return rep, obs


def bayes_p_values(replicates: np.ndarray, observed: np.ndarray,
                   statistics: tuple[str, ...] = STATISTICS) -> dict[str, dict[str, float]]:
    """For each statistic T: observed T(y), the replicates' mean of T(y_rep), and the Bayesian p-value
    P(T(y_rep) >= T(y)) (near 0 or 1: the model misses that feature of the data)."""
    out = {}
    for name in statistics:
        t_rep = _stat(name, replicates)
        t_obs = float(_stat(name, observed[None, :])[0])
        out[name] = {"observed": t_obs, "replicated_mean": float(t_rep.mean()),
                     "p_value": float(np.mean(t_rep >= t_obs))}
    return out


def test_statistics(idata: az.InferenceData, var: str,
                    statistics: tuple[str, ...] = STATISTICS) -> dict[str, dict[str, float]]:
    """Bayesian p-values of the test statistics (skewness and maximum among them)."""
    rep, obs = draws_matrix(idata, var)
    return bayes_p_values(rep, obs, statistics)


test_statistics.__test__ = False  # type: ignore[attr-defined]  # not a pytest test despite the name


def density_overlay(idata: az.InferenceData, var: str, *, n_lines: int = 60, title: str = "",
                    seed: int = 0) -> Figure:
    """Kernel densities of ``n_lines`` replicated data sets over the observed density."""
    rep, obs = draws_matrix(idata, var)
    rng = np.random.default_rng(seed)
    pick = rng.choice(rep.shape[0], size=min(n_lines, rep.shape[0]), replace=False)
    lo, hi = np.quantile(np.concatenate([obs, rep[pick].ravel()]), [0.001, 0.999])
    grid = np.linspace(lo, hi, 300)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for i, s in enumerate(pick):
        ax.plot(grid, stats.gaussian_kde(rep[s])(grid), color="C0", alpha=0.15, lw=0.8,
                label="replicated" if i == 0 else None)
    ax.plot(grid, stats.gaussian_kde(obs)(grid), color="k", lw=1.8, label="observed")
    ax.set_xlabel(var)
    ax.set_ylabel("density")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(title or f"Posterior predictive density of {var}")
    fig.tight_layout()
    return fig


def statistics_figure(idata: az.InferenceData, var: str, statistics: tuple[str, ...] = ("skewness", "max"),
                      *, title: str = "") -> Figure:
    """Histograms of T(y_rep) with T(y) marked and the Bayesian p-value in the panel title."""
    rep, obs = draws_matrix(idata, var)
    fig = Figure(figsize=(3.2 * len(statistics), 3))
    axes = fig.subplots(1, len(statistics))
    axes = np.atleast_1d(axes)
    for ax, name in zip(axes, statistics):
        t_rep = _stat(name, rep)
        t_obs = float(_stat(name, obs[None, :])[0])
        ax.hist(t_rep, bins=40, color="C0", alpha=0.6)
        ax.axvline(t_obs, color="k", lw=2)
        ax.set_title(f"{name}: p = {np.mean(t_rep >= t_obs):.3f}", fontsize=9)
    fig.suptitle(title or f"Test statistics of {var}", fontsize=10)
    fig.tight_layout()
    return fig


def group_means_values(replicates: np.ndarray, observed: np.ndarray, groups: np.ndarray,
                       prob: float = 0.94) -> pd.DataFrame:
    """Observed and replicated means per group with the central ``prob`` interval of the replicates."""
    groups = np.asarray(groups)
    labels = pd.unique(groups)
    rows = []
    for g in sorted(labels):
        mask = groups == g
        m_rep = replicates[:, mask].mean(axis=1)
        lo, hi = np.quantile(m_rep, [(1 - prob) / 2, (1 + prob) / 2])
        m_obs = float(observed[mask].mean())
        rows.append({"group": g, "observed": m_obs, "replicated_mean": float(m_rep.mean()),
                     "low": float(lo), "high": float(hi), "p_value": float(np.mean(m_rep >= m_obs))})
    return pd.DataFrame(rows).set_index("group")


def group_means_figure(idata: az.InferenceData, var: str, groups: np.ndarray, *, label: str = "group",
                       title: str = "") -> Figure:
    """Per-group (e.g. per-year) observed mean against the replicated means' interval."""
    rep, obs = draws_matrix(idata, var)
    table = group_means_values(rep, obs, groups)
    x = np.arange(len(table))
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.errorbar(x, table["replicated_mean"], yerr=[table["replicated_mean"] - table["low"],
                                                   table["high"] - table["replicated_mean"]],
                fmt="o", color="C0", capsize=3, label="replicated (94%)")
    ax.plot(x, table["observed"], "kx", ms=8, label="observed")
    ax.set_xticks(x, [str(g) for g in table.index], rotation=45 if len(x) > 12 else 0)
    ax.set_xlabel(label)
    ax.set_ylabel(f"mean {var}")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(title or f"Posterior predictive means of {var} by {label}")
    fig.tight_layout()
    return fig


def residuals_by_group(idata: az.InferenceData, var: str, groups: np.ndarray) -> pd.DataFrame:
    """Mean residual y - E[y_rep | data] per group (city), in the units of y, and its standardised
    value (divided by the sd of the group's replicated mean)."""
    rep, obs = draws_matrix(idata, var)
    groups = np.asarray(groups)
    fitted = rep.mean(axis=0)
    frame = pd.DataFrame({"group": groups, "resid": obs - fitted})
    table = frame.groupby("group")["resid"].agg(["mean", "size"]).rename(
        columns={"mean": "mean_residual", "size": "n"})
    sds = {g: rep[:, groups == g].mean(axis=1).std() for g in table.index}
    table["z"] = table["mean_residual"] / pd.Series(sds)
    return table


def residuals_figure(table: pd.DataFrame, *, title: str = "") -> Figure:
    """Sorted mean residual per city."""
    ordered = table.sort_values("mean_residual")
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    ax.plot(np.arange(len(ordered)), ordered["mean_residual"], "o", ms=2.5, color="C0")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xlabel("city (sorted by mean residual)")
    ax.set_ylabel("mean residual")
    ax.set_title(title or "Mean residual by city")
    fig.tight_layout()
    return fig

