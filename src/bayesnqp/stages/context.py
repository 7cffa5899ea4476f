"""The state a run passes from stage to stage."""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..bayes.spec import ModelSpec
from ..bayes.result import BayesResult
from ..bayes.sampling import SamplerSettings
from ..checks.flags import Flag, convergence_flags, failed_flag
from ..data.intake import StudyData
from ..report.html import ReportBuilder
from ..results import AnalysisResult, json_safe


@dataclass
class RunContext:
    study: StudyData
    settings: SamplerSettings
    report: ReportBuilder
    out: Path
    summary: dict[str, Any]
    oracles: dict[str, AnalysisResult] = field(default_factory=dict)
    bayes: dict[str, BayesResult] = field(default_factory=dict)
    flagged: list[Flag] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    progress: Callable[[str], None] = lambda message: None
    # one Dirichlet draw over cities shared by every oracle's Bayesian bootstrap (set on first use)
    bootstrap_weights: pd.DataFrame | None = None
    # which analyses this run computes (``only=`` of the Python API); an unselected one is not run
    wants: Callable[[str], bool] = lambda analysis_id: True
    # wall seconds per stage, for run.json (never summary.json: times differ between identical runs)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    # the new analyses of the user's model folder (``--models``; specs replacing bundled ones are read by
    # ``load_spec`` instead), run in their own stage
    user_specs: tuple[ModelSpec, ...] = ()

    def add_oracle(self, result: AnalysisResult) -> AnalysisResult:
        self.oracles[result.id] = result
        self.summary["analyses"][result.id] = result.summary()
        return result

    def add_bayes(self, result: BayesResult) -> BayesResult:
        """Record a fit: netCDF under fits/, its block in summary.json, a flag if diagnostics say so."""
        self.bayes[result.id] = result
        result.save(self.out / "fits")
        self.summary["analyses"][result.id] = result.summary_block()
        for record in convergence_flags(result.id, result.diagnostics.flags):
            self.flag(record)
        return result

    def flag(self, record: Flag, section=None) -> Flag:
        """Record a flagged check for summary.json ``flagged`` (and --strict); with ``section``, also put
        the message in a flag box of that report section."""
        if record not in self.flagged:
            self.flagged.append(record)
        if section is not None:
            self.report.flag(section, f"{record.id}: {record.message}")
        return record

    def add_block(self, analysis_id: str, block: dict[str, Any]) -> None:
        self.summary["analyses"][analysis_id] = json_safe(block)

    def skip(self, analysis_id: str, reason: str, section=None) -> None:
        self.summary["skipped"][analysis_id] = reason
        if section is not None:
            self.report.skip(section, reason)

    def guarded(self, analysis_id: str, fn: Callable[[], Any], section=None) -> Any:
        """Run one analysis. An unexpected failure is recorded in the report and summary.json (and
        fails the run under --strict) instead of ending the whole study. An analysis the run was not
        asked for (see ``wants``) is not run and returns None."""
        if not self.wants(analysis_id):
            return None
        self.progress(f"  {analysis_id}")
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - recorded, shown, and fatal under --strict
            message = f"{type(exc).__name__}: {exc}"
            self.summary["failed"][analysis_id] = message
            self.failed.append(f"{analysis_id} failed ({message})")
            self.flag(failed_flag(analysis_id, message))
            sec = section or self.report.section("failures", "Analyses that failed")
            self.report.flag(sec, f"{analysis_id} failed: {message}")
            if os.environ.get("BAYESNQP_DEBUG"):
                traceback.print_exc()
            return None
