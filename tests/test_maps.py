"""Choropleth maps over the bundled city boundaries."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402

from bayesnqp.data.geography import load_boundaries, load_geography  # noqa: E402
from bayesnqp.report.maps import MISSING_COLOUR, choropleth, map_pair  # noqa: E402


@pytest.fixture(scope="module")
def dist() -> pd.Series:
    return load_geography().cities["dist_hangzhou_km"]


def _city_collection(ax) -> PathCollection:
    found = [c for c in ax.collections if isinstance(c, PathCollection) and c.get_gid() == "cities"]
    assert len(found) == 1
    return found[0]


def test_one_patch_per_city_with_the_right_colours(dist):
    values = dist.drop(["110000", "330900"])  # Beijing and Zhoushan without a value
    fig = choropleth(values, "Distance to Hangzhou", label="km")
    try:
        ax = fig.axes[0]
        coll = _city_collection(ax)
        codes = list(load_boundaries())
        assert len(coll.get_paths()) == 280
        face = coll.get_facecolors()
        assert face.shape == (280, 4)
        grey = np.array(to_rgba(MISSING_COLOUR))
        missing = [codes.index("110000"), codes.index("330900")]
        np.testing.assert_allclose(face[missing], np.tile(grey, (2, 1)))
        # the nearest city (Hangzhou, 0 km) gets the bottom of the colour map, the farthest the top
        cmap = plt.get_cmap("viridis")
        np.testing.assert_allclose(face[codes.index("330100")], cmap(0.0))
        np.testing.assert_allclose(face[codes.index(values.idxmax())], cmap(1.0))
        # each path spans its city's polygon
        ext = coll.get_paths()[codes.index("330100")].get_extents()
        assert ext.x0 < 120.2 < ext.x1 and ext.y0 < 30.25 < ext.y1
        assert ax.get_title() == "Distance to Hangzhou"
        assert ax.get_xticks().size == 0 and ax.get_yticks().size == 0
        assert any(a.get_xlabel().startswith("km\n") for a in fig.axes[1:])  # the colour bar, with the key
        legend = ax.get_legend()
        assert legend is not None and "2 cities" in legend.get_texts()[0].get_text()
        fig.canvas.draw()
    finally:
        plt.close(fig)


def test_diverging_is_centred_on_zero(dist):
    centred = dist - dist.median()
    fig = choropleth(centred, "centred", label="km", diverging=True)
    try:
        coll = _city_collection(fig.axes[0])
        codes = list(load_boundaries())
        median_city = (centred.abs()).idxmin()
        # a value of (almost) zero is drawn in the middle colour of RdBu_r
        mid = np.array(plt.get_cmap("RdBu_r")(0.5))
        assert np.abs(coll.get_facecolors()[codes.index(median_city)] - mid).max() < 0.05
        assert fig.axes[0].get_legend() is None  # nothing missing, no legend entry
    finally:
        plt.close(fig)


def test_unknown_city_is_an_error(dist):
    with pytest.raises(ValueError, match="540100"):
        choropleth(pd.concat([dist, pd.Series({"540100": 1.0})]), "t", label="x")
    plt.close("all")


def test_draws_into_given_axes(dist):
    fig, ax = plt.subplots()
    try:
        out = choropleth(dist, "t", label="x", ax=ax)
        assert out is fig and len(_city_collection(ax).get_paths()) == 280
    finally:
        plt.close(fig)


def test_map_pair_has_two_maps(dist, tmp_path):
    z = (dist - dist.mean()) / dist.std()
    fig = map_pair(z, dist / 1000.0, "City effects", "effect")
    try:
        maps = [a for a in fig.axes if any(c.get_gid() == "cities" for c in a.collections)]
        assert [a.get_title() for a in maps] == ["Posterior mean", "94% interval width"]
        assert all(len(_city_collection(a).get_paths()) == 280 for a in maps)
        assert fig.get_suptitle() == "City effects"
        fig.savefig(tmp_path / "pair.png", dpi=40)
        assert (tmp_path / "pair.png").stat().st_size > 1000
    finally:
        plt.close(fig)


def test_near_constant_values_are_not_stretched_over_the_scale(dist):
    flat = pd.Series(0.0100, index=dist.index) + np.linspace(0, 1e-6, len(dist))
    fig = choropleth(flat, "flat", label="direct effect")
    try:
        face = _city_collection(fig.axes[0]).get_facecolors()
        # 1e-6 of spread on a level of 0.01 must not run from one end of the colour map to the other
        assert np.abs(face.max(axis=0) - face.min(axis=0)).max() < 0.05
        assert any("nearly constant" in a.get_xlabel() for a in fig.axes[1:])
    finally:
        plt.close(fig)


def test_effect_maps_use_a_diverging_scale_centred_at_zero(dist):
    positive = dist / dist.max() + 0.1  # all positive: 0 is still the centre of the scale
    fig = map_pair(positive, positive * 0.1, "effects", "direct effect", effect=True)
    try:
        coll = _city_collection(fig.axes[0])
        codes = list(load_boundaries())
        colour = coll.get_facecolors()[codes.index(positive.idxmin())]
        # the smallest effect (0.1 of a max of 1.1) sits just above the white middle of RdBu_r
        assert np.abs(colour - np.array(plt.get_cmap("RdBu_r")(0.5 + 0.5 * positive.min() / positive.max()))).max() < 0.05
    finally:
        plt.close(fig)
