"""The study, stage by stage: data -> measures -> frequentist oracles -> Bayesian models -> checks -> report.

``compute`` runs the stages (all, or those ``only=`` selects) into a build folder and returns the
context with every result in memory; ``publish`` writes summary.json, index.html and run.json into a
hidden staging folder beside the output and renames it into place, so a failed, interrupted or killed
run leaves no half-written output (``staging.py``). Input is validated before anything runs. The numeric
stages run with one BLAS thread and ``summary.json`` holds results only (the time of the run goes to
``run.json``), so the same inputs give a byte-identical ``summary.json``. ``api.py`` is the public face
of both; ``cli.py`` only parses arguments and calls it; ``run_study`` is compute + publish in one call.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterable
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
from .checks.flags import records as flag_records
from .report.html import ReportBuilder
from .report.overview import finish_report
from .results import json_safe
from .bayes.spec import bundled_spec_ids, read_user_models, user_models
from .staging import InterruptGuard, clean_stale, mark_owner, private_tempdir, replace_folder, staging_path
from .stages.context import RunContext
from .stages.data import stage_data
from .stages.bayesian import (  # noqa: I001
    stage_agreement,
    stage_bayes_groups,
    stage_bayes_iv,
    stage_bayes_mediation,
    stage_bayes_panel,
    stage_user_models,
)
from .stages.frequentist import stage_frequentist
from .stages.spatial import stage_spatial_bayes, stage_spatial_frequentist

QUICK = {"draws": 300, "tune": 300, "chains": 2}


@dataclass(frozen=True)
class RunOptions:
    out: Path | None = None
    # None: not given, so a model spec's [sampler] value or the code default applies
    draws: int | None = None
    tune: int | None = None
    chains: int | None = None
    seed: int = 20240601
    quick: bool = False
    strict: bool = False
    sampler: str | None = None
    bayes: bool = True  # False: data and frequentist stages only (seconds instead of minutes)
    models: Path | None = None  # the user's folder of model specs (replacing bundled ones, or new analyses)

    def sampler_settings(self) -> SamplerSettings:
        """The run's sampler settings; what the user gave (or --quick) is pinned against the specs."""
        given: dict[str, Any] = {k: v for k, v in (("draws", self.draws), ("tune", self.tune),
                                                   ("chains", self.chains), ("sampler", self.sampler))
                                 if v is not None}
        if self.quick:
            given.update(QUICK)
        return SamplerSettings(seed=self.seed, pinned=frozenset(given), **given)


Stage = Callable[[RunContext], None]


def default_out(study: StudyData) -> Path:
    return Path("reports") / study.data_name


STAGES: list[tuple[str, Stage]] = [
    ("data and measures", stage_data),
    ("frequentist oracles", stage_frequentist),
    ("spatial oracles", stage_spatial_frequentist),
    ("Bayesian panel models", stage_bayes_panel),
    ("your models", stage_user_models),
    ("group-specific slopes", stage_bayes_groups),
    ("Bayesian IV", stage_bayes_iv),
    ("latent mediator model", stage_bayes_mediation),
    ("Bayesian spatial models", stage_spatial_bayes),
    ("agreement", stage_agreement),
]
BUNDLED_IDS = frozenset(bundled_spec_ids())
BAYES_STAGES = {stage_bayes_panel, stage_user_models, stage_bayes_groups, stage_bayes_iv, stage_bayes_mediation, stage_spatial_bayes,
                stage_agreement}


# Analyses a selection pulls in: the oracles a Bayesian model is compared with, and the fits a check reads.
SPATIAL_FITS = ("bayes_car", "bayes_sdm", "bayes_sar", "bayes_sem", "bayes_slx", "bayes_table3_col4")
DEPENDS: dict[str, tuple[str, ...]] = {
    "bayes_table3": ("table3",), "bayes_re": ("table3",), "bayes_car": ("table3",),
    "bayes_groups": ("heterogeneity",), "bayes_iv": ("iv_2sls",), "bayes_mediation": ("table4",),
    "bayes_sdm": ("sdm_ml",), "bayes_sar": ("sdm_ml",), "bayes_sem": ("sdm_ml",), "bayes_slx": ("sdm_ml",),
    "ppc_moran": SPATIAL_FITS, "bayes_spatial_compare": SPATIAL_FITS, "konfound": ("table3",),
}
# Families run as one step whose results carry other ids (summary.json ids on the right).
FAMILY_IDS: dict[str, tuple[str, ...]] = {
    "heterogeneity": ("hetero_",), "sdm_ml": ("sar_ml", "sem_ml", "slx_ols"),
}
# The analysis families of each stage (a stage none of whose families is selected is skipped whole).
STAGE_FAMILIES: dict[Stage, tuple[str, ...]] = {
    stage_frequentist: ("table3", "iv_2sls", "konfound", "robustness", "table4", "heterogeneity", "bootstrap"),
    stage_spatial_frequentist: ("moran_agglomeration", "lm_spatial_tests", "sdm_ml"),
    stage_bayes_panel: ("bayes_table3", "bayes_re", "bayes_likelihoods"),
    stage_bayes_groups: ("bayes_groups", "bayes_province_slopes"),
    stage_bayes_iv: ("bayes_iv",),
    stage_bayes_mediation: ("bayes_mediation",),
    stage_spatial_bayes: ("bayes_car", "bayes_sdm", "bayes_sar", "bayes_sem", "bayes_slx", "ppc_moran",
                          "bayes_spatial_compare"),
}


