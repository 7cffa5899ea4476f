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
from .sampling import SAMPLERS, SamplerSettings

Likelihood = Literal["normal", "student_t", "lognormal", "beta"]
CityEffect = Literal["none", "random", "mundlak", "fixed", "bym2", "leroux"]
YearEffect = Literal["none", "zerosum", "fixed"]

_TOP_KEYS = {"id", "title", "builder", "outcome", "terms", "likelihood", "effects", "priors", "sampler",
             "options", "description", "oracle"}
_SAMPLER_KEYS = {"draws", "tune", "chains", "target_accept", "sampler"}
# The model families and the [options] each one reads; anything else in a spec is an error, so no field
# is decorative. A value listed as a tuple must be one of those values.
BUILDER_OPTIONS: dict[str, dict[str, tuple[Any, ...] | None]] = {
    "panel": {"city_effects": None, "errors": None, "errors_by_loo": None, "slopes": None, "city_param": None,
              "likelihoods": None, "slope_groups": ("median_split", "province"), "prior_predictive": (True, False)},
    "iv": {},
    "mediation": {"ppc_draws": None, "sensitivity_step": None},
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
    # The frequentist analysis this model is held against ("" for none; a new panel analysis from the
    # user's folder then gets least squares on its own terms). "{splitter}" / "{indicator}" are filled in
    # per median split / per indicator.
    oracle: str = ""

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
        """The run's settings with this spec's ``[sampler]`` values applied where the caller left the code
        default: command line (``base.pinned``) > spec > code default. A value a caller put into
        ``SamplerSettings`` itself (other than the default) also wins over the spec."""
        default = SamplerSettings()
        return base.replace(**{k: v for k, v in self.sampler.items()
                               if k not in base.pinned and getattr(base, k) == getattr(default, k)})

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
    for key in ("draws", "tune", "chains"):
        if key in sampler and (not isinstance(sampler[key], int) or isinstance(sampler[key], bool)
                               or sampler[key] < (0 if key == "tune" else 1)):
            problems.append(Problem(source, f"sampler.{key} must be a whole number"
                                             f"{' >= 0' if key == 'tune' else ' >= 1'}, got {sampler[key]!r}"))
    if "target_accept" in sampler and not (isinstance(sampler["target_accept"], (int, float))
                                           and 0.5 <= sampler["target_accept"] < 1):
        problems.append(Problem(source, f"sampler.target_accept must lie in [0.5, 1), got {sampler['target_accept']!r}"))
    if "sampler" in sampler and sampler["sampler"] not in SAMPLERS:
        problems.append(Problem(source, f"sampler.sampler must be one of {SAMPLERS}, got {sampler['sampler']!r}"))
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
    if isinstance(builder, str) and builder in BUILDER_PRIORS:
        for name in sorted(set(raw.get("priors", {})) - BUILDER_PRIORS[builder]):
            problems.append(Problem(source, f"unknown prior '{name}' for builder '{builder}' "
                                            f"(known: {', '.join(sorted(BUILDER_PRIORS[builder]))})"))
    terms = raw.get("terms", [])
    if not isinstance(terms, list) or not all(isinstance(t, str) for t in terms):
        problems.append(Problem(source, "'terms' must be a list of column names"))
    if not isinstance(raw.get("oracle", ""), str):
        problems.append(Problem(source, f"'oracle' must be an analysis id (a string), got {raw['oracle']!r}"))
    if problems:
        raise InputError(problems)
    return ModelSpec(id=raw["id"], title=raw["title"], builder=raw["builder"],
                     outcome=raw.get("outcome", "nqp"), terms=tuple(terms), likelihood=lik,
                     effects=dict(effects), priors=dict(raw.get("priors", {})), sampler=dict(sampler),
                     options=dict(raw.get("options", {})), description=raw.get("description", ""),
                     oracle=raw.get("oracle", ""))

# The [priors] each family reads (by name); a name it does not read (a typo, another family's) is refused.
BUILDER_PRIORS: dict[str, frozenset[str]] = {
    "panel": frozenset({"alpha", "beta", "sigma", "gamma", "sigma_city", "year", "nu", "group_mean", "group_sd",
                        "phi", "city_scale_sd", "slope_sd"}),
    "iv": frozenset({"beta", "sigma", "corr"}),
    "mediation": frozenset({"a", "b", "c", "loading", "theta", "sigma", "zeta_sd", "zeta_corr"}),
    "car": frozenset({"alpha", "beta", "gamma", "sigma", "sigma_city", "sigma_year", "year", "rho"}),
    "sdm": frozenset({"beta", "theta", "sigma", "rho"}),
}

# The user's model folder for the run under way (``--models``, ``run(models=...)``): a spec there replaces
# the bundled spec of the same id. A context variable, so a notebook's other runs are not affected.
_USER_MODELS: ContextVar[Path | None] = ContextVar("user_models", default=None)


@contextmanager
def user_models(folder: Path | None) -> Iterator[None]:
    """Read specs from ``folder`` before the bundled ones while the block runs."""
    token = _USER_MODELS.set(None if folder is None else Path(folder))
    try:
        yield
    finally:
        _USER_MODELS.reset(token)


# What the panel family's builder supports (bayes/panel.py builds from these).
PANEL_CITY_EFFECTS = ("none", "random", "mundlak")
PANEL_YEAR_EFFECTS = ("none", "zerosum", "fixed")
PANEL_LIKELIHOODS = ("normal", "student_t", "lognormal")


def panel_support_problems(spec: ModelSpec) -> list[str]:
    """Why the panel family cannot build ``spec`` (empty if it can), said before anything runs."""
    out = []
    if spec.effects.get("city", "none") not in PANEL_CITY_EFFECTS:
        out.append(f"the panel family's city effects are {PANEL_CITY_EFFECTS}, got {spec.effects['city']!r}")
    if spec.effects.get("year", "none") not in PANEL_YEAR_EFFECTS:
        out.append(f"the panel family's year effects are {PANEL_YEAR_EFFECTS}, got {spec.effects['year']!r}")
    if spec.likelihood not in PANEL_LIKELIHOODS:
        out.append(f"the panel family's likelihoods are {PANEL_LIKELIHOODS}, got {spec.likelihood!r}")
    if not spec.terms:
        out.append("'terms' must name at least one regressor")
    return out


def bundled_spec_ids() -> list[str]:
    return sorted(p.stem for p in bundled("models").glob("*.toml"))


def read_user_models(folder: str | Path) -> list[ModelSpec]:
    """Every spec in the user's folder, checked before anything runs: strict fields, id = file name, the
    family of a bundled id kept (its stage and oracle are that family's), and a new id of any family that
    the family can build. Raises InputError naming each file and problem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError([Problem(str(folder), "model folder not found (give a folder of TOML specs)")])
    paths = sorted(folder.glob("*.toml"))
    if not paths:
        raise InputError([Problem(str(folder), "no model specs (*.toml) in this folder")])
    families = {spec_id: load_bundled(spec_id).builder for spec_id in bundled_spec_ids()}
    specs, problems = [], []
    for path in paths:
        try:
            spec = load_spec(path)
        except InputError as exc:
            moved = _moved_family(path, families)  # the root cause, if the file also changed family
            problems += [Problem(str(path), moved)] if moved else exc.problems
            continue
        specs.append(spec)
        problems += [Problem(str(path), p) for p in _user_spec_problems(spec, families)]
    if problems:
        raise InputError(problems)
    return specs


def _moved_family(path: Path, families: dict[str, str]) -> str | None:
    """The message for a bundled id whose file names another builder (its other fields are then judged
    against the wrong family, so this is the one problem worth reporting)."""
    try:
        builder = tomllib.loads(path.read_text(encoding="utf-8")).get("builder")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None
    family = families.get(path.stem)
    if family is None or builder == family:
        return None
    return f"'{path.stem}' is a '{family}' analysis; its builder cannot change to {builder!r}"


def _user_spec_problems(spec: ModelSpec, families: dict[str, str]) -> list[str]:
    """Why a spec from the user's folder cannot run (``families``: bundled id -> builder)."""
    if spec.id in families:
        member = spec.id.removeprefix("bayes_")
        if spec.builder != families[spec.id]:
            return [f"'{spec.id}' is a '{families[spec.id]}' analysis; its builder cannot change to '{spec.builder}'"]
        if spec.builder == "sdm" and spec.options.get("model", member) != member:
            return [f"options.model must be '{member}' in {spec.id} (the file name says which model it is)"]
        home = load_bundled(spec.id)
        # the options that say which analysis this is (not how it is fitted) stay the bundled ones
        return [f"options.{key} must stay {home.options.get(key)!r} in {spec.id} (it says which analysis this is); "
                f"for another analysis use a new id" for key in ANALYSIS_OPTIONS
                if (key in home.options) != (key in spec.options)
                or (key != "likelihoods" and home.options.get(key) != spec.options.get(key))] + _oracle_problems(spec)
    if not spec.id.startswith("bayes_"):
        return [f"a new analysis id must start with 'bayes_', got '{spec.id}'"]
    if spec.builder == "sdm" and "model" not in spec.options:
        return [f"a new spatial Durbin-family analysis must say which member it is: options.model = "
                f"{' | '.join(map(repr, BUILDER_OPTIONS['sdm']['model'] or ()))}"]
    if spec.builder == "car" and spec.effects.get("city") not in ("bym2", "leroux"):
        return ["a CAR analysis needs effects.city = 'bym2' or 'leroux'"]
    return (panel_support_problems(spec) if spec.builder == "panel" else []) + _oracle_problems(spec)


# Panel options that decide which analysis a spec is (group slopes, province slopes, a likelihood
# comparison), not how it is fitted; a replacement of a bundled spec keeps them.
ANALYSIS_OPTIONS = ("slope_groups", "likelihoods")


def _oracle_problems(spec: ModelSpec) -> list[str]:
    """An oracle id's placeholders must be ones the family fills: {splitter} for median-split groups,
    {indicator} for the mediation model (one oracle per indicator, so it needs it)."""
    fills = {"splitter": "x"} if spec.options.get("slope_groups") == "median_split" else \
        {"indicator": "x"} if spec.builder == "mediation" else {}
    if not spec.oracle:
        return []
    try:
        spec.oracle.format(**fills)
    except (KeyError, IndexError, ValueError):
        return [f"oracle {spec.oracle!r}: only {', '.join('{' + k + '}' for k in fills) or 'no placeholder'} "
                f"can be filled in for this spec"]
    if spec.builder == "mediation" and "{indicator}" not in spec.oracle:
        return [f"oracle {spec.oracle!r}: the mediation model is held against one result per indicator, "
                "so its oracle needs {indicator} (e.g. 'table4_{indicator}')"]
    return []


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
    home = bundled("models") / f"{spec.id}.toml"
    if not spec.oracle and home.is_file() and path.resolve() != home.resolve():
        # the user's copy of a bundled analysis keeps its oracle unless it names another
        spec = spec.replace(oracle=load_bundled(spec.id).oracle)
    return spec

