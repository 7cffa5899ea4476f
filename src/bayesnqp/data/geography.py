"""The bundled geography of the 280 cities: seats, distance to Hangzhou, contiguity, boundaries.

Built by data/geography/build_geography.py (see data/geography/SOURCES.md for the selection rule and
the islands). Everything is keyed by the 6-digit adcode as a string. Seats (``lon``, ``lat``) and
boundaries are WGS84; ``dist_hangzhou_km`` is seat to seat, the input of the instrument.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd

from ..paths import bundled
from .weights import SpatialWeights

hangzhou_adcode = "330100"

CITIES_FILE = "cities.csv"
GAL_FILE = "contiguity.gal"
BOUNDARIES_FILE = "boundaries.geojson"
PROVINCES_FILE = "provinces.geojson"


@dataclass(frozen=True, eq=False)
class Geography:
    """``cities`` indexed by adcode (sorted); ``weights`` queen contiguity with ids in that order."""

    cities: pd.DataFrame
    weights: SpatialWeights


def _folder(folder: str | Path | None) -> Path:
    return Path(folder) if folder is not None else bundled("geography")


def read_cities(folder: str | Path | None = None) -> pd.DataFrame:
    """cities.csv with adcode (str) as the index; a fresh copy on every call."""
    frame = pd.read_csv(_folder(folder) / CITIES_FILE, dtype={"adcode": str, "name_zh": str, "pinyin": str,
                                                            "province": str, "province_pinyin": str},
                        encoding="utf-8")
    return frame.set_index("adcode").sort_index()


@lru_cache(maxsize=4)
def _load(folder: str) -> Geography:
    cities = read_cities(folder)
    weights = SpatialWeights.read(Path(folder) / GAL_FILE, ids=list(cities.index))
    return Geography(cities=cities, weights=weights)


def load_geography(folder: str | Path | None = None) -> Geography:
    """The 280 cities and their contiguity graph (cached; do not modify the returned frame in place)."""
    return _load(str(_folder(folder)))


def load_boundaries(folder: str | Path | None = None) -> dict:
    """Simplified WGS84 polygons of the 280 cities, ``{adcode: shapely geometry}`` in adcode order."""
    from shapely.geometry import shape

    data = json.loads((_folder(folder) / BOUNDARIES_FILE).read_text(encoding="utf-8"))
    geoms = {str(f["properties"]["adcode"]): shape(f["geometry"]) for f in data["features"]}
    return dict(sorted(geoms.items()))


def load_provinces(folder: str | Path | None = None) -> dict:
    """Coarse outlines of China's 34 province-level units (a map backdrop only), ``{adcode: geometry}``."""
    from shapely.geometry import shape

    data = json.loads((_folder(folder) / PROVINCES_FILE).read_text(encoding="utf-8"))
    return {str(f["properties"]["adcode"]): shape(f["geometry"]) for f in data["features"]}
