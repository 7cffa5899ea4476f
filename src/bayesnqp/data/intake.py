"""From the user's file to a validated study panel: read, resolve roles, check everything, compute measures.

``load_study`` collects every problem before it raises (so one run tells the user all that is wrong),
and computes nothing until the checks pass. The caller's file is only read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import names
from ..config import StudyConfig
from ..errors import InputError, Problem
from ..measures import entropy_index, location_quotient
from ..paths import bundled
from ..results import Skipped
from .io import ids_as_text, read_table
from .weights import SpatialWeights

MAX_CELLS_LISTED = 5  # per column and kind of problem; the rest is counted
# Larger magnitudes are refused: descriptives take fourth powers and regressions sums of squares, which
# overflow to inf from about 1e77 and turned every analysis into "array must not contain infs or NaNs".
# No quantity of a city panel comes near; such a value is a unit or typing error.
MAX_MAGNITUDE = 1e30
YEAR_RANGE = (1800, 2200)  # years outside are typos, not calendar years of a city panel

# Columns of the paper that are counts or amounts and cannot be negative.
_PAPER_NONNEGATIVE = (
    "emerging_industry_staff", "research_staff", "avg_wage", "consumption_pc", "telecom_volume",
    "ai_firm_share", "robot_density", "pollution_investment", "waste_treatment_rate", "emission_trading",
    "green_invention_patents", "green_utility_patents", "broadband_users", "internet_penetration",
    "gov_science_spending", "gov_education_spending", "inno_rd_staff", "inno_patents_pc",
    "factor_exchanges", "factor_pilots", "human", "traffic",
)


def demo_path() -> Path:
    return bundled("demo") / "demo_panel.csv"


@dataclass(frozen=True)
class Roles:
    """Column names in the study frame for each role (after the measures are computed).

    Inside the frame the outcome is always ``nqp`` and the treatment ``agglomeration`` (the paper's names,
    so every table and posterior is labelled alike); ``outcome_source`` / ``treatment_source`` say which
    user column they came from ('' when computed from the raw indicators / employment).
    """

    outcome: str
    treatment: str
    controls: tuple[str, ...]
    mechanisms: dict[str, tuple[str, str]]
    splitters: tuple[str, ...]
    instrument: str | None
    indicators: tuple[str, ...]  # raw NQP indicators (empty when the outcome came ready-made)
    employment: tuple[str, ...]  # (digital, total) employment (empty when the treatment came ready-made)
    negative_indicators: tuple[str, ...] = ()
    outcome_source: str = ""
    treatment_source: str = ""


@dataclass(frozen=True, eq=False)
class StudyData:
    """The validated panel: ``frame`` has a sorted (city, year) MultiIndex and every role's column."""

    source: str
    synthetic: bool
    frame: pd.DataFrame
    roles: Roles
    config: StudyConfig
    index_weights: pd.DataFrame | None
    weights: SpatialWeights | None
    weights_source: str | None
    provinces: pd.Series | None
    city_names: pd.Series
    balanced: bool
    skipped: tuple[Skipped, ...] = field(default_factory=tuple)

    @property
    def cities(self) -> list[str]:
        return list(self.frame.index.get_level_values(names.CITY).unique())

    @property
    def years(self) -> list[int]:
        return sorted(int(y) for y in self.frame.index.get_level_values(names.YEAR).unique())

    @property
    def data_name(self) -> str:
        return Path(self.source).stem


def _is_synthetic(path: Path) -> bool:
    """The bundled demo, or a file written by ``bayesnqp demo-data`` (its truth.json sits beside it)."""
    try:
        if path.resolve() == demo_path().resolve():
            return True
    except FileNotFoundError:
        pass
    truth = path.with_name("truth.json")
    if truth.is_file():
        try:
            meta = json.loads(truth.read_text(encoding="utf-8"))
            return bool(meta.get("synthetic")) or meta.get("banner") == names.SYNTHETIC_BANNER
        except (json.JSONDecodeError, UnicodeDecodeError):
            return False
    return False


