"""The study, stage by stage: data -> measures -> frequentist oracles -> Bayesian models -> checks -> report.

``run_study`` validates everything before it writes anything, builds the report in a hidden sibling
folder, and moves it into place only when the whole run has finished, so a failed, interrupted or killed
run leaves no half-written output (``staging.py``). The numeric stages run with one BLAS thread and
``summary.json`` holds results only (the time of the run goes to ``run.json``), so the same inputs give a
byte-identical ``summary.json``. ``cli.py`` only parses arguments and calls this.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__
from .bayes.sampling import SamplerSettings
from .config import load_config
from .data.intake import StudyData, load_study
from .errors import ConvergenceError, InputError, Problem
from .report.html import ReportBuilder
from .checks.flags import records as flag_records
from .report.overview import finish_report
from .results import json_safe
from .staging import InterruptGuard, clean_stale, mark_owner, private_tempdir, replace_folder, staging_path
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
    clean_stale(out)  # staging folders of runs that were killed; never those of a live run
    staging = staging_path(out)
    started = time.time()
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
    guard = InterruptGuard(staging)

    def checked_progress(message: str) -> None:
        guard.check()  # a Ctrl-C swallowed inside a library (nutpie returns partial draws) stops the run here
        progress(message)

    # Signals, one BLAS thread and a private temp folder for the whole run; closed after the cleanup below.
    scope = ExitStack()
    try:
        scope.enter_context(guard.active())
        scope.enter_context(single_threaded_blas())
        scope.enter_context(private_tempdir())
        (staging / "fits").mkdir(parents=True)
        mark_owner(staging)
        report = ReportBuilder(staging, title=title, synthetic=study.synthetic, meta=meta)
        ctx = RunContext(study=study, settings=settings, report=report, out=staging, summary=summary,
                         progress=checked_progress)
        for label, stage in STAGES:
            if not options.bayes and stage in BAYES_STAGES:
                continue
            checked_progress(label)
            stage(ctx)
        summary["flagged"] = flag_records(ctx.flagged)
        finish_report(ctx, bayes_ran=options.bayes)  # overview box, flags, Bayesian paper tables, labels
        (staging / "summary.json").write_text(json.dumps(json_safe(summary), indent=2, ensure_ascii=False),
                                              encoding="utf-8")
        report.render()
        (staging / "run.json").write_text(json.dumps(run_info(started), indent=2), encoding="utf-8")
        guard.check()
        if options.strict and (ctx.flagged or ctx.failed):
            # every flag kind fails a strict run, not only convergence (failures are flags of kind "failed")
            raise ConvergenceError("--strict: " + "; ".join(str(f) for f in ctx.flagged))
        with guard.critical():
            replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        scope.close()
    return out


def single_threaded_blas() -> AbstractContextManager[Any]:
    """One BLAS/OpenMP thread for the numeric stages: threaded reductions sum in a varying order, and the
    same inputs must give the same bits (on two shared cores one thread is also the faster choice)."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def run_info(started: float) -> dict[str, Any]:
    """When and with what the run was made: kept out of summary.json so the results stay byte-identical."""
    from importlib.metadata import PackageNotFoundError, version

    libraries: dict[str, str | None] = {}
    for name in ("numpy", "scipy", "pandas", "pymc", "pytensor", "nutpie", "numba", "arviz", "pyfixest"):
        try:
            libraries[name] = version(name)
        except PackageNotFoundError:
            libraries[name] = None
    return {"generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "elapsed_seconds": round(time.time() - started, 1),
            "bayesnqp_version": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
            # The CLI pins the hash seed (0); a random one can reorder set iteration inside libraries and
            # change the last digits of results.
            "python_hash_seed": os.environ.get("PYTHONHASHSEED", "random"),
            "hash_randomization": sys.flags.hash_randomization, "libraries": libraries}
