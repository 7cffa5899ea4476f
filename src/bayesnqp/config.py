"""The study config: a TOML file mapping the user's column names to the roles of the study.

Every key is optional; the defaults are the paper's names (names.py), so the bundled demo needs no config.
A role given explicitly in the config must exist in the data (else an error names it); a role left at its
default is used when its columns are present and skipped, with a one-line reason in the report, when
none of them is.

    [columns]
    city = "city"                 # region id (6-digit adcode for the 280 cities; any string otherwise)
    year = "year"
    city_name = "city_name"       # optional label
    outcome = ""                  # a ready NQP column; if set, the indicators are not needed
    indicators = [...]            # raw NQP indicators (default: the paper's 16)
    negative_indicators = []      # indicators with a negative attribute
    treatment = ""                # a ready agglomeration column; else the two employment columns
    digital_employment = "digital_employment"
    total_employment = "total_employment"
    controls = ["develop", "unemployed", "finance", "human", "traffic", "support"]
    splitters = ["digital_support", "nqp_emphasis", "marketization", "market_integration", "gov_dominance"]
    instrument = "dist_hangzhou"  # distance to Hangzhou (km); taken from the geography when absent
    nonnegative = []              # extra columns that must be >= 0 (employment and indicators always)

    [mechanisms]                  # mechanism -> its two indicators
    inno = ["inno_rd_staff", "inno_patents_pc"]

    [spatial]
    weights = ""                  # GAL or edge-list CSV for regions that are not the 280 cities
    enabled = "auto"              # auto | true | false

    [analysis]
    se = "cluster"                # cluster | iid | hetero
    allow_unbalanced = false      # true: missing city-years allowed; analyses needing balance are skipped

    [labels]                      # the words of the report (default: from the column names; the paper's
    unit = "district"             # words only for the paper's own design)
    units = "districts"           # plural (default: unit + s)
    outcome = "log sales"
    treatment = "broadband share"
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import names
from .errors import InputError, Problem

SEType = Literal["cluster", "iid", "hetero"]

_SECTIONS: dict[str, set[str]] = {
    "columns": {"city", "year", "city_name", "outcome", "indicators", "negative_indicators", "treatment",
                "digital_employment", "total_employment", "controls", "splitters", "instrument",
                "nonnegative"},
    "mechanisms": set(),  # free keys
    "spatial": {"weights", "enabled"},
    "analysis": {"se", "allow_unbalanced"},
    "labels": {"unit", "units", "outcome", "treatment"},
}


@dataclass(frozen=True)
class StudyConfig:
    """Roles resolved to column names. ``explicit`` lists the keys the user set (they must exist)."""

    city: str = "city"
    year: str = "year"
    city_name: str = "city_name"
    outcome: str = ""
    indicators: tuple[str, ...] = names.NQP_INDICATOR_NAMES
    negative_indicators: tuple[str, ...] = ()
    treatment: str = ""
    digital_employment: str = names.DIGITAL_EMPLOYMENT
    total_employment: str = names.TOTAL_EMPLOYMENT
    controls: tuple[str, ...] = names.CONTROLS
    splitters: tuple[str, ...] = names.SPLITTERS
    instrument: str = names.DIST_HANGZHOU
    nonnegative: tuple[str, ...] = ()
    mechanisms: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(names.MECHANISMS))
    weights_file: str = ""
    spatial: Literal["auto", "true", "false"] = "auto"
    se: SEType = "cluster"
    allow_unbalanced: bool = False
    labels: dict[str, str] = field(default_factory=dict)  # [labels]: display words for the report
    explicit: frozenset[str] = frozenset()
    source: str = "(defaults)"


def load_config(path: str | Path | None) -> StudyConfig:
    """Read and check a study config; ``None`` gives the paper's defaults."""
    if path is None:
        return StudyConfig()
    path = Path(path)
    src = str(path)
    if not path.is_file():
        raise InputError([Problem(src, "config file not found")])
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError([Problem(src, f"not valid TOML: {exc}")]) from None
    return parse_config(raw, src, base_dir=path.parent)


def parse_config(raw: dict[str, Any], src: str, base_dir: Path | None = None) -> StudyConfig:
    problems: list[Problem] = []
    for section in sorted(set(raw) - set(_SECTIONS)):
        problems.append(Problem(src, f"unknown section [{section}] (known: {', '.join(_SECTIONS)})"))
    for section, allowed in _SECTIONS.items():
        body = raw.get(section, {})
        if not isinstance(body, dict):
            problems.append(Problem(src, f"[{section}] must be a table"))
            continue
        if allowed:
            for key in sorted(set(body) - allowed):
                problems.append(Problem(src, f"unknown key '{key}' in [{section}]"))
    if problems:
        raise InputError(problems)

    cols = raw.get("columns", {})
    kwargs: dict[str, Any] = {}
    explicit: set[str] = set()
    for key, value in cols.items():
        if key in {"indicators", "negative_indicators", "controls", "splitters", "nonnegative"}:
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                problems.append(Problem(src, f"[columns] {key} must be a list of column names"))
                continue
            kwargs[key] = tuple(value)
        else:
            if not isinstance(value, str):
                problems.append(Problem(src, f"[columns] {key} must be a column name (string)"))
                continue
            kwargs[key] = value
        explicit.add(key)
    if "mechanisms" in raw:
        mech: dict[str, tuple[str, ...]] = {}
        for name, pair in raw["mechanisms"].items():
            if not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(v, str) for v in pair):
                problems.append(Problem(src, f"[mechanisms] {name} must list exactly two indicator columns"))
                continue
            mech[name] = tuple(pair)
        kwargs["mechanisms"] = mech
        explicit.add("mechanisms")
    spatial = raw.get("spatial", {})
    if "weights" in spatial:
        wpath = Path(spatial["weights"])
        if base_dir is not None and not wpath.is_absolute():
            wpath = base_dir / wpath
        kwargs["weights_file"] = str(wpath)
    if "enabled" in spatial:
        value = str(spatial["enabled"]).lower()
        if value not in ("auto", "true", "false"):
            problems.append(Problem(src, "[spatial] enabled must be auto, true or false"))
        kwargs["spatial"] = value
    analysis = raw.get("analysis", {})
    if "se" in analysis:
        if analysis["se"] not in ("cluster", "iid", "hetero"):
            problems.append(Problem(src, "[analysis] se must be cluster, iid or hetero"))
        kwargs["se"] = analysis["se"]
    if "allow_unbalanced" in analysis:
        if not isinstance(analysis["allow_unbalanced"], bool):
            problems.append(Problem(src, "[analysis] allow_unbalanced must be true or false"))
        kwargs["allow_unbalanced"] = analysis["allow_unbalanced"]
    labels: dict[str, str] = {}
    for key, value in raw.get("labels", {}).items():
        if not isinstance(value, str) or not value.strip():
            problems.append(Problem(src, f"[labels] {key} must be a non-empty string"))
        elif len(value) > 60 or "\n" in value:
            problems.append(Problem(src, f"[labels] {key} must be one short line (at most 60 characters)"))
        else:
            labels[key] = value.strip()
    if labels:
        kwargs["labels"] = labels
    if kwargs.get("outcome") and "indicators" in explicit:
        problems.append(Problem(src, "[columns] give either 'outcome' (a ready index) or 'indicators', not both"))
    if problems:
        raise InputError(problems)
    return StudyConfig(**kwargs, explicit=frozenset(explicit), source=src)
