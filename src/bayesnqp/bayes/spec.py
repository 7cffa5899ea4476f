"""Model specs: declarative TOML files in top-level ``models/`` validated into a frozen dataclass.

A spec holds no code: the outcome, the terms, the effects and their form, the likelihood, priors (on the
standardised scale the builder documents) and sampler settings. ``spec_hash`` (sha256 of the canonical
JSON) goes into ``idata.attrs`` with the spec itself, so every fitted file says how it was made.

Example::

    id = "bayes_table3_col4"
    title = "Table 3 (4): city and year effects, correlated random effects"
    builder = "panel"
    outcome = "nqp"
    terms = ["agglomeration", "$controls"]      # "$controls" expands to the study's controls
    likelihood = "normal"
    [effects]
    city = "mundlak"                              # none | random | mundlak | fixed
    year = "zerosum"                              # none | zerosum | fixed
    [priors]
    beta = { dist = "normal", sigma = 1.0 }
    [sampler]
    draws = 1000
    tune = 1000
    [options]                                     # builder-specific, validated by the builder
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from ..errors import InputError, Problem
from ..paths import bundled
from .sampling import SamplerSettings

Likelihood = Literal["normal", "student_t", "lognormal", "beta"]
CityEffect = Literal["none", "random", "mundlak", "fixed", "bym2", "leroux"]
YearEffect = Literal["none", "zerosum", "fixed"]

_TOP_KEYS = {"id", "title", "builder", "outcome", "terms", "likelihood", "effects", "priors", "sampler",
             "options", "description"}
_SAMPLER_KEYS = {"draws", "tune", "chains", "target_accept", "sampler"}
# The model families and the [options] each one reads; anything else in a spec is an error, so no field
# is decorative. A value listed as a tuple must be one of those values.
BUILDER_OPTIONS: dict[str, dict[str, tuple[Any, ...] | None]] = {
    "panel": {"city_effects": None, "errors": None, "slopes": None, "city_param": None, "likelihoods": None},
    "iv": {},
    "mediation": {"ppc_draws": None, "sensitivity_step": None, "sensitivity": ("one_at_a_time",)},
    "car": {"mundlak": (True, False), "parametrisation": None},
    "sdm": {"model": ("sdm", "sar", "sem", "slx"), "likelihood_form": None},
}


@dataclass(frozen=True)
class ModelSpec:
    id: str
    title: str
    builder: str
    outcome: str = "nqp"
    terms: tuple[str, ...] = ()
    likelihood: Likelihood = "normal"
    effects: dict[str, str] = field(default_factory=dict)
    priors: dict[str, dict[str, Any]] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def spec_hash(self) -> str:
        canonical = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def expand_terms(self, controls: tuple[str, ...] | list[str]) -> list[str]:
        out: list[str] = []
        for t in self.terms:
            out.extend(controls if t == "$controls" else [t])
        return out

    def sampler_settings(self, base: SamplerSettings) -> SamplerSettings:
        """The run's settings with this spec's ``[sampler]`` values applied, except where the user set a
        value (``base.pinned``): command line > spec > code default."""
        return base.replace(**{k: v for k, v in self.sampler.items() if k not in base.pinned})

    def attrs(self) -> dict[str, str]:
        """For ``idata.attrs`` (netCDF attributes must be strings or numbers)."""
        return {"spec_id": self.id, "spec_hash": self.spec_hash,
                "spec": json.dumps(asdict(self), sort_keys=True, default=str)}

    def replace(self, **changes: Any) -> "ModelSpec":
        return ModelSpec(**{**asdict(self), **changes})


def prior_param(spec: ModelSpec | None, name: str, default: float, key: str = "sigma") -> float:
    """One number of a prior: the spec's ``priors.<name>.<key>``, or ``default`` where it sets none."""
    priors = spec.priors if spec is not None else {}
    return float(priors.get(name, {}).get(key, default))


