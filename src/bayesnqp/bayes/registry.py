"""Model families behind one registry, keyed by a spec's ``builder``.

Every Bayesian analysis is a spec (``models/*.toml`` or the user's folder) and runs the same way:
``fit(FitRequest(study, spec, settings, oracles))`` looks up the spec's family and calls its driver,
which prepares the family's data from the study, builds the PyMC model from the spec, samples it
(``sampling.sample``) and post-processes the draws into ``BayesResult``s (``result.assemble``). What a
spec asks for is read from the spec itself (its terms, effects, priors, options and ``oracle``), so a
new spec of any family runs without code naming its id.

| builder | module | one spec gives |
|---|---|---|
| panel | ``panel`` (``groups`` for slope groups, ``likelihoods`` for several likelihoods) | one result; one per splitter (``slope_groups = "median_split"``); one for ``options.likelihoods`` |
| iv | ``iv`` | one result |
| mediation | ``mediation`` | one result |
| car | ``car`` (BYM2 / Leroux by ``effects.city``) | one result |
| sdm | ``sdm`` (SDM / SAR / SEM / SLX by ``options.model``) | one result |
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from ..data.intake import StudyData
from ..results import AnalysisResult
from .result import BayesResult
from .sampling import SamplerSettings
from .spec import ModelSpec


@dataclass(frozen=True)
class FitRequest:
    """One spec to fit on one study: the run's sampler settings and the oracles computed so far."""

    study: StudyData
    spec: ModelSpec
    settings: SamplerSettings
    oracles: Mapping[str, AnalysisResult] = field(default_factory=dict)

    @property
    def controls(self) -> list[str]:
        return list(self.study.roles.controls)

    def oracle(self, **fill: str) -> AnalysisResult | None:
        """The spec's oracle (``oracle`` with ``{splitter}`` / ``{indicator}`` filled in), or for a spec
        that names none, least squares on its own terms (``<id without bayes_>_ls``), if the run has it."""
        return self.oracles.get(oracle_id(self.spec, **fill))


def oracle_id(spec: ModelSpec, **fill: str) -> str:
    """The id of the frequentist result a spec is held against (see ``FitRequest.oracle``)."""
    return spec.oracle.format(**fill) if spec.oracle else f"{spec.id.removeprefix('bayes_')}_ls"


@dataclass(frozen=True)
class Family:
    """``fit``: the family's driver. ``unavailable``: why the study cannot run a spec of this family
    (None where it can), said before any sampling."""

    builder: str
    fit: Callable[[FitRequest], list[BayesResult]]
    unavailable: Callable[[StudyData, ModelSpec], str | None]


def _fit_panel(req: FitRequest) -> list[BayesResult]:
    from . import panel

    spec, frame = req.spec, req.study.frame
    if "likelihoods" in spec.options:
        from .likelihoods import fit_likelihoods

        return [fit_likelihoods(frame, req.controls, req.settings, spec=spec)]
    groups = spec.options.get("slope_groups")
    if groups == "median_split":
        from .groups import fit_groups

        return fit_groups(frame, req.controls, list(req.study.roles.splitters), req.settings, dict(req.oracles),
                          spec=spec)
    if groups == "province":
        from ..data.geography import load_geography
        from .groups import fit_province_slopes

        assert req.study.provinces is not None  # unavailable() says so first
        geo = load_geography().cities  # plot fonts may lack CJK glyphs: label provinces in pinyin
        return [fit_province_slopes(frame, req.controls, req.study.provinces, req.settings, spec=spec,
                                    labels=dict(zip(geo["province"], geo["province_pinyin"])))]
    return [panel.fit_panel(frame, req.controls, req.settings, spec, req.oracle())]


def _panel_unavailable(study: StudyData, spec: ModelSpec) -> str | None:
    groups = spec.options.get("slope_groups")
    if groups == "median_split" and not study.roles.splitters:
        return "group-specific slopes skipped: no splitter columns"
    if groups == "province" and study.provinces is None:
        return ("province-varying slopes skipped: the regions are not the bundled 280 cities, so their "
                "provinces are unknown")
    return None


def _fit_iv(req: FitRequest) -> list[BayesResult]:
    from .iv import fit_iv

    instrument = req.study.roles.instrument
    assert instrument  # unavailable() says so first
    return [fit_iv(req.study.frame, req.controls, instrument, req.settings, req.oracle(), spec=req.spec)]


def _fit_mediation(req: FitRequest) -> list[BayesResult]:
    from .mediation import fit_mediation

    oracles = {}
    if req.spec.oracle:  # one oracle per indicator
        for pair in req.study.roles.mechanisms.values():
            for indicator in pair:
                found = req.oracle(indicator=indicator)
                if found is not None:
                    oracles[f"table4_{indicator}"] = found
    return [fit_mediation(req.study.frame, req.controls, dict(req.study.roles.mechanisms), req.settings,
                          oracles, spec=req.spec)]


def _fit_car(req: FitRequest) -> list[BayesResult]:
    from .car import fit_car

    assert req.study.weights is not None
    kind: Literal["bym2", "leroux"] = "leroux" if req.spec.effects.get("city") == "leroux" else "bym2"
    return [fit_car(req.study.frame, req.controls, req.study.weights, req.settings, req.oracle(), kind=kind,
                    spec=req.spec)]


def _fit_sdm(req: FitRequest) -> list[BayesResult]:
    from .sdm import fit_sdm

    assert req.study.weights is not None
    member = req.spec.options.get("model", "sdm")
    return [fit_sdm(req.study.frame, req.controls, req.study.weights, req.settings, req.oracle(), model=member,
                    spec=req.spec)]


def _needs_instrument(study: StudyData, spec: ModelSpec) -> str | None:
    return None if study.roles.instrument else "Bayesian IV skipped: no distance column"


def _needs_mechanisms(study: StudyData, spec: ModelSpec) -> str | None:
    return None if study.roles.mechanisms else "latent mediator model skipped: no mechanism indicators"


def _needs_weights(study: StudyData, spec: ModelSpec) -> str | None:
    return None if study.weights is not None else "spatial model skipped: no spatial weights for these regions"


FAMILIES: dict[str, Family] = {
    "panel": Family("panel", _fit_panel, _panel_unavailable),
    "iv": Family("iv", _fit_iv, _needs_instrument),
    "mediation": Family("mediation", _fit_mediation, _needs_mechanisms),
    "car": Family("car", _fit_car, _needs_weights),
    "sdm": Family("sdm", _fit_sdm, _needs_weights),
}


def family(builder: str) -> Family:
    try:
        return FAMILIES[builder]
    except KeyError:
        raise ValueError(f"no model family '{builder}' (known: {', '.join(sorted(FAMILIES))})") from None


def fit(request: FitRequest) -> list[BayesResult]:
    """Fit one spec with its family's driver."""
    return family(request.spec.builder).fit(request)


def unavailable(study: StudyData, spec: ModelSpec) -> str | None:
    """Why ``study`` cannot run ``spec`` (None where it can)."""
    return family(spec.builder).unavailable(study, spec)