@dataclass(frozen=True)
class Selection:
    """Which analyses a run computes. ``prefixes`` None: all. Otherwise an analysis runs when its id
    starts with one of the prefixes, or is the step that produces such ids (``bayes_table3`` fits
    ``bayes_table3_col4``), or is needed by a selected one (its oracle, the fits a check reads)."""

    prefixes: tuple[str, ...] | None = None

    @classmethod
    def of(cls, only: Iterable[str] | str | None, depends: dict[str, tuple[str, ...]] | None = None
           ) -> "Selection":
        """``depends``: more of what an analysis pulls in, beside ``DEPENDS`` (the oracles of the user's
        new specs)."""
        if only is None:
            return cls(None)
        wanted = [only] if isinstance(only, str) else [str(x) for x in only]
        if not wanted or any(not w for w in wanted):
            raise ValueError("only= needs at least one non-empty analysis id prefix")
        closed: list[str] = []
        todo = list(wanted)
        while todo:
            item = todo.pop()
            if item in closed:
                continue
            closed.append(item)
            for key, needs in {**DEPENDS, **(depends or {})}.items():
                if key.startswith(item) or item.startswith(key):
                    todo.extend(needs)
        return cls(tuple(sorted(closed)))

    def wants(self, analysis_id: str) -> bool:
        if self.prefixes is None:
            return True
        ids = (analysis_id, *FAMILY_IDS.get(analysis_id, ()))
        return any(a.startswith(p) or p.startswith(a if a.endswith("_") else a + "_") or p == a
                   for a in ids for p in self.prefixes)

    def runs_stage(self, stage: Stage) -> bool:
        families = STAGE_FAMILIES.get(stage)
        return self.prefixes is None or families is None or any(self.wants(f) for f in families)


class _QuietGuard(InterruptGuard):
    """The signal guard without the watchdog's hard exit: in a notebook a stuck interrupt must not kill
    the kernel. Ctrl-C (or a kernel interrupt) still stops the run at the next step."""

    def _watch(self, read_fd: int) -> None:
        while True:
            try:
                if not os.read(read_fd, 1):
                    return
            except OSError:
                return


def base_summary(study: StudyData, options: RunOptions, settings: SamplerSettings,
                 selection: Selection) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "bayesnqp_version": __version__,
        "data": {"source": study.source, "synthetic": study.synthetic, "n_cities": len(study.cities),
                 "years": study.years, "n_obs": int(len(study.frame)), "balanced": study.balanced,
                 "outcome": study.roles.outcome, "treatment": study.roles.treatment,
                 "controls": list(study.roles.controls),
                 "weights": study.weights_source},
        "settings": {"draws": settings.draws, "tune": settings.tune, "chains": settings.chains,
                     "seed": settings.seed, "sampler": settings.sampler, "quick": options.quick,
                     "strict": options.strict, "bayes": options.bayes,
                     # what the user set; a model spec's [sampler] table sets the rest for its own fit
                     # (each fit's block records the draws, tune and chains it used)
                     "set_by_user": sorted(settings.pinned),
                     "models_folder": None if options.models is None else str(options.models)},
        "descriptives": {}, "index_weights": {}, "analyses": {}, "skipped": {}, "flagged": [], "failed": {},
    }
    if selection.prefixes is not None:
        summary["settings"]["only"] = list(selection.prefixes)
    return summary


