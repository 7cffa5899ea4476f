"""Figures shared across sections (model-specific figures come with their BayesResult)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..conventions import MATCH_TOLERANCE_Z


def agreement_figure(tables: dict[str, pd.DataFrame], meant_to_match: dict[str, bool], *,
                     key_term: str | None = None, key_label: str | None = None) -> Figure:
    """z = (posterior mean - estimate) / SE of every shared coefficient: one row per model (so the figure
    keeps a page's height however many terms each model shares), each term a small dot, ``key_term`` a
    large one. Models meant to match their oracle are blue, with the |z| <= tolerance band; others grey.
    The per-term values are in the table beside the figure."""
    models = [mid for mid, t in tables.items() if len(t.index)]
    fig = Figure(figsize=(7.5, max(2.5, 0.28 * len(models) + 1.4)))
    ax = fig.subplots()
    if not models:
        ax.text(0.5, 0.5, "no posterior has a frequentist oracle in this run", ha="center", va="center")
        ax.set_axis_off()
        return fig
    zs = np.concatenate([pd.to_numeric(tables[m]["z"], errors="coerce").to_numpy(dtype=float) for m in models])
    lim = max(0.5, float(np.nanmax(np.abs(zs))) * 1.1) if np.isfinite(zs).any() else 0.5
    ax.axvspan(-MATCH_TOLERANCE_Z, MATCH_TOLERANCE_Z, color="#cfe3f7", zorder=0,
               label=f"|z| <= {MATCH_TOLERANCE_Z} (models meant to match)")
    ax.axvline(0, color="black", lw=0.8)
    y_of = {mid: i for i, mid in enumerate(reversed(models))}
    keyed = False
    for mid in models:
        z = pd.to_numeric(tables[mid]["z"], errors="coerce")
        color = "#1f5fa8" if meant_to_match.get(mid, False) else "#9a9a9a"
        others = z[[t != key_term for t in z.index]]
        ax.scatter(np.clip(others.to_numpy(dtype=float), -lim, lim), np.full(len(others), y_of[mid]),
                   color=color, alpha=0.45, s=12, zorder=3, lw=0)
        if key_term is not None and key_term in z.index:
            ax.scatter([np.clip(float(z[key_term]), -lim, lim)], [y_of[mid]], color=color, marker="D", s=34,
                       edgecolor="black", lw=0.6, zorder=4, label=None if keyed else (key_label or key_term))
            keyed = True
    ax.set_yticks(list(y_of.values()), list(y_of.keys()), fontsize=7.5)
    ax.set_ylim(-0.7, len(models) - 0.3)
    ax.set_xlim(-lim, lim)
    ax.set_xlabel("z = (posterior mean - frequentist estimate) / frequentist SE")
    ax.set_title("Posterior vs frequentist estimate, every shared term\n"
                 "(blue: meant to match; grey: a different model; small dots: other terms)", fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def caterpillar(table: pd.DataFrame, column: str, *, caption: str, unit_plural: str = "cities",
                names: dict[str, str] | None = None, label_extremes: int = 2) -> Figure:
    """One point per unit, sorted, with its interval (``ci_low``/``ci_high`` when present); intervals that
    exclude 0 in colour. The most extreme units are named. Small: it stands for a 280-row table."""
    names = names or {}
    vals = pd.to_numeric(table[column], errors="coerce")
    order = np.argsort(vals.to_numpy(dtype=float), kind="stable")
    keys = [str(k[0] if isinstance(k, tuple) else k) for k in table.index]
    y = vals.to_numpy(dtype=float)[order]
    x = np.arange(len(y))
    fig = Figure(figsize=(7.5, 2.9))
    ax = fig.subplots()
    has_ci = {"ci_low", "ci_high"} <= set(table.columns)
    if has_ci:
        lo = pd.to_numeric(table["ci_low"], errors="coerce").to_numpy(dtype=float)[order]
        hi = pd.to_numeric(table["ci_high"], errors="coerce").to_numpy(dtype=float)[order]
        away = (lo > 0) | (hi < 0)
        ax.vlines(x[~away], lo[~away], hi[~away], color="#b9b9b9", lw=0.8)
        ax.vlines(x[away], lo[away], hi[away], color="#d9825b", lw=0.8, label="interval excludes 0")
    ax.scatter(x, y, s=5, color="#1f4f8a", zorder=3)
    ax.axhline(0, color="black", lw=0.6)
    # the extremes named, stacked so that neighbours never print on top of each other
    low = list(range(min(label_extremes, len(y))))
    high = list(range(len(y) - 1, max(-1, len(y) - 1 - label_extremes), -1))
    for rank, i in enumerate(low):
        key = keys[order[i]]
        ax.annotate(names.get(key, key), (x[i], y[i]), xytext=(8, -8 - 8 * rank), textcoords="offset points",
                    fontsize=6, color="#333333", va="top", ha="left",
                    arrowprops={"arrowstyle": "-", "color": "#999999", "lw": 0.4})
    for rank, i in enumerate(high):
        key = keys[order[i]]
        ax.annotate(names.get(key, key), (x[i], y[i]), xytext=(-8, 8 + 8 * rank), textcoords="offset points",
                    fontsize=6, color="#333333", va="bottom", ha="right",
                    arrowprops={"arrowstyle": "-", "color": "#999999", "lw": 0.4})
    ax.set_xlabel(f"{unit_plural} ranked by {column}")
    ax.set_ylabel(_short_label(caption))
    ax.set_xlim(-1, len(y))
    if has_ci:
        ax.legend(loc="upper left", fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def _short_label(text: str, n: int = 38) -> str:
    text = text.split(": ")[-1]
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def forest_plot(rows: list[dict], *, treatment: str, ci_percent: int = 94) -> Figure:
    """The key effect in every model: the frequentist 95% CI (grey) and the Bayesian HDI (blue) side by side.

    ``rows``: dicts with ``label``, and optionally ``est``/``lo``/``hi`` (frequentist) and
    ``mean``/``hdi_low``/``hdi_high`` (Bayesian). One row per model, top to bottom as given.
    """
    n = len(rows)
    fig = Figure(figsize=(7.5, min(8.5, 0.9 + 0.3 * max(n, 2))))
    ax = fig.subplots()
    if not rows:
        ax.text(0.5, 0.5, "no model estimated the effect", ha="center", va="center")
        ax.set_axis_off()
        return fig
    y = np.arange(n)[::-1].astype(float)
    for yi, r in zip(y, rows):
        if r.get("est") is not None and np.isfinite(r["est"]):
            ax.hlines(yi + 0.13, r["lo"], r["hi"], color="#7a7a7a", lw=2)
            ax.plot(r["est"], yi + 0.13, "s", color="#4d4d4d", ms=4)
        if r.get("mean") is not None and np.isfinite(r["mean"]):
            ax.hlines(yi - 0.13, r["hdi_low"], r["hdi_high"], color="#1f5fa8", lw=2)
            ax.plot(r["mean"], yi - 0.13, "o", color="#1f5fa8", ms=4)
    ax.axvline(0, color="black", lw=0.7)
    ax.set_yticks(y, [r["label"] for r in rows], fontsize=8)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel(f"effect of {treatment} (coefficient)")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color="#7a7a7a", marker="s", lw=2, ms=4, label="frequentist estimate, 95% CI"),
               Line2D([], [], color="#1f5fa8", marker="o", lw=2, ms=4, label=f"posterior mean, {ci_percent}% HDI")]
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    ax.grid(axis="x", color="#eeeeee")
    fig.tight_layout()
    return fig