def _group_role(src: str, present: set[str], cols: tuple[str, ...], key: str, cfg: StudyConfig,
                problems: list[Problem]) -> tuple[str, ...]:
    """A list role: explicit -> all must exist; default -> all or none (partial means a broken file)."""
    missing = [c for c in cols if c not in present]
    if key in cfg.explicit or (missing and len(missing) < len(cols)):
        for c in missing:
            problems.append(Problem(src, f"column named for '{key}' not found in the file", column=c))
        return tuple(c for c in cols if c in present)
    return tuple(cols) if not missing else ()


def _cell_problems(src: str, frame: pd.DataFrame, column: str, mask: pd.Series, message: str,
                   problems: list[Problem]) -> None:
    if not mask.any():  # the common case; selecting nothing from the frame is what made validation slow
        return
    hits = frame.loc[mask, [names.CITY, names.YEAR]]
    for city, year in hits.head(MAX_CELLS_LISTED).itertuples(index=False):
        problems.append(Problem(src, message, column=column, city=city, year=_year_or_none(year)))
    if len(hits) > MAX_CELLS_LISTED:
        problems.append(Problem(src, f"{message}: {len(hits) - MAX_CELLS_LISTED} more cell(s) like this",
                                column=column))


def _shown(value: object) -> str:
    """A raw cell as the user wrote it: quoted text, or '(empty)'."""
    return "(empty)" if value is None or (isinstance(value, float) and np.isnan(value)) else repr(str(value))


