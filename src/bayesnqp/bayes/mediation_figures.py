"""The latent-mediator model's figures: the path diagram, the confounding-sensitivity curves and the
posterior predictive check of each variable's spread, skewness and kurtosis (matplotlib Figure objects,
no pyplot state)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

from .. import names

if TYPE_CHECKING:
    from .mediation import MediationData


def _fmt(row: pd.Series) -> str:
    return f"{row['mean']:.3g} [{row['ci_low']:.3g}, {row['ci_high']:.3g}]"


def path_figure(summary: pd.DataFrame, data: MediationData) -> Figure:
    """Path diagram with posterior means and 94% HDIs on the arrows."""
    fig = Figure(figsize=(10, 6))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    k = len(data.mechanisms)
    ys = np.linspace(0.9, 0.44, k) if k > 1 else np.array([0.75])
    src, dst = (0.1, 0.62), (0.9, 0.62)

    def box(xy, text, color, half=0.085):
        ax.add_patch(FancyBboxPatch((xy[0] - half, xy[1] - 0.05), 2 * half, 0.1, boxstyle="round,pad=0.01",
                                    fc=color, ec="black"))
        ax.text(xy[0], xy[1], text, ha="center", va="center", fontsize=9)

    def arrow(p, q, label=None, rad=0.0, offset=(0, 0.02)):
        ax.add_patch(FancyArrowPatch(p, q, arrowstyle="-|>", mutation_scale=14, lw=1.2,
                                     connectionstyle=f"arc3,rad={rad}"))
        if label is not None:
            mid = ((p[0] + q[0]) / 2 + offset[0], (p[1] + q[1]) / 2 + offset[1])
            ax.text(*mid, label, ha="center", va="center", fontsize=7.5,
                    bbox={"fc": "white", "ec": "none", "alpha": 0.85, "pad": 1})

    def beside(end, label, ha, above):
        # A path label sits next to the mechanism box, on the side of the arrow's end that the arrow does
        # not cross (above an arrow that arrives from below, and vice versa), so no label covers a line.
        gap = -0.015 if ha == "right" else 0.015
        ax.text(end[0] + gap, end[1] + (0.035 if above else -0.035), label, ha=ha, va="center", fontsize=7.5)

    box(src, data.treatment, "#dbe9f6")
    box(dst, data.outcome, "#f6e3db")
    for m, (mech, y) in enumerate(zip(data.mechanisms, ys)):
        pair = data.indicators[2 * m: 2 * m + 2]
        box((0.5, y), f"eta[{mech}]\n{pair[0]}, {pair[1]}", "#e8f3e1", half=0.15)
        a_end, b_start = (0.5 - 0.155, y), (0.5 + 0.155, y)
        arrow((src[0] + 0.085, src[1]), a_end)
        arrow(b_start, (dst[0] - 0.085, dst[1]))
        rising = y >= src[1]
        beside(a_end, f"a = {_fmt(summary.loc[f'a[{mech}]'])}", "right", above=rising)
        beside(b_start, f"b = {_fmt(summary.loc[f'b[{mech}]'])}", "left", above=rising)
        ax.text(0.5, y - 0.075, f"indirect {_fmt(summary.loc[f'indirect[{mech}]'])}", ha="center",
                fontsize=7, color="#2d6a2d")
    arrow((src[0], src[1] - 0.05), (dst[0], dst[1] - 0.05), f"c' (direct) = {_fmt(summary.loc['direct'])}",
          rad=0.75, offset=(0, -0.3))
    ax.text(0.5, 0.03, f"total = {_fmt(summary.loc['total'])};  share mediated = "
            f"{_fmt(summary.loc['share_mediated'])}  (posterior mean [94% HDI])", ha="center", fontsize=8)
    return fig


def sensitivity_figure(curve: pd.DataFrame, thresholds: dict[str, Any], data: MediationData) -> Figure:
    """Each indirect effect (mean and 94% HDI) as corr(zeta_k, e) = rho_k moves, the others held at 0."""
    k = len(data.mechanisms)
    fig = Figure(figsize=(4 * k, 3.4))
    axes = fig.subplots(1, k, squeeze=False)[0]
    for ax, mech in zip(axes, data.mechanisms):
        c = curve[(curve["scenario"] == "one_at_a_time") & (curve[names.MECHANISM] == mech)]
        c = c[np.isfinite(c["mean"])]
        ax.fill_between(c["rho"], c["ci_low"], c["ci_high"], alpha=0.3, label="94% HDI")
        ax.plot(c["rho"], c["mean"], lw=1.5, label="posterior mean")
        ax.axhline(0, color="black", lw=0.8)
        ax.axvline(0, color="grey", lw=0.6, ls=":")
        thr = thresholds["one_at_a_time"][mech]["rho"]
        if thr is not None and thr != 0:
            ax.axvline(thr, color="red", lw=1, ls="--", label=f"HDI reaches 0 at rho = {thr:.2f}")
        ax.set_xlim(-0.6, 0.6)
        ax.set_title(f"indirect effect via {mech}", fontsize=9)
        ax.set_xlabel("rho = corr(zeta_k, e)")
        ax.legend(fontsize=6.5)
    axes[0].set_ylabel(f"{data.outcome} per unit {data.treatment}")
    fig.tight_layout()
    return fig


def ppc_figure(reps: np.ndarray, data: MediationData) -> Figure:
    """Density overlays of replicated vs observed residualised, standardised variables."""
    p = len(data.variables)
    cols = 4
    rows = math.ceil(p / cols)
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for j, (ax, var) in enumerate(zip(axes, data.variables)):
        lo, hi = np.quantile(data.z[:, j], [0.002, 0.998])
        span = max(hi - lo, 1e-9)
        bins = np.linspace(lo - 0.1 * span, hi + 0.1 * span, 60)
        centres = (bins[1:] + bins[:-1]) / 2
        for r in reps[:, :, j]:
            ax.plot(centres, np.histogram(r, bins=bins, density=True)[0], color="#6a9fd8", lw=0.4, alpha=0.25)
        ax.plot(centres, np.histogram(data.z[:, j], bins=bins, density=True)[0], color="black", lw=1.3)
        ax.set_title(var, fontsize=9)
        ax.set_yticks([])
    for ax in axes[p:]:
        ax.axis("off")
    fig.suptitle("Posterior predictive densities (blue) vs observed (black); within city & year, "
                 "controls partialled out, standardised", fontsize=9)
    fig.tight_layout()
    return fig