def compute(study: StudyData, options: RunOptions, workdir: Path,
            progress: Callable[[str], None] = lambda msg: None, *, only: Iterable[str] | str | None = None,
            hard_exit_on_stuck_signal: bool = True) -> RunContext:
    """Run the stages into ``workdir`` (a folder this run creates and owns: tables, figures and fits are
    built there) and return the context holding every result. Nothing else is written. Any exception,
    Ctrl-C included, removes ``workdir``. Under ``options.strict`` a flag or failure raises
    ConvergenceError (and removes ``workdir``)."""
    settings = options.sampler_settings()
    mine = read_user_models(options.models) if options.models is not None else []
    # a new spec's oracle runs when the spec is selected (a "{splitter}" template: every split's)
    selection = Selection.of(only, {s.id: (s.oracle.split("{", 1)[0],) for s in mine
                                    if s.oracle and s.id not in BUNDLED_IDS})
    summary = base_summary(study, options, settings, selection)
    title = "bayesnqp report: " + study.data_name
    meta = {"data": study.source, "cities x years": f"{len(study.cities)} x {len(study.years)}",
            "sampler": f"{settings.sampler}, {settings.chains} chains x {settings.draws} draws "
                       f"(+{settings.tune} tune), seed {settings.seed}" + (" [quick]" if options.quick else ""),
            "bayesnqp": __version__}
    guard = (InterruptGuard if hard_exit_on_stuck_signal else _QuietGuard)(workdir)

    def checked_progress(message: str) -> None:
        guard.check()  # a Ctrl-C swallowed inside a library (nutpie returns partial draws) stops the run here
        progress(message)

    # Signals, one BLAS thread and a private temp folder for the whole run; closed after the cleanup below.
    scope = ExitStack()
    try:
        scope.enter_context(guard.active())
        scope.enter_context(single_threaded_blas())
        scope.enter_context(private_tempdir())
        scope.enter_context(user_models(options.models))
        (workdir / "fits").mkdir(parents=True)
        mark_owner(workdir)  # the CLI builds in the staging folder itself: a stale one is then recognised
        report = ReportBuilder(workdir, title=title, synthetic=study.synthetic, meta=meta)
        ctx = RunContext(study=study, settings=settings, report=report, out=workdir, summary=summary,
                         progress=checked_progress, wants=selection.wants,
                         user_specs=tuple(s for s in mine if s.id not in BUNDLED_IDS))
        for label, stage in STAGES:
            if not options.bayes and stage in BAYES_STAGES:
                continue
            if stage is stage_user_models and not ctx.user_specs:
                continue  # no model folder, or one that only replaces bundled specs
            if not selection.runs_stage(stage) or (stage is stage_agreement and not ctx.bayes
                                                   and selection.prefixes is not None):
                continue
            checked_progress(label)
            began = time.perf_counter()
            stage(ctx)
            ctx.stage_seconds[label] = round(time.perf_counter() - began, 2)
        summary["flagged"] = flag_records(ctx.flagged)
        finish_report(ctx, bayes_ran=options.bayes)  # overview box, flags, Bayesian paper tables, labels
        guard.check()
        if options.strict and (ctx.flagged or ctx.failed):
            # every flag kind fails a strict run, not only convergence (failures are flags of kind "failed")
            raise ConvergenceError("--strict: " + "; ".join(str(f) for f in ctx.flagged))
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    finally:
        scope.close()
    return ctx


def check_out(out: Path) -> None:
    """Refuse an output path that cannot become a folder (before anything runs)."""
    if out.exists() and not out.is_dir():
        raise InputError([Problem(str(out), "output path exists and is not a folder")])


def publish(ctx: RunContext, out: Path, *, started: float | None = None,
            hard_exit_on_stuck_signal: bool = True) -> Path:
    """Write the run held in ``ctx`` as ``out``: its built folder is moved (or copied) to a hidden
    staging folder beside ``out``, summary.json, index.html and run.json are added, and the staging
    folder is renamed into place. A failure or Ctrl-C leaves any previous ``out`` as it was.
    ``started``: when the run began (run.json's elapsed time)."""
    out = Path(out)
    check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)  # staging folders of runs that were killed; never those of a live run
    staging = staging_path(out)
    source = Path(ctx.out)
    guard = (InterruptGuard if hard_exit_on_stuck_signal else _QuietGuard)(staging)
    summary = ctx.summary
    try:
        with guard.active():
            if source.resolve() != staging.resolve():
                if staging.exists():
                    shutil.rmtree(staging)
                shutil.copytree(source, staging)
                mark_owner(staging)
            report = ctx.report
            report.out = staging
            try:
                (staging / "summary.json").write_text(
                    json.dumps(json_safe(summary), indent=2, ensure_ascii=False), encoding="utf-8")
                report.render()
            finally:
                report.out = source
            info = {**run_info(time.time() if started is None else started), "stage_seconds": ctx.stage_seconds}
            (staging / "run.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
            guard.check()
            with guard.critical():
                replace_folder(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def run_study(data: str | Path | None, config_path: str | Path | None, options: RunOptions,
              progress: Callable[[str], None] = lambda msg: None) -> Path:
    """Run every analysis the data allow and write the output folder; return it. Raises InputError
    before writing. The command line's path: the run is built in the staging folder beside the output,
    then renamed into place."""
    config = load_config(config_path)
    progress("reading and validating the data")
    study = load_study(data, config)
    out = Path(options.out) if options.out is not None else default_out(study)
    check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out)
    started = time.time()
    ctx = compute(study, options, staging_path(out), progress)
    try:
        return publish(ctx, out, started=started)
    finally:
        shutil.rmtree(staging_path(out), ignore_errors=True)


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
