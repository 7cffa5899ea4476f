"""The study, stage by stage: data -> measures -> frequentist oracles -> Bayesian models -> checks -> report.

``run_study`` validates everything before it writes anything, builds the report in a hidden sibling
folder, and moves it into place only when the whole run has finished, so a failed run leaves no
half-written output. ``cli.py`` only parses arguments and calls this.
"""

from __future__ import annotations

import json
import os
import shutil
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .bayes.sampling import SamplerSettings
from .config import load_config
from .data.describe import table2_comparison
from .data.intake import StudyData, load_study
from .errors import ConvergenceError
from .report.html import ReportBuilder
from .results import json_safe

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

    def sampler_settings(self) -> SamplerSettings:
        draws, tune, chains = (QUICK["draws"], QUICK["tune"], QUICK["chains"]) if self.quick else (
            self.draws, self.tune, self.chains)
        return SamplerSettings(draws=draws, tune=tune, chains=chains, seed=self.seed,
                               sampler=self.sampler)  # type: ignore[arg-type]


@dataclass
class RunContext:
    """What every stage reads and adds to."""

    study: StudyData
    options: RunOptions
    settings: SamplerSettings
    report: ReportBuilder
    out: Path
    summary: dict[str, Any]
    oracles: dict[str, Any] = field(default_factory=dict)  # frequentist AnalysisResults by id
    bayes: dict[str, Any] = field(default_factory=dict)  # BayesResults by id
    flagged: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def add_analysis(self, analysis_id: str, block: dict[str, Any]) -> None:
        self.summary["analyses"][analysis_id] = json_safe(block)

    def skip(self, analysis_id: str, reason: str) -> None:
        self.summary["skipped"][analysis_id] = reason


Stage = Callable[[RunContext], None]


def default_out(study: StudyData) -> Path:
    return Path("reports") / study.data_name


def stage_data(ctx: RunContext) -> None:
    study = ctx.study
    r = study.roles
    sec = ctx.report.section("data", "Data and measures")
    lines = [f"Source: {study.source}. {len(study.cities)} cities x {len(study.years)} years "
             f"({study.years[0]}-{study.years[-1]}), {len(study.frame)} city-years."]
    if study.synthetic:
        lines.append("These are SYNTHETIC DEMO DATA: the numbers are generated (with the real geography of "
                     "the 280 cities) to resemble the paper's Table 2; they are not statistics of any city.")
    lines.append("Outcome: " + ("the entropy-weight index over " + f"{len(r.indicators)} raw indicators "
                                "(pooled min-max normalisation, shift 1e-4)" if r.indicators
                                else f"the ready column '{r.outcome}'") +
                 ". Treatment: " + ("the location quotient of digital employment (eq. 3, per-year totals)"
                                    if r.employment else f"the ready column '{r.treatment}'") + ".")
    if study.weights is not None:
        w = study.weights
        lo, hi = w.rho_bounds
        lines.append(f"Spatial weights: {study.weights_source}; {w.n} regions, {len(w.edges)} edges, "
                     f"{w.n_components} connected component(s), islands: {', '.join(w.islands) or 'none'}. "
                     f"Row-standardised W; admissible rho in ({lo:.4f}, {hi:.0f}).")
    ctx.report.text(sec, "\n\n".join(lines))
    for item in study.skipped:
        ctx.report.skip(sec, item.reason)
        ctx.skip(item.id, item.reason)
    t2 = table2_comparison(study.frame, r.outcome, r.treatment, r.controls)
    ctx.report.table(sec, "table2_descriptives", t2, "Table 2 - descriptive statistics, this panel beside the paper",
                     note="paper_* columns: the paper's Table 2 (N = 2,800). skew: sample skewness of this panel.")
    ctx.summary["descriptives"] = {str(k): row.to_dict() for k, row in t2.iterrows()}
    if study.index_weights is not None:
        ctx.report.table(sec, "index_weights", study.index_weights,
                         "Entropy weights of the NQP indicators (sum to 1)")
        ctx.summary["index_weights"] = study.index_weights["weight"].to_dict()


STAGES: list[tuple[str, Stage]] = [("data and measures", stage_data)]


def run_study(data: str | Path | None, config_path: str | Path | None, options: RunOptions,
              progress: Callable[[str], None] = lambda msg: None) -> Path:
    """Run every analysis the data allow; return the output folder. Raises InputError before writing."""
    config = load_config(config_path)
    progress("reading and validating the data")
    study = load_study(data, config)
    out = Path(options.out) if options.out is not None else default_out(study)
    if out.exists() and not out.is_dir():
        from .errors import InputError, Problem

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
                     "strict": options.strict},
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
        ctx = RunContext(study=study, options=options, settings=settings, report=report, out=staging,
                         summary=summary)
        for label, stage in STAGES:
            progress(label)
            stage(ctx)
        summary["flagged"] = ctx.flagged
        if ctx.flagged:
            sec = report.section("diagnostics", "Convergence flags")
            for item in ctx.flagged:
                report.flag(sec, item)
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


def run_guarded(ctx: RunContext, analysis_id: str, fn: Callable[[], None]) -> None:
    """Run one analysis; an unexpected failure is recorded (report + summary.json) instead of ending the
    run, and fails it under --strict."""
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - recorded and shown, and fatal under --strict
        message = f"{type(exc).__name__}: {exc}"
        ctx.summary["failed"][analysis_id] = message
        ctx.failed.append(f"{analysis_id} failed ({message})")
        sec = ctx.report.section("failures", "Analyses that failed")
        ctx.report.flag(sec, f"{analysis_id}: {message}")
        if os.environ.get("BAYESNQP_DEBUG"):
            traceback.print_exc()
