"""The study, stage by stage: data -> measures -> frequentist oracles -> Bayesian models -> checks -> report.

``run_study`` validates everything before it writes anything, builds the report in a hidden sibling
folder, and moves it into place only when the whole run has finished, so a failed run leaves no
half-written output. ``cli.py`` only parses arguments and calls this.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from .bayes.sampling import SamplerSettings
from .config import load_config
from .data.intake import StudyData, load_study
from .errors import ConvergenceError, InputError, Problem
from .report.html import ReportBuilder
from .report.overview import finish_report
from .results import json_safe
from .stages.context import RunContext
from .stages.data import stage_data
from .stages.bayesian import (
    stage_agreement,
    stage_bayes_groups,
    stage_bayes_iv,
    stage_bayes_mediation,
    stage_bayes_panel,
)
from .stages.frequentist import stage_frequentist
from .stages.spatial import stage_spatial_bayes, stage_spatial_frequentist

QUICK = {"draws": 300, "tune": 300, "chains": 2}


@dataclass(frozen=True)
class RunOptions:
    out: Path | None = None
    draws: int = 1000
    tune: int = 1000
    chains: int = 4
    seed: int = 20240601
    quick: bool = False
    strict: bool = False
    sampler: str = "nutpie"
    bayes: bool = True  # False: data and frequentist stages only (seconds instead of minutes)

    def sampler_settings(self) -> SamplerSettings:
        draws, tune, chains = (QUICK["draws"], QUICK["tune"], QUICK["chains"]) if self.quick else (
            self.draws, self.tune, self.chains)
        return SamplerSettings(draws=draws, tune=tune, chains=chains, seed=self.seed,
                               sampler=self.sampler)  # type: ignore[arg-type]


Stage = Callable[[RunContext], None]


def default_out(study: StudyData) -> Path:
    return Path("reports") / study.data_name


STAGES: list[tuple[str, Stage]] = [
    ("data and measures", stage_data),
    ("frequentist oracles", stage_frequentist),
    ("spatial oracles", stage_spatial_frequentist),
    ("Bayesian panel models", stage_bayes_panel),
    ("group-specific slopes", stage_bayes_groups),
    ("Bayesian IV", stage_bayes_iv),
    ("latent mediator model", stage_bayes_mediation),
    ("Bayesian spatial models", stage_spatial_bayes),
    ("agreement", stage_agreement),
]
BAYES_STAGES = {stage_bayes_panel, stage_bayes_groups, stage_bayes_iv, stage_bayes_mediation, stage_spatial_bayes,
                stage_agreement}


def run_study(data: str | Path | None, config_path: str | Path | None, options: RunOptions,
              progress: Callable[[str], None] = lambda msg: None) -> Path:
    """Run every analysis the data allow; return the output folder. Raises InputError before writing."""
    config = load_config(config_path)
    progress("reading and validating the data")
    study = load_study(data, config)
    out = Path(options.out) if options.out is not None else default_out(study)
    if out.exists() and not out.is_dir():
        raise InputError([Problem(str(out), "output path exists and is not a folder")])
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    settings = options.sampler_settings()
    summary: dict[str, Any] = {
        "bayesnqp_version": __version__,
        "data": {"source": study.source, "synthetic": study.synthetic, "n_cities": len(study.cities),
                 "years": study.years, "n_obs": int(len(study.frame)), "balanced": study.balanced,
                 "outcome": study.roles.outcome, "treatment": study.roles.treatment,
                 "controls": list(study.roles.controls),
                 "weights": study.weights_source},
        "settings": {"draws": settings.draws, "tune": settings.tune, "chains": settings.chains,
                     "seed": settings.seed, "sampler": settings.sampler, "quick": options.quick,
                     "strict": options.strict, "bayes": options.bayes},
        "descriptives": {}, "index_weights": {}, "analyses": {}, "skipped": {}, "flagged": [], "failed": {},
    }
    title = "bayesnqp report: " + study.data_name
    meta = {"data": study.source, "cities x years": f"{len(study.cities)} x {len(study.years)}",
            "sampler": f"{settings.sampler}, {settings.chains} chains x {settings.draws} draws "
                       f"(+{settings.tune} tune), seed {settings.seed}" + (" [quick]" if options.quick else ""),
            "bayesnqp": __version__}
    try:
        (staging / "fits").mkdir(parents=True)
        report = ReportBuilder(staging, title=title, synthetic=study.synthetic, meta=meta)
        ctx = RunContext(study=study, settings=settings, report=report, out=staging, summary=summary,
                         progress=progress)
        for label, stage in STAGES:
            if not options.bayes and stage in BAYES_STAGES:
                continue
            progress(label)
            stage(ctx)
        summary["flagged"] = list(ctx.flagged)
        finish_report(ctx, bayes_ran=options.bayes)  # overview box, flags, Bayesian paper tables, labels
        (staging / "summary.json").write_text(json.dumps(json_safe(summary), indent=2, ensure_ascii=False),
                                              encoding="utf-8")
        report.render()
        if options.strict and (ctx.flagged or ctx.failed):
            raise ConvergenceError("--strict: " + "; ".join([*ctx.flagged, *ctx.failed]))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
