"""Figures shared across sections (model-specific figures come with their BayesResult)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ..checks.agreement import MATCH_TOLERANCE_Z  # noqa: E402


def agreement_figure(tables: dict[str, pd.DataFrame], meant_to_match: dict[str, bool]) -> Figure:
    """z = (posterior mean - estimate) / SE for every shared coefficient, one row per (model, term).

    Models meant to match their oracle are drawn in blue with the |z| <= 0.1 band; the others in grey.
    """
    rows = [(mid, term, float(t.loc[term, "z"])) for mid, t in tables.items() for term in t.index]
    height = max(2.5, 0.22 * len(rows) + 1.2)
    fig, ax = plt.subplots(figsize=(7.5, height))
    if not rows:
        ax.text(0.5, 0.5, "no posterior has a frequentist oracle in this run", ha="center", va="center")
        ax.set_axis_off()
        return fig
    y = np.arange(len(rows))[::-1]
    colors = ["#1f5fa8" if meant_to_match.get(mid, False) else "#9a9a9a" for mid, _, _ in rows]
    zs = np.array([z for _, _, z in rows])
    lim = max(0.5, float(np.nanmax(np.abs(zs))) * 1.1) if np.isfinite(zs).any() else 0.5
    ax.axvspan(-MATCH_TOLERANCE_Z, MATCH_TOLERANCE_Z, color="#cfe3f7", zorder=0,
               label=f"|z| <= {MATCH_TOLERANCE_Z} (models meant to match)")
    ax.axvline(0, color="black", lw=0.8)
    ax.scatter(np.clip(zs, -lim, lim), y, c=colors, zorder=3, s=22)
    ax.set_yticks(y, [f"{mid}: {term}" for mid, term, _ in rows], fontsize=7)
    ax.set_xlim(-lim, lim)
    ax.set_xlabel("z = (posterior mean - frequentist estimate) / frequentist SE")
    ax.set_title("Posterior vs frequentist oracle (blue: meant to match; grey: different model)")
    ax.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    return fig
