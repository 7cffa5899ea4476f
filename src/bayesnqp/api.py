"""The Python API: load a study, run (all or some of) it, look at the results in memory, write the report.

    import bayesnqp as bn
    study = bn.load_study()                                  # the bundled demo
    res = bn.run(study, draws=200, chains=2, only=["bayes_table3_col4"])
    res["bayes_table3_col4"].tidy()                          # posterior: one row per term
    res.oracle("table3_col4").tidy()                         # the frequentist estimate, same columns
    bn.etable([res.oracle("table3_col4"), res["bayes_table3_col4"]])
    res.write("reports/demo")                                # index.html, summary.json, tables, fits

Every result has ``.tidy()`` with the columns ``TIDY_COLUMNS`` (see ``results.tidy_frame``), and
``.idata``, ``.diagnostics`` and ``.agreement`` (None for a frequentist result). The command line is
``load_study`` + ``run`` + ``StudyResults.write``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import pandas as pd

from .results import TIDY_COLUMNS, AnalysisResult

if TYPE_CHECKING:
    from .bayes.result import BayesResult
    from .checks.flags import Flag
    from .config import StudyConfig
    from .data.intake import StudyData
    from .stages.context import RunContext

    Result = Union[AnalysisResult, BayesResult]

__all__ = ["StudyResults", "TIDY_COLUMNS", "etable", "fit", "fit_grid", "load_study", "run"]


@contextmanager
def _quiet_forward_sampling() -> Iterator[None]:
    """PyMC logs every forward-sampling call at INFO; the run shows its own progress. Restored after."""
    import logging

    logger = logging.getLogger("pymc")
    level = logger.level
    if logger.getEffectiveLevel() < logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _study_module() -> Any:
    from . import study

    return study


def load_study(data: str | os.PathLike[str] | None = None,
               config: str | os.PathLike[str] | StudyConfig | None = None) -> StudyData:
    """Read, validate and measure a panel. ``data``: a CSV, .dta, .xlsx or .parquet file (None: the
    bundled demo); ``config``: a study TOML file or a ``StudyConfig`` (None: the paper's column names).
    Raises ``InputError`` listing every problem."""
    from .config import StudyConfig, load_config
    from .data.intake import load_study as intake

    cfg = config if isinstance(config, StudyConfig) else load_config(None if config is None else Path(config))
    return intake(None if data is None else Path(data), cfg)


def _printer(start: float) -> Callable[[str], None]:
    def show(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f}s] {message}", file=sys.stderr, flush=True)

    return show


class StudyResults(Mapping[str, "Result"]):
    """The results of one run, held in memory: a mapping of Bayesian analysis id -> ``BayesResult``
    (``res["bayes_table3_col4"]``), the frequentist oracles by id (``res.oracle("table3_col4")``),
    the flagged checks, the summary.json content, and ``write(out)`` for the report folder.

    The tables, figures and fits of the report are built in a private folder that is removed when the
    object is closed or garbage-collected (``close()``, or use it as a context manager)."""

    def __init__(self, ctx: RunContext, *, started: float | None = None, hard_exit_on_stuck_signal: bool = False):
        self._ctx = ctx
        self._started = time.time() if started is None else started
        self._hard_exit = hard_exit_on_stuck_signal
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(ctx.out), True)

    # -- the results ---------------------------------------------------------------------------------
    def __getitem__(self, analysis_id: str) -> Result:
        if analysis_id in self._ctx.bayes:
            return self._ctx.bayes[analysis_id]
        if analysis_id in self._ctx.oracles:
            return self._ctx.oracles[analysis_id]
        known = ", ".join(self.ids) or "none"
        raise KeyError(f"{analysis_id!r} is not among this run's results ({known})")

    def __iter__(self) -> Iterator[str]:
        yield from self._ctx.bayes
        yield from (k for k in self._ctx.oracles if k not in self._ctx.bayes)

    def __len__(self) -> int:
        return len(set(self._ctx.bayes) | set(self._ctx.oracles))

    @property
    def ids(self) -> list[str]:
        """Every result id of the run, Bayesian first."""
        return list(self)

    def oracle(self, analysis_id: str) -> AnalysisResult:
        """A frequentist result by its summary.json id (``table3_col4``, ``iv_2sls``, ...)."""
        try:
            return self._ctx.oracles[analysis_id]
        except KeyError:
            raise KeyError(f"no frequentist result {analysis_id!r} in this run "
                           f"({', '.join(self._ctx.oracles) or 'none'})") from None

    @property
    def oracles(self) -> dict[str, AnalysisResult]:
        return dict(self._ctx.oracles)

    @property
    def bayes(self) -> dict[str, BayesResult]:
        return dict(self._ctx.bayes)

    @property
    def flagged(self) -> list[Flag]:
        """Every check that failed (convergence, interval width, PPC, failed analyses)."""
        return list(self._ctx.flagged)

    @property
    def failed(self) -> dict[str, str]:
        """Analyses that raised: id -> message."""
        return dict(self._ctx.summary["failed"])

    @property
    def summary(self) -> dict[str, Any]:
        """What summary.json will hold."""
        from .results import json_safe

        return json_safe(self._ctx.summary)

    @property
    def study(self) -> StudyData:
        return self._ctx.study

    def __repr__(self) -> str:
        return (f"<StudyResults {self._ctx.study.data_name}: {len(self._ctx.bayes)} Bayesian, "
                f"{len(self._ctx.oracles)} frequentist, {len(self._ctx.flagged)} flagged>")

    # -- output --------------------------------------------------------------------------------------
    def write(self, out: str | os.PathLike[str] | None = None) -> Path:
        """Write the report folder (index.html, summary.json, run.json, tables/, figures/, fits/) and
        return it; default ``reports/<data name>``. The folder is built beside ``out`` under a hidden
        name and renamed into place at the end, so a failure leaves any previous ``out`` unchanged."""
        if not self._finalizer.alive:
            raise RuntimeError("these results were closed; run the study again to write them")
        study = _study_module()
        target = Path(out) if out is not None else study.default_out(self._ctx.study)
        return study.publish(self._ctx, target, started=self._started, hard_exit_on_stuck_signal=self._hard_exit)

    def close(self) -> None:
        """Remove the private build folder (the results in memory stay usable; ``write`` does not)."""
        self._finalizer()

    def __enter__(self) -> StudyResults:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


SamplerName = Literal["nutpie", "nutpie-jax", "pymc", "numpyro"]


def run(study: StudyData | None = None, *, draws: int | None = None, tune: int | None = None,
        chains: int | None = None, seed: int = 20240601, sampler: SamplerName | None = None, quick: bool = False,
        bayes: bool = True, models: str | os.PathLike[str] | None = None,
        only: Sequence[str] | str | None = None, strict: bool = False,
        progress: bool | Callable[[str], None] = True, workdir: str | os.PathLike[str] | None = None,
        _hard_exit_on_stuck_signal: bool = False) -> StudyResults:
    """Run the study (default: the demo) and return its results in memory; nothing is written until
    ``StudyResults.write``.

    ``only``: analysis ids or id prefixes to run (``["bayes_table3_col4"]``, ``["table3", "bayes_iv"]``,
    ``["bayes_groups"]``); the oracles a selected Bayesian model is compared with run too, and so do
    the fits a selected check reads. None runs everything. ``bayes=False``: frequentist stages only.
    ``draws``/``tune``/``chains``/``sampler``: None leaves a model spec's ``[sampler]`` value or the default
    (1000/500/4/nutpie); a value given here wins over the spec. ``models``: a folder of model specs (TOML): one
    named after a bundled analysis replaces it (your priors, terms, sampler settings, options); a new
    ``bayes_*`` id of any builder runs as a new analysis (see ``bayes.registry``). ``quick``: 300 draws x 2 chains. ``strict``: raise ``ConvergenceError`` if any check is flagged or
    any analysis failed. ``progress``: True prints each step with its elapsed time to stderr (shown in
    a terminal and in a notebook), or a callable taking the message. ``workdir``: a folder (not yet
    existing) to build the report files in; default a private temporary folder.
    """
    mod = _study_module()
    from .bayes.sampling import SAMPLERS

    if sampler is not None and sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}")
    data = study if study is not None else load_study()
    options = mod.RunOptions(draws=draws, tune=tune, chains=chains, seed=seed, quick=quick, strict=strict,
                             sampler=sampler, bayes=bayes, models=None if models is None else Path(models))
    options.sampler_settings()  # bad draws/chains fail here, before anything runs
    show = _printer(time.perf_counter()) if progress is True else (progress or (lambda message: None))
    if workdir is None:
        # named like the run's private temp folder, so a later run removes it if this process is killed
        from .staging import TEMP_PREFIX

        build = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-results-")) / "report"
    else:
        build = Path(workdir)
        if build.exists():
            raise FileExistsError(f"workdir {build} exists; give a folder that does not")
    started = time.time()
    with _quiet_forward_sampling():
        try:
            ctx = mod.compute(data, options, build, show, only=only,
                              hard_exit_on_stuck_signal=_hard_exit_on_stuck_signal)
        finally:
            if workdir is None and not build.exists():
                shutil.rmtree(build.parent, ignore_errors=True)
    results = StudyResults(ctx, started=started, hard_exit_on_stuck_signal=_hard_exit_on_stuck_signal)
    if workdir is None:  # remove the temporary parent too
        results._finalizer.detach()
        results._finalizer = weakref.finalize(results, shutil.rmtree, str(build.parent), True)
    return results


def fit(study: StudyData | None, analysis_id: str, *, draws: int | None = None, tune: int | None = None,
        chains: int | None = None, seed: int = 20240601, sampler: SamplerName | None = None,
        models: str | os.PathLike[str] | None = None, progress: bool | Callable[[str], None] = True) -> Result:
    """Fit one analysis by id (with the oracle it is compared with) and return its result:
    ``fit(study, "bayes_table3_col4", draws=200, chains=2)``. A frequentist id (``"table3_col4"``)
    returns the oracle. Raises KeyError if the data do not allow it (see ``run(...).summary["skipped"]``)
    and RuntimeError with the message if it failed."""
    with run(study, draws=draws, tune=tune, chains=chains, seed=seed, sampler=sampler, models=models,
             only=[analysis_id],
             progress=progress, bayes=analysis_id.startswith(("bayes_", "ppc_"))) as res:
        if analysis_id in res:
            return res[analysis_id]
        failed = res.failed
        family = next((k for k in failed if analysis_id.startswith(k) or k.startswith(analysis_id)), None)
        if family is not None:
            raise RuntimeError(f"{analysis_id}: {failed[family]}")
        skipped = res.summary["skipped"]
        reason = next((v for k, v in skipped.items() if analysis_id.startswith(k)), None)
        raise KeyError(f"{analysis_id!r} was not produced" + (f": {reason}" if reason else
                                                                f"; the run gave {', '.join(res.ids) or 'nothing'}"))


GridKey = tuple[str, tuple[str, ...], int]


def fit_grid(study: StudyData | None, analyses: Sequence[str] | str, *,
             controls: Sequence[Sequence[str]] | None = None, seeds: Sequence[int] | None = None,
             draws: int | None = None, tune: int | None = None, chains: int | None = None,
             seed: int = 20240601, sampler: SamplerName | None = None, scheduler: Any = "local", workers: int = 2,
             models: str | os.PathLike[str] | None = None,
             progress: bool | Callable[[str], None] = True) -> dict[GridKey, Result]:
    """A specification grid: ``fit`` for every analysis x control set x seed, run in parallel on Dask.

    ``analyses``: analysis ids as for ``fit``. ``controls``: control sets to try (each a subset of the
    study's controls; default: the study's own). ``seeds``: sampler seeds (default: ``[seed]``).
    ``scheduler``: ``"local"`` (a LocalCluster of ``workers`` single-threaded processes), a Dask
    scheduler address (``"tcp://host:8786"``), ``"serial"`` (no Dask) or a ``distributed.Client``.
    ``models``: a folder of model specs, as for ``run``. An analysis id that names no model is refused
    before anything runs. Bayesian results come back without their in-memory model (``without_model``).
    Returns {(analysis, controls, seed): result} in grid order (analysis slowest, seed fastest). The
    posterior draws are identical to a serial run (every grid point carries its own seed), so
    ``scheduler`` only changes where the fits run::

        grid = fit_grid(study, "bayes_table3_col4_iid", controls=[(), ("develop",)], seeds=[1, 2])
        pd.concat({k: r.tidy() for k, r in grid.items()}, names=["analysis", "controls", "seed"])
    """
    from .fanout import describe_scheduler, fan_out, grid_tasks

    ids = [analyses] if isinstance(analyses, str) else list(analyses)
    unknown_ids = unknown_analyses(ids, models)
    if unknown_ids:
        raise ValueError(f"no such analysis: {', '.join(unknown_ids)}")
    data = study if study is not None else load_study()
    have = tuple(data.roles.controls)
    sets = [tuple(c) for c in controls] if controls is not None else [have]
    for c in sets:
        unknown = [x for x in c if x not in have]
        if unknown:
            raise ValueError(f"controls {unknown} are not among the study's controls ({', '.join(have) or 'none'})")
    tasks = grid_tasks([("analysis_id", ids), ("controls", sets),
                        ("seed", list(seeds) if seeds is not None else [seed])])
    show = _printer(time.perf_counter()) if progress is True else (progress or (lambda message: None))
    show(f"{len(tasks)} fits {describe_scheduler(scheduler, workers)}")
    results = fan_out(_grid_point, tasks, scheduler=scheduler, workers=workers, progress=show,
                      shared={"study": data, "draws": draws, "tune": tune, "chains": chains, "sampler": sampler,
                              "models": None if models is None else str(models)})
    return {(t["analysis_id"], t["controls"], t["seed"]): r for t, r in zip(tasks, results)}


def unknown_analyses(ids: Sequence[str], models: str | os.PathLike[str] | None = None) -> list[str]:
    """The Bayesian ids among ``ids`` that name no model spec (bundled or in ``models``) and no result of
    one (``bayes_groups_<splitter>``), each with the known ids; frequentist ids are not judged here."""
    from .bayes.spec import bundled_spec_ids, read_user_models

    known = set(bundled_spec_ids()) | {s.id for s in (read_user_models(Path(models)) if models is not None else [])}
    bad = [i for i in ids if i.startswith("bayes_") and i not in known
           and not any(i.startswith(k + "_") for k in known)]
    return [f"{i!r} (known: {', '.join(sorted(known))})" for i in bad]


def _grid_point(study: StudyData, analysis_id: str, controls: tuple[str, ...], seed: int, draws: int | None,
                tune: int | None, chains: int | None, sampler: SamplerName | None, models: str | None) -> Result:
    """One point of ``fit_grid`` (module level, so Dask workers import it by name)."""
    import dataclasses
    import warnings

    if tuple(controls) != tuple(study.roles.controls):
        study = dataclasses.replace(study, roles=dataclasses.replace(study.roles, controls=tuple(controls)))
    with warnings.catch_warnings(), _quiet_forward_sampling():
        warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")
        warnings.filterwarnings("ignore", message=".*BLAS.*")
        result = fit(study, analysis_id, draws=draws, tune=tune, chains=chains, seed=seed, sampler=sampler,
                     models=models, progress=False)
    from .bayes.result import BayesResult

    # the PyMC model stays behind: results travel between processes, and a grid holds many
    return result.without_model() if isinstance(result, BayesResult) else result


def _cell(estimate: float, std_error: float, digits: int) -> str:
    if pd.isna(estimate):
        return ""
    return f"{estimate:.{digits}f} ({std_error:.{digits}f})" if pd.notna(std_error) else f"{estimate:.{digits}f}"


def etable(results: Iterable[Result] | Mapping[str, Result], *, type: Literal["df", "md", "tex"] = "df",
           digits: int = 4, terms: Sequence[str] | None = None) -> pd.DataFrame | str:
    """Several results side by side: one column per result, one row per term, ``estimate (std error)``
    (posterior mean (sd) for a Bayesian result), then the interval kind, N or draws, and max r_hat.
    ``type``: "df" (a DataFrame), "md" (Markdown) or "tex" (LaTeX). ``terms``: the rows to keep, in
    order (default: every term, the key term first). A mapping gives the column headings."""
    items = list(results.items()) if isinstance(results, Mapping) else [(r.id, r) for r in results]
    if not items:
        raise ValueError("etable needs at least one result")
    tidies = {name: r.tidy() for name, r in items}
    if terms is None:
        order: list[str] = []
        for name, r in items:
            key = getattr(r, "key_term", "agglomeration")
            for t in [key, *tidies[name].index]:
                if t in tidies[name].index and t not in order:
                    order.append(t)
        if "agglomeration" in order:
            order.remove("agglomeration")
            order.insert(0, "agglomeration")
        order.sort(key=lambda t: t in ("constant", "Intercept"))  # the intercept last (stable sort)
    else:
        order = list(terms)
    table = pd.DataFrame(index=pd.Index(order, name="Coefficient"), columns=[n for n, _ in items], dtype=object)
    for name, _ in items:
        t = tidies[name]
        for term in order:
            table.loc[term, name] = (_cell(t.loc[term, "Estimate"], t.loc[term, "Std. Error"], digits)
                                     if term in t.index else "")
    foot: dict[str, list[str]] = {"interval": [], "N / draws": [], "max r_hat": []}
    for name, r in items:
        t = tidies[name]
        foot["interval"].append(str(t["interval"].iloc[0]) if len(t) else "")
        if isinstance(r, AnalysisResult):
            foot["N / draws"].append(f"{r.n_obs}")
            foot["max r_hat"].append("")
        else:
            d = r.diagnostics
            foot["N / draws"].append(f"{d.n_chains} x {d.n_draws}")
            foot["max r_hat"].append(f"{d.max_r_hat:.3f}")
    table = pd.concat([table, pd.DataFrame(foot, index=[n for n, _ in items]).T])
    table.index.name = "Coefficient"
    if type == "df":
        return table
    if type == "md":
        return table.to_markdown()
    if type == "tex":
        return table.to_latex(escape=True)
    raise ValueError(f"type must be 'df', 'md' or 'tex', not {type!r}")