def parse_spec(raw: dict[str, Any], source: str) -> ModelSpec:
    problems = [Problem(source, f"unknown key '{k}'") for k in sorted(set(raw) - _TOP_KEYS)]
    for key in ("id", "title", "builder"):
        if not isinstance(raw.get(key), str) or not raw.get(key):
            problems.append(Problem(source, f"'{key}' must be a non-empty string"))
    lik = raw.get("likelihood", "normal")
    if lik not in get_args(Likelihood):
        problems.append(Problem(source, f"likelihood must be one of {get_args(Likelihood)}, got {lik!r}"))
    effects = raw.get("effects", {})
    if effects.get("city", "none") not in get_args(CityEffect):
        problems.append(Problem(source, f"effects.city must be one of {get_args(CityEffect)}"))
    if effects.get("year", "none") not in get_args(YearEffect):
        problems.append(Problem(source, f"effects.year must be one of {get_args(YearEffect)}"))
    sampler = raw.get("sampler", {})
    problems += [Problem(source, f"unknown sampler key '{k}'") for k in sorted(set(sampler) - _SAMPLER_KEYS)]
    for name, prior in raw.get("priors", {}).items():
        if not isinstance(prior, dict) or "dist" not in prior:
            problems.append(Problem(source, f"prior '{name}' needs a 'dist'"))
    builder = raw.get("builder")
    if isinstance(builder, str) and builder not in BUILDER_OPTIONS:
        problems.append(Problem(source, f"builder must be one of {sorted(BUILDER_OPTIONS)}, got {builder!r}"))
    elif isinstance(builder, str):
        known = BUILDER_OPTIONS[builder]
        for key, value in raw.get("options", {}).items():
            if key not in known:
                problems.append(Problem(source, f"unknown option '{key}' for builder '{builder}' "
                                                f"(known: {', '.join(sorted(known)) or 'none'})"))
            elif known[key] is not None and value not in known[key]:  # type: ignore[operator]
                problems.append(Problem(source, f"option '{key}' must be one of {known[key]}, got {value!r}"))
    terms = raw.get("terms", [])
    if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms):
        problems.append(Problem(source, "'terms' must be a list of column names"))
    if problems:
        raise InputError(problems)
    return ModelSpec(id=raw["id"], title=raw["title"], builder=raw["builder"],
                     outcome=raw.get("outcome", "nqp"), terms=tuple(terms), likelihood=lik,
                     effects=dict(effects), priors=dict(raw.get("priors", {})), sampler=dict(sampler),
                     options=dict(raw.get("options", {})), description=raw.get("description", ""))


# The user's model folder for the run under way (``--models``, ``run(models=...)``): a spec there replaces
# the bundled spec of the same id. A context variable, so a notebook's other runs are not affected.
_USER_MODELS: ContextVar[Path | None] = ContextVar("user_models", default=None)
# A new analysis (an id the study does not have) can use this family: it runs beside Table 3 with the
# frequentist panel regression of the same terms and effects as its oracle.
NEW_ANALYSIS_BUILDERS = ("panel",)


@contextmanager
def user_models(folder: Path | None) -> Iterator[None]:
    """Read specs from ``folder`` before the bundled ones while the block runs."""
    token = _USER_MODELS.set(None if folder is None else Path(folder))
    try:
        yield
    finally:
        _USER_MODELS.reset(token)


def bundled_spec_ids() -> list[str]:
    return sorted(p.stem for p in bundled("models").glob("*.toml"))


def read_user_models(folder: str | Path) -> list[ModelSpec]:
    """Every spec in the user's folder, checked before anything runs: strict fields, id = file name, the
    family of a bundled id kept (its stage and oracle are that family's), and a new id only for a family
    in ``NEW_ANALYSIS_BUILDERS``. Raises InputError naming each file and problem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError([Problem(str(folder), "model folder not found (give a folder of TOML specs)")])
    paths = sorted(folder.glob("*.toml"))
    if not paths:
        raise InputError([Problem(str(folder), "no model specs (*.toml) in this folder")])
    known = set(bundled_spec_ids())
    specs, problems = [], []
    for path in paths:
        try:
            spec = load_spec(path)
        except InputError as exc:
            problems += exc.problems
            continue
        if spec.id in known:
            family = load_bundled(spec.id).builder
            if spec.builder != family:
                problems.append(Problem(str(path), f"'{spec.id}' is a '{family}' analysis; its builder cannot "
                                                   f"change to '{spec.builder}'"))
        elif spec.builder not in NEW_ANALYSIS_BUILDERS:
            problems.append(Problem(str(path), f"a new analysis ('{spec.id}' is not one of the study's) must use "
                                               f"builder {' or '.join(map(repr, NEW_ANALYSIS_BUILDERS))}; to "
                                               f"change a '{spec.builder}' model, name the file after one of "
                                               f"{', '.join(sorted(i for i in known if load_bundled(i).builder == spec.builder))}"))
        elif not spec.id.startswith("bayes_"):
            problems.append(Problem(str(path), f"a new analysis id must start with 'bayes_', got '{spec.id}'"))
        specs.append(spec)
    if problems:
        raise InputError(problems)
    return specs


def load_bundled(spec_id: str) -> ModelSpec:
    return load_spec(bundled("models") / f"{spec_id}.toml")


def load_spec(name_or_path: str | Path) -> ModelSpec:
    """Load a spec by id (the user's model folder of the run first, then the bundled ``models/``) or
    from a TOML file path."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        user = _USER_MODELS.get()
        mine = None if user is None else user / f"{name_or_path}.toml"
        path = mine if mine is not None and mine.is_file() else bundled("models") / f"{name_or_path}.toml"
    if not path.is_file():
        raise InputError([Problem(str(path), "model spec not found")])
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InputError([Problem(str(path), f"not valid TOML: {exc}")]) from None
    spec = parse_spec(raw, str(path))
    if spec.id != path.stem:
        raise InputError([Problem(str(path), f"spec id '{spec.id}' must equal the file name '{path.stem}'")])
    return spec

