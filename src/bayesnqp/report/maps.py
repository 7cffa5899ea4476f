"""Choropleth maps of the 280 cities drawn from the bundled boundaries (matplotlib only, Agg backend).

Each city is one compound path (all its polygons, holes included) in one collection (gid ``cities``), so
a map has exactly one patch per city; cities without a value are light grey and named in the legend as
"no value". Under them, in a paler grey, lie China's province-level units (areas outside the sample),
and province borders are drawn on top so a reader can find their way.
"""

from __future__ import annotations

import math

import matplotlib
import matplotlib.cm
import matplotlib.ticker


import numpy as np
import pandas as pd
from matplotlib.collections import PathCollection
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.path import Path

from ..data.geography import load_boundaries, load_provinces

MISSING_COLOUR = "#b4b4b4"
BACKDROP_COLOUR = "#ebebeb"
PROVINCE_EDGE = "#7f7f7f"
# Longitude / latitude window: mainland China, Hainan and Taiwan (the far South China Sea islands fall
# outside; none of them is in the sample).
_EXTENT = (73.0, 135.5, 17.5, 54.0)
EDGE_COLOUR = "#ffffff"
CI_LABEL = "94% interval width"
# Degrees of longitude shrink with cos(latitude); at China's middle latitude (~33 N) this aspect makes a
# kilometre east-west as long on the page as a kilometre north-south.
_ASPECT = 1.0 / math.cos(math.radians(33.0))


def _city_path(geom) -> Path:
    """One compound path per city; exteriors counter-clockwise, holes clockwise (non-zero fill rule)."""
    from shapely.geometry.polygon import orient

    polys = list(getattr(geom, "geoms", [geom]))
    verts, codes = [], []
    for poly in polys:
        if poly.geom_type != "Polygon" or poly.is_empty:
            continue
        poly = orient(poly, sign=1.0)
        for ring in (poly.exterior, *poly.interiors):
            xy = np.asarray(ring.coords)
            verts.append(xy)
            codes.append(np.r_[Path.MOVETO, np.full(len(xy) - 2, Path.LINETO), Path.CLOSEPOLY])
    return Path(np.concatenate(verts), np.concatenate(codes).astype(Path.code_type))


_PATHS: dict[str, Path] | None = None
_PROVINCE_PATHS: list[Path] | None = None


def _paths() -> dict[str, Path]:
    global _PATHS
    if _PATHS is None:
        _PATHS = {code: _city_path(g) for code, g in load_boundaries().items()}
    return _PATHS


def _province_paths() -> list[Path]:
    global _PROVINCE_PATHS
    if _PROVINCE_PATHS is None:
        _PROVINCE_PATHS = [_city_path(g) for g in load_provinces().values()]
    return _PROVINCE_PATHS


def choropleth(values: pd.Series, title: str, *, label: str, cmap: str = "viridis", diverging: bool = False,
               ax=None) -> Figure:
    """Map ``values`` (indexed by 6-digit adcode) over the 280 cities; returns the figure.

    ``diverging`` centres the colour scale on 0 (default colour map then RdBu_r). Cities missing from
    ``values`` or with NaN are light grey. An adcode that is not one of the 280 cities is an error.
    """
    paths = _paths()
    vals = pd.Series(values, dtype=float).copy()
    vals.index = vals.index.astype(str)
    unknown = sorted(set(vals.index) - set(paths))
    if unknown:
        raise ValueError(f"not among the 280 mapped cities: {', '.join(unknown[:10])}"
                         + (" ..." if len(unknown) > 10 else ""))
    codes = list(paths)
    data = vals.reindex(codes).to_numpy()
    have = np.isfinite(data)

    if ax is None:
        fig = Figure(figsize=(8.0, 6.6), layout="constrained")
        ax = fig.subplots()
    else:
        fig = ax.figure
    if diverging and cmap == "viridis":
        cmap = "RdBu_r"
    colours = matplotlib.colormaps.get_cmap(cmap)
    finite = data[have]
    note = ""
    if finite.size == 0:
        norm = Normalize(0.0, 1.0)
    elif diverging:
        half = float(np.max(np.abs(finite))) or 1.0
        norm = TwoSlopeNorm(vcenter=0.0, vmin=-half, vmax=half)
    else:
        lo, hi = float(finite.min()), float(finite.max())
        level = max(abs(lo), abs(hi))
        if hi - lo <= 0.02 * level or hi == lo:
            # near-constant values: stretching them over the full colour scale would invent contrast, so the
            # scale spans +-10% of their level and the colour bar says how little they vary
            pad = 0.1 * level or 1.0
            mid = 0.5 * (lo + hi)
            norm = Normalize(mid - pad, mid + pad)
            note = f" (nearly constant: {lo:.3g} to {hi:.3g})"
        else:
            norm = Normalize(lo, hi)

    face = np.tile(matplotlib.colors.to_rgba(MISSING_COLOUR), (len(codes), 1))
    face[have] = colours(norm(finite))
    provinces = _province_paths()
    ax.add_collection(PathCollection(provinces, facecolors=BACKDROP_COLOUR, edgecolors="none", zorder=1))
    coll = PathCollection([paths[c] for c in codes], facecolors=face, edgecolors=EDGE_COLOUR,
                          linewidths=0.25, zorder=2)
    coll.set_gid("cities")
    ax.add_collection(coll)
    ax.add_collection(PathCollection(provinces, facecolors="none", edgecolors=PROVINCE_EDGE,
                                     linewidths=0.45, zorder=3))
    ax.set_xlim(_EXTENT[0], _EXTENT[1])
    ax.set_ylim(_EXTENT[2], _EXTENT[3])
    ax.set_aspect(_ASPECT)
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(title, fontsize="medium")

    mappable = matplotlib.cm.ScalarMappable(norm=norm, cmap=colours)
    bar = fig.colorbar(mappable, ax=ax, orientation="horizontal", shrink=0.7, pad=0.03, aspect=35)
    bar.set_label(label + note, fontsize="small")
    bar.ax.tick_params(labelsize="x-small")
    bar.ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(5))  # few ticks: labels never collide
    n_missing = int((~have).sum())
    if n_missing:
        handles = [Patch(facecolor=MISSING_COLOUR, edgecolor="#999999", linewidth=0.5,
                         label=f"no value ({n_missing} {'city' if n_missing == 1 else 'cities'})")]
        ax.legend(handles=handles, loc="lower left", frameon=False, fontsize="small")
    # the key goes under the colour bar's label, not on the map (it used to cover Hainan and Taiwan)
    bar.set_label(f"{label}{note}\n{int(have.sum())} of {len(codes)} cities shown; pale grey: outside the "
                  "sample", fontsize="small", color="#333333")
    return fig


def map_pair(mean: pd.Series, width: pd.Series, title: str, label: str, *, effect: bool = False) -> Figure:
    """Two maps side by side: the posterior mean and the width of its 94% interval, per city.

    ``effect``: the mean is an effect, drawn on a diverging scale centred at 0 whatever its sign."""
    fig = Figure(figsize=(11.0, 5.0), layout="constrained")
    axes = fig.subplots(1, 2)
    m = pd.Series(mean, dtype=float)
    straddles = bool(m.notna().any() and m.min() < 0 < m.max())
    choropleth(m, "Posterior mean", label=label, diverging=effect or straddles, ax=axes[0])
    choropleth(width, CI_LABEL, label=f"{CI_LABEL} of {label}", cmap="magma_r", ax=axes[1])
    fig.suptitle(title)
    return fig