def _year_or_none(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def load_study(data: str | Path | None, config: StudyConfig) -> StudyData:
    """Read, validate and measure. Raises InputError listing every problem; returns StudyData.

    Each step refuses before the next starts: the roles (which columns), the ids (city and year, which
    every later message names), then the values, the balance and the geography together (so one run lists
    all of those), and only then the measures.
    """
    path = Path(data) if data is not None else demo_path()
    src = str(path)
    raw = read_table(path, id_column=config.city)
    skipped: list[Skipped] = []
    cols = _resolve_roles(src, set(raw.columns), config, skipped)
    frame = _id_frame(src, raw, config)
    problems: list[Problem] = []
    _read_values(src, raw, frame, config, cols, problems)
    frame_ok, cities, balanced = _balance(src, frame, config, problems)
    place = _place(src, config, frame_ok, cities, balanced, problems, skipped)
    instrument = _instrument(cols.instrument, place.in_geo, skipped)
    if problems:
        raise InputError(problems)

    frame, index_weights = _measure(frame_ok, cols, instrument, config, place.geo_cities)
    roles = Roles(outcome=names.NQP, treatment=names.AGGLOMERATION,
                  outcome_source="" if cols.indicators else cols.outcome,
                  treatment_source="" if cols.employment else cols.treatment, controls=cols.controls,
                  mechanisms=cols.mechanisms, splitters=cols.splitters, instrument=instrument,
                  indicators=cols.indicators, employment=cols.employment,
                  negative_indicators=tuple(config.negative_indicators))
    return StudyData(source=src, synthetic=_is_synthetic(path), frame=frame, roles=roles, config=config,
                     index_weights=index_weights, weights=place.weights, weights_source=place.weights_source,
                     provinces=place.provinces, city_names=_city_names(frame, cities, place), balanced=balanced,
                     skipped=tuple(skipped))


# ---- step 1: roles -> columns ----------------------------------------------------------------------
@dataclass(frozen=True)
class _Columns:
    """The file's column for each role. ``outcome`` / ``treatment`` are the ready columns ('' when the
    measure is computed from ``indicators`` / ``employment``); ``instrument`` is None when absent."""

    outcome: str
    indicators: tuple[str, ...]
    treatment: str
    employment: tuple[str, ...]
    controls: tuple[str, ...]
    mechanisms: dict[str, tuple[str, str]]
    splitters: tuple[str, ...]
    instrument: str | None

    def numeric(self) -> list[str]:
        """Every column that must hold numbers, each once, in role order (the order problems are listed in)."""
        return list(dict.fromkeys(
            [*self.indicators, *([self.outcome] if self.outcome else []), *self.employment,
             *([self.treatment] if self.treatment and not self.employment else []), *self.controls,
             *[c for pair in self.mechanisms.values() for c in pair], *self.splitters,
             *([self.instrument] if self.instrument else [])]))


def _resolve_roles(src: str, present: set[str], config: StudyConfig, skipped: list[Skipped]) -> _Columns:
    """The columns of every role; refuses with all naming problems before any value is read."""
    problems: list[Problem] = []
    for key in ("city", "year"):
        col = getattr(config, key)
        if col not in present:
            problems.append(Problem(src, f"the {key} id column is missing (set [columns] {key} in the config)",
                                    column=col))
    outcome, indicators = _outcome_columns(src, present, config, problems)
    treatment, employment = _treatment_columns(src, present, config, problems)
    controls = _group_role(src, present, config.controls, "controls", config, problems)
    if not controls and config.controls:
        skipped.append(Skipped("controls", "no control columns found: models run without controls"))
    mechanisms = _mechanism_columns(src, present, config, problems, skipped)
    splitters = _splitter_columns(src, present, config, problems, skipped)
    instrument: str | None = config.instrument if config.instrument in present else None
    if instrument is None and "instrument" in config.explicit:
        problems.append(Problem(src, "column named for 'instrument' not found", column=config.instrument))
    if problems:
        raise InputError(problems)
    return _Columns(outcome=outcome, indicators=indicators, treatment=treatment, employment=employment,
                    controls=controls, mechanisms=mechanisms, splitters=splitters, instrument=instrument)


def _outcome_columns(src: str, present: set[str], config: StudyConfig,
                     problems: list[Problem]) -> tuple[str, tuple[str, ...]]:
    """(ready outcome column, raw indicators): a named outcome, else the indicators, else a ready 'nqp'."""
    outcome = config.outcome
    indicators: tuple[str, ...] = ()
    if config.outcome:
        if config.outcome not in present:
            problems.append(Problem(src, "column named for 'outcome' not found", column=config.outcome))
    else:
        indicators = _group_role(src, present, config.indicators, "indicators", config, problems)
        if not indicators and "indicators" not in config.explicit:
            if names.NQP in present:
                outcome = names.NQP
            else:
                problems.append(Problem(src, "no outcome: neither the raw NQP indicators "
                                             f"({', '.join(config.indicators[:3])}, ...) nor a ready "
                                             f"'{names.NQP}' column; map them in the config"))
    for neg in config.negative_indicators:
        if neg not in indicators:
            problems.append(Problem(src, "negative_indicators names a column that is not an indicator", column=neg))
    return outcome, indicators


def _treatment_columns(src: str, present: set[str], config: StudyConfig,
                       problems: list[Problem]) -> tuple[str, tuple[str, ...]]:
    """(ready treatment column, (digital, total) employment): a named treatment, else employment, else a
    ready 'agglomeration'."""
    if config.treatment:
        if config.treatment not in present:
            problems.append(Problem(src, "column named for 'treatment' not found", column=config.treatment))
        employment: tuple[str, ...] = ()
    else:
        employment = _group_role(src, present, (config.digital_employment, config.total_employment),
                                 "digital_employment", config, problems)
        if not employment:
            if names.AGGLOMERATION in present:
                employment = ()
            elif not any(k in config.explicit for k in ("digital_employment", "total_employment")):
                problems.append(Problem(src, "no treatment: neither digital/total employment columns "
                                             f"('{config.digital_employment}', '{config.total_employment}') "
                                             f"nor a ready '{names.AGGLOMERATION}' column"))
    return config.treatment or (names.AGGLOMERATION if not employment else ""), employment


def _mechanism_columns(src: str, present: set[str], config: StudyConfig, problems: list[Problem],
                       skipped: list[Skipped]) -> dict[str, tuple[str, str]]:
    """Mechanisms with both indicators present; half a pair (or a named pair) missing is a problem, a
    default pair wholly absent only skips that mechanism."""
    mechanisms: dict[str, tuple[str, str]] = {}
    for mech, pair in config.mechanisms.items():
        got = [c for c in pair if c in present]
        if len(got) == 2:
            mechanisms[mech] = (pair[0], pair[1])
        elif got or "mechanisms" in config.explicit:
            for c in pair:
                if c not in present:
                    problems.append(Problem(src, f"indicator of mechanism '{mech}' not found", column=c))
        else:
            skipped.append(Skipped(f"mechanism_{mech}", f"mechanism '{mech}' skipped: columns "
                                                         f"{pair[0]}, {pair[1]} not in the data"))
    return mechanisms


def _splitter_columns(src: str, present: set[str], config: StudyConfig, problems: list[Problem],
                      skipped: list[Skipped]) -> tuple[str, ...]:
    """The heterogeneity splitters present; a named one missing is a problem, a default one is skipped."""
    splitters = []
    for s in config.splitters:
        if s in present:
            splitters.append(s)
        elif "splitters" in config.explicit:
            problems.append(Problem(src, "column named for 'splitters' not found", column=s))
        else:
            skipped.append(Skipped(f"hetero_{s}", f"heterogeneity by '{s}' skipped: column not in the data"))
    return tuple(splitters)


# ---- step 2: the ids -------------------------------------------------------------------------------
def _id_frame(src: str, raw: pd.DataFrame, config: StudyConfig) -> pd.DataFrame:
    """The (city, year) columns as text and int; refuses first on bad ids, which every later problem names."""
    problems: list[Problem] = []
    frame = pd.DataFrame({names.CITY: ids_as_text(raw[config.city])})
    year_num = pd.to_numeric(raw[config.year], errors="coerce")
    frame[names.YEAR] = year_num
    bad_city = frame[names.CITY].isna() | (frame[names.CITY] == "")
    for row in np.flatnonzero(bad_city.to_numpy())[:MAX_CELLS_LISTED]:
        problems.append(Problem(src, f"row {row + 2}: empty city id", column=config.city))
    bad_year = year_num.isna() | ~np.isfinite(year_num) | (year_num != np.round(year_num))
    for row in np.flatnonzero(bad_year.to_numpy())[:MAX_CELLS_LISTED]:
        problems.append(Problem(src, f"row {row + 2}: year {_shown(raw[config.year].iloc[row])} is not a whole number",
                                column=config.year, city=frame[names.CITY].iloc[row]))
    # A whole number far outside the calendar (a typo such as 20155, or 1e300) would overflow the integer
    # conversion or make the balance check enumerate millions of missing years.
    odd_year = ~bad_year & ((year_num < YEAR_RANGE[0]) | (year_num > YEAR_RANGE[1]))
    for row in np.flatnonzero(odd_year.to_numpy())[:MAX_CELLS_LISTED]:
        problems.append(Problem(src, f"row {row + 2}: year {_shown(raw[config.year].iloc[row])} is not a calendar "
                                     f"year ({YEAR_RANGE[0]}-{YEAR_RANGE[1]})",
                                column=config.year, city=frame[names.CITY].iloc[row]))
    if int(odd_year.sum()) > MAX_CELLS_LISTED:
        problems.append(Problem(src, f"{int(odd_year.sum()) - MAX_CELLS_LISTED} more rows with a year outside "
                                     f"{YEAR_RANGE[0]}-{YEAR_RANGE[1]}", column=config.year))
    if problems:
        raise InputError(problems)
    frame[names.YEAR] = year_num.astype(int)
    return frame


# ---- step 3: values, balance, geography (problems collected, refused together) ------------------------
def _read_values(src: str, raw: pd.DataFrame, frame: pd.DataFrame, config: StudyConfig, cols: _Columns,
                 problems: list[Problem]) -> None:
    """Adds the city names and every numeric role column to ``frame``; collects duplicate rows, cells
    that are not usable numbers, and values out of range."""
    dup = frame.duplicated([names.CITY, names.YEAR], keep="first")
    for city, year in frame.loc[dup, [names.CITY, names.YEAR]].drop_duplicates().itertuples(index=False):
        problems.append(Problem(src, "duplicate (city, year) row", city=city, year=int(year)))
    if config.city_name in raw.columns:
        frame["city_name"] = raw[config.city_name].astype(str)
    numeric_cols = cols.numeric()
    for col in numeric_cols:
        frame[col] = _numeric_column(src, raw[col], frame, col, problems)
    _range_problems(src, frame, config, cols, numeric_cols, problems)


def _numeric_column(src: str, original: pd.Series, frame: pd.DataFrame, col: str,
                    problems: list[Problem]) -> pd.Series:
    """``original`` as floats, with a problem for each text, missing, infinite or absurdly large cell."""
    values = pd.to_numeric(original, errors="coerce")
    non_numeric = values.isna() & original.notna() & (original.astype(str).str.strip() != "")
    for value in original[non_numeric].astype(str).unique()[:MAX_CELLS_LISTED]:
        _cell_problems(src, frame, col, non_numeric & (original.astype(str) == value),
                       f"cell {value!r} is not a number", problems)
    _cell_problems(src, frame, col, original.isna() | (original.astype(str).str.strip() == ""),
                   "cell is missing (NaN)", problems)
    _cell_problems(src, frame, col, values.isin([np.inf, -np.inf]), "cell is infinite", problems)
    as_float = values.astype(float)
    _cell_problems(src, frame, col, np.isfinite(as_float) & (as_float.abs() > MAX_MAGNITUDE),
                   f"cell is too large to compute with (|value| > {MAX_MAGNITUDE:g}): a unit or typing error?",
                   problems)
    return as_float


def _range_problems(src: str, frame: pd.DataFrame, config: StudyConfig, cols: _Columns, numeric_cols: list[str],
                    problems: list[Problem]) -> None:
    """Negative counts, employment that makes the location quotient undefined, and constant columns."""
    employment = cols.employment
    nonneg = set(employment) | set(config.nonnegative) | (set(_PAPER_NONNEGATIVE) & set(numeric_cols))
    for col in sorted(nonneg & set(numeric_cols)):
        _cell_problems(src, frame, col, frame[col] < 0, "negative value in a count/amount column", problems)
    if employment:
        digital, total = employment
        _cell_problems(src, frame, total, frame[total] == 0,
                       "zero total employment (the location quotient's denominator)", problems)
        _cell_problems(src, frame, digital, frame[digital] > frame[total],
                       "digital employment exceeds total employment", problems)
    for col in cols.indicators:
        v = frame[col]
        if v.notna().any() and np.nanmax(v) == np.nanmin(v):
            problems.append(Problem(src, "indicator is constant over the whole panel (the entropy weight is "
                                         "undefined); drop it from [columns] indicators", column=col))
    for col in [*cols.controls, *([cols.treatment] if not employment and cols.treatment else [])]:
        v = frame[col]
        if v.notna().any() and np.nanmax(v) == np.nanmin(v):
            problems.append(Problem(src, "column is constant over the whole panel", column=col))


def _balance(src: str, frame: pd.DataFrame, config: StudyConfig,
             problems: list[Problem]) -> tuple[pd.DataFrame, list[str], bool]:
    """(frame without duplicate rows, sorted cities, balanced); gaps are problems unless allowed."""
    frame_ok = frame.drop_duplicates([names.CITY, names.YEAR])
    all_years = sorted(frame_ok[names.YEAR].unique())
    full_years = list(range(min(all_years), max(all_years) + 1))
    have = frame_ok.groupby(names.CITY)[names.YEAR].apply(set)
    gaps = [(c, y) for c, ys in have.items() for y in full_years if y not in ys]
    if gaps and not config.allow_unbalanced:
        for city, year in gaps[:20]:
            problems.append(Problem(src, "missing year: the panel is unbalanced (the spatial models and "
                                         "the year-by-year analyses need every city in every year; set "
                                         "[analysis] allow_unbalanced = true to run the rest)",
                                    city=city, year=year))
        if len(gaps) > 20:
            problems.append(Problem(src, f"{len(gaps) - 20} more missing city-years"))
    if gaps and config.allow_unbalanced and config.spatial == "true":
        city, year = gaps[0]
        problems.append(Problem(src, f"spatial analyses were asked for ([spatial] enabled = true) but the panel "
                                     f"is unbalanced ({len(gaps)} missing city-years); they need every city "
                                     "in every year", city=city, year=year))
    if len(have) < 3 or len(full_years) < 2:
        problems.append(Problem(src, f"need at least 3 cities and 2 years, found {len(have)} and {len(full_years)}"))
    return frame_ok, sorted(have.index), not gaps


@dataclass(frozen=True)
class _Place:
    """The bundled geography's cities (None if not installed), whether it holds every panel city, and
    the provinces and spatial weights that follow."""

    geo_cities: pd.DataFrame | None
    in_geo: bool
    provinces: pd.Series | None
    weights: SpatialWeights | None
    weights_source: str | None


def _place(src: str, config: StudyConfig, frame_ok: pd.DataFrame, cities: list[str], balanced: bool,
           problems: list[Problem], skipped: list[Skipped]) -> _Place:
    """Provinces and weights for the panel's cities; a panel of partly bundled ids is a problem (a typo)
    unless the user brings their own geography."""
    provinces = None
    geo_cities = _bundled_cities()
    in_geo = geo_cities is not None and set(cities) <= set(geo_cities.index)
    if in_geo:
        assert geo_cities is not None
        provinces = geo_cities.loc[cities, names.PROVINCE]
    own_geography = bool(config.weights_file) or config.spatial == "false"
    mixed = geo_cities is not None and not in_geo and bool(set(cities) & set(geo_cities.index))
    if mixed and not own_geography:
        problems.extend(mixed_id_problems(src, config.city, cities, geo_cities,
                                          frame_ok.groupby(names.CITY)["city_name"].first()
                                          if "city_name" in frame_ok.columns else None))
    weights, weights_source = _weights(src, config, cities, geo_cities, in_geo, mixed, problems, skipped)
    if weights is not None and not balanced:
        weights = None
        skipped.append(Skipped("spatial", "spatial analyses skipped: they need a balanced panel"))
    return _Place(geo_cities=geo_cities, in_geo=in_geo, provinces=provinces, weights=weights,
                  weights_source=weights_source)


def _weights(src: str, config: StudyConfig, cities: list[str], geo_cities: pd.DataFrame | None, in_geo: bool,
             mixed: bool, problems: list[Problem],
             skipped: list[Skipped]) -> tuple[SpatialWeights | None, str | None]:
    """(weights, where they came from): the user's file, else the bundled contiguity, else none (a problem
    when spatial analyses were asked for, a skip otherwise)."""
    if config.spatial == "false":
        skipped.append(Skipped("spatial", "spatial analyses switched off in the config"))
        return None, None
    if config.weights_file:
        try:
            return SpatialWeights.read(config.weights_file, ids=cities), config.weights_file
        except InputError as exc:
            problems.extend(exc.problems)
            return None, None
    if in_geo:
        from .geography import load_geography

        return load_geography().weights.subset(cities), "bundled 280-city queen contiguity"
    if config.spatial == "true" and not mixed:  # a mixed panel is refused by the caller, with suggestions
        missing = [c for c in cities if geo_cities is None or c not in geo_cities.index]
        for c in missing[:MAX_CELLS_LISTED]:
            problems.append(Problem(src, "city id not in the bundled geography of the 280 cities (spatial "
                                         "analyses asked for; give [spatial] weights for other regions)",
                                    column=config.city, city=c))
        if len(missing) > MAX_CELLS_LISTED:
            problems.append(Problem(src, f"{len(missing) - MAX_CELLS_LISTED} more cities not in the geography"))
    elif not mixed:
        skipped.append(Skipped("spatial", "spatial analyses skipped: the city ids are not the bundled 280 "
                                          "cities and no [spatial] weights file was given"))
    return None, None


def _instrument(instrument: str | None, in_geo: bool, skipped: list[Skipped]) -> str | None:
    """The user's instrument, else the bundled distance to Hangzhou (only known for the bundled cities)."""
    if instrument is None:
        if in_geo:
            return names.DIST_HANGZHOU
        skipped.append(Skipped("iv_2sls", "instrumental variables skipped: no distance-to-Hangzhou column "
                                          "and the cities are not in the bundled geography"))
    return instrument


# ---- step 4: measures ---------------------------------------------------------------------------------
def _measure(frame_ok: pd.DataFrame, cols: _Columns, instrument: str | None, config: StudyConfig,
             geo_cities: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(the (city, year)-indexed frame with nqp, agglomeration and the instrument, the entropy weights)."""
    frame = frame_ok.set_index([names.CITY, names.YEAR]).sort_index()
    index_weights = None
    if cols.indicators:
        idx = entropy_index(frame, list(cols.indicators), config.negative_indicators)
        frame[names.NQP] = idx.index
        descriptions = {row[0]: row[2] for row in names.NQP_INDICATORS}
        index_weights = idx.weights_table(descriptions)
    else:
        frame[names.NQP] = frame[cols.outcome]
    if cols.employment:
        frame[names.AGGLOMERATION] = location_quotient(frame[cols.employment[0]], frame[cols.employment[1]])
    else:
        frame[names.AGGLOMERATION] = frame[cols.treatment]
    if instrument == names.DIST_HANGZHOU and instrument not in frame.columns:
        assert geo_cities is not None  # the bundled distance is only the default for the bundled cities
        dist = geo_cities["dist_hangzhou_km"]
        frame[names.DIST_HANGZHOU] = dist.reindex(frame.index.get_level_values(names.CITY)).to_numpy()
    return frame, index_weights


def _city_names(frame: pd.DataFrame, cities: list[str], place: _Place) -> pd.Series:
    """The file's city names, else the bundled Chinese names, else the ids themselves."""
    if "city_name" in frame.columns:
        return frame["city_name"].groupby(level=names.CITY).first()
    if place.in_geo and place.geo_cities is not None:
        return place.geo_cities.loc[cities, "name_zh"]
    return pd.Series(cities, index=cities)


MAX_UNKNOWN_LISTED = 20  # unknown ids of a mixed panel named one by one; the rest is counted


def mixed_id_problems(src: str, column: str, cities: list[str], geo: pd.DataFrame,
                      labels: pd.Series | None = None) -> list[Problem]:
    """Problems for a panel whose ids are partly the bundled adcodes and partly not.

    Some ids matching the 280 cities and others not is almost always a typo (one adcode mistyped),
    not a different study, so each unknown id is named with the closest bundled city as a suggestion.
    """
    known = set(geo.index)
    unknown = [c for c in cities if c not in known]
    n_known = len(cities) - len(unknown)
    # Bundled cities absent from the panel are the likeliest intended ids; fall back to all of them.
    absent = [c for c in geo.index if c not in set(cities)]
    out = [Problem(src, f"{len(unknown)} of {len(cities)} city ids are not in the bundled geography of the 280 "
                        f"cities while the other {n_known} are: a mistyped adcode? Correct the ids, or, if the "
                        "panel is not the paper's cities, give [spatial] weights or set [spatial] enabled = false",
                   column=column)]
    for city in unknown[:MAX_UNKNOWN_LISTED]:
        label = None if labels is None else labels.get(city)
        best = closest_adcode(city, geo, absent or list(geo.index), label)
        row = geo.loc[best]
        out.append(Problem(src, f"city id not in the bundled geography; closest bundled city: {best} "
                                f"{row['name_zh']} ({row['pinyin']})", column=column, city=city))
    if len(unknown) > MAX_UNKNOWN_LISTED:
        out.append(Problem(src, f"{len(unknown) - MAX_UNKNOWN_LISTED} more city ids not in the bundled geography",
                           column=column))
    return out


def closest_adcode(city: str, geo: pd.DataFrame, candidates: list[str], label: object = None) -> str:
    """The bundled adcode most like ``city``: a candidate whose name equals the row's city name first,
    then fewest edits, then the numerically nearest code, then the smallest code (so ties are stable)."""
    if isinstance(label, str) and label.strip():
        wanted = label.strip().casefold()
        for c in candidates:
            if wanted in (str(geo.at[c, "name_zh"]).casefold(), str(geo.at[c, "pinyin"]).casefold()):
                return c
    number = int(city) if city.isdigit() else None

    def key(c: str) -> tuple[int, int, str]:
        far = abs(int(c) - number) if number is not None and c.isdigit() else 10**9
        return _edit_distance(city, c), far, c

    return min(candidates, key=key)


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (ids are short; a plain dynamic programme is enough)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _bundled_cities() -> pd.DataFrame | None:
    try:
        from .geography import load_geography
    except ImportError:
        return None
    try:
        return load_geography().cities
    except FileNotFoundError:
        return None
