"""Display names: the words the report uses for the panel's units, outcome and treatment.

Inside the panel the roles are always ``city``/``year``/``nqp``/``agglomeration`` (ARCHITECTURE.md); the
report shows the user's words instead. They come from the config's ``[labels]`` section when given, else
from the user's column names, and only for the paper's own design (the bundled 280 cities with the
paper's roles) from the paper. ``Labels.paper`` says whether comparisons with the published numbers make
sense at all.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import names

# Words of the paper's design; substituted in every display string when the user's words differ.
_PAPER_UNIT, _PAPER_UNITS = "city", "cities"
_PAPER_OUTCOME, _PAPER_TREATMENT = "NQP", "agglomeration"
_GENERIC_IDS = {"id", "code", "adcode", "unit", "unit_id", "region_id", "key", ""}


def plural(word: str) -> str:
    """English plural of a unit word (region -> regions, county -> counties, person -> people)."""
    irregular = {"person": "people", "child": "children", "man": "men", "woman": "women"}
    if word in irregular:
        return irregular[word]
    if re.search(r"[^aeiou]y$", word):
        return word[:-1] + "ies"
    if re.search(r"(s|x|z|ch|sh)$", word):
        return word + "es"
    return word + "s"


@dataclass(frozen=True)
class Labels:
    """Words for titles, row labels and sentences, beside the user's column names.

    ``columns`` maps each internal role (``city``, ``year``, ``nqp``, ``agglomeration``) to the user's
    column ('' where the column was computed, e.g. the entropy index from raw indicators).
    """

    unit: str = _PAPER_UNIT
    units: str = _PAPER_UNITS
    outcome: str = _PAPER_OUTCOME
    treatment: str = _PAPER_TREATMENT
    paper: bool = True
    columns: dict[str, str] = field(default_factory=dict)
    source: str = "paper"  # paper | columns | config (where the words came from)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    # -- words -------------------------------------------------------------------------------------
    @property
    def Unit(self) -> str:  # noqa: N802 - sentence-initial form
        return self.unit[:1].upper() + self.unit[1:]

    @property
    def unit_years(self) -> str:
        return f"{self.unit}-years"

    def term(self, name: str) -> str:
        """A row or column label: internal role names become the user's words (W_agglomeration ->
        'W x <treatment>'); everything else is returned as it is."""
        if not isinstance(name, str):
            return name
        if name == names.NQP:
            return self.outcome
        if name == names.AGGLOMERATION:
            return self.treatment
        m = re.fullmatch(r"W_(.+)", name)
        if m:
            return f"W x {self.term(m.group(1))}"
        return re.sub(r"(?<![A-Za-z])agglomeration(?![A-Za-z])", self.treatment,
                      re.sub(r"(?<![A-Za-z])nqp(?![A-Za-z])", self.outcome, name))

    def text(self, text: str) -> str:
        """A sentence or caption in the user's words (no-op for the paper's own labels)."""
        if not text:
            return text
        out = text
        if self.outcome != _PAPER_OUTCOME:
            out = re.sub(r"\b(?:NQP|nqp)\b", self.outcome, out)
        if self.treatment != _PAPER_TREATMENT:
            out = re.sub(r"\bagglomeration\b", self.treatment, out)
            out = re.sub(r"\bAgglomeration\b", self.treatment[:1].upper() + self.treatment[1:], out)
        if self.unit != _PAPER_UNIT:
            out = re.sub(r"\bcity-years\b", self.unit_years, out)
            out = re.sub(r"\bcities\b", self.units, out)
            out = re.sub(r"\bCities\b", self.units[:1].upper() + self.units[1:], out)
            out = re.sub(r"\bcity\b", self.unit, out)
            out = re.sub(r"\bCity\b", self.Unit, out)
        return out


def is_paper_design(study: Any) -> bool:
    """The bundled 280 cities with the paper's outcome, treatment and controls (built or given under the
    paper's names): only then do the paper's published numbers make a comparison."""
    from ..data.geography import load_boundaries

    r = study.roles
    try:
        bundled = set(load_boundaries())
    except Exception:  # noqa: BLE001 - no geography means no paper design
        return False
    if set(study.cities) != bundled:
        return False
    outcome_ok = (r.outcome_source in ("", names.NQP)
                  and (bool(r.outcome_source) or tuple(r.indicators) == names.NQP_INDICATOR_NAMES))
    treatment_ok = (r.treatment_source in ("", names.AGGLOMERATION)
                    and (bool(r.treatment_source)
                         or tuple(r.employment) == (names.DIGITAL_EMPLOYMENT, names.TOTAL_EMPLOYMENT)))
    return outcome_ok and treatment_ok and tuple(r.controls) == names.CONTROLS


def resolve_labels(study: Any) -> Labels:
    """Labels from the config's [labels], then the user's column names, then (paper design only) the paper."""
    cfg = study.config
    r = study.roles
    given: dict[str, str] = dict(getattr(cfg, "labels", {}) or {})
    paper = is_paper_design(study)
    columns = {names.CITY: cfg.city, names.YEAR: cfg.year, names.NQP: r.outcome_source,
               names.AGGLOMERATION: r.treatment_source}
    if paper:
        unit, outcome, treatment = _PAPER_UNIT, _PAPER_OUTCOME, _PAPER_TREATMENT
    else:
        # a generic id column name ("id", "adcode") is no word for a unit; then the geography decides
        word = cfg.city if cfg.city.lower() in _GENERIC_IDS else (
            re.sub(r"[_\s-]*(id|code|key)$", "", cfg.city, flags=re.I) or cfg.city)  # person_id -> person
        unit = word if word.lower() not in _GENERIC_IDS else (
            _PAPER_UNIT if set(study.cities) <= _bundled() else "unit")
        outcome = r.outcome_source or ("entropy index" if r.indicators else "outcome")
        treatment = r.treatment_source or ("location quotient" if r.employment else "treatment")
    unit = given.get("unit", unit)
    units = given.get("units", plural(unit) if "unit" in given or not paper else _PAPER_UNITS)
    source = "config" if given else ("paper" if paper else "columns")
    return Labels(unit=unit, units=units, outcome=given.get("outcome", outcome),
                  treatment=given.get("treatment", treatment), paper=paper, columns=columns, source=source)


def _bundled() -> set[str]:
    from ..data.geography import load_boundaries

    try:
        return set(load_boundaries())
    except Exception:  # noqa: BLE001
        return set()


__all__ = ["Labels", "is_paper_design", "plural", "resolve_labels"]
