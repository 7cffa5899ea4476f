"""Command line: ``bayesnqp run | grid | validate | demo-data``. Parses arguments and calls ``study``."""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from .errors import ConvergenceError, InputError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, rich_markup_mode=None,
    help="Rebuild the digital-agglomeration / new-quality-productive-forces city-panel study: the "
         "paper's frequentist tables, Bayesian hierarchical versions of each, and a browser report. "
         "Start with `bayesnqp run` (the bundled synthetic demo) or `bayesnqp run --data FILE --config FILE`.")
# soft_wrap: rich would break long lines (file paths) with hard newlines; the terminal wraps them anyway
err = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)

EXIT_INPUT = 2
EXIT_STRICT = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell convention
HASH_SEED = "0"
# numba's LLVM optimisation level for the compiled models. Level 1 compiles about twice as fast as the
# default 3 on an empty cache (a 280 x 10 two-way model: 31 s vs 68 s) and samples about 15% slower;
# the draws were identical. Compiling, not sampling, sets a run's time, so the CLI uses 1 unless the
# user set NUMBA_OPT. It is read when numba is imported, hence before anything imports it.
NUMBA_OPT_LEVEL = "1"


def main() -> None:
    """Console entry point: pin the hash seed and numba's optimisation level, then parse the command line."""
    os.environ.setdefault("NUMBA_OPT", NUMBA_OPT_LEVEL)
    pin_hash_seed()
    app()


def pin_hash_seed() -> None:
    """Re-execute this process once with PYTHONHASHSEED fixed, so that two runs are bit for bit alike.

    Python salts the hash of strings per process, so iterating a set of names changes order from one run
    to the next; libraries do that (pyfixest's demeaning of a two-way fixed-effects model gave results
    differing in the 16th digit). The seed can only be set before the interpreter starts, hence the
    re-exec (same process id, same arguments). A PYTHONHASHSEED the user set is left as it is.
    """
    if os.environ.get("PYTHONHASHSEED") is not None or os.name != "posix":
        return
    argv = getattr(sys, "orig_argv", None)
    if not argv or not sys.executable:
        return
    try:
        os.execve(sys.executable, [sys.executable, *argv[1:]], {**os.environ, "PYTHONHASHSEED": HASH_SEED})
    except OSError:
        return  # cannot re-exec (odd embedding): run as is; run.json records the hash randomisation


def _quiet_library_warnings() -> None:
    # Import-time notices of the libraries (ArviZ's refactor notice, PyTensor's BLAS note) are not the
    # user's business; warnings raised by our own analyses still show.
    warnings.filterwarnings("ignore", category=FutureWarning, module="arviz")
    warnings.filterwarnings("ignore", message=".*BLAS.*")
    # PyMC logs every forward-sampling call at INFO; progress is ours to show.
    logging.getLogger("pymc").setLevel(logging.WARNING)


def _fail_interrupted(exc: KeyboardInterrupt) -> None:
    from .staging import INTERRUPT_MESSAGE, Interrupted

    err.print(INTERRUPT_MESSAGE, highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code if isinstance(exc, Interrupted) else EXIT_INTERRUPTED)


def _stoppable(command: Callable[..., None]) -> Callable[..., None]:
    """Ctrl-C anywhere in a command (the library imports alone take seconds) ends with the one-line
    message and exit 130, not a traceback or click's 'Aborted!' with exit 1."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs) -> None:
        try:
            command(*args, **kwargs)
        except KeyboardInterrupt as exc:
            _fail_interrupted(exc)

    return wrapper


def _fail_input(exc: InputError) -> None:
    err.print(f"[bold red]error:[/] {len(exc.problems)} problem(s) in the input; nothing was written.",
              highlight=False)
    for p in exc.problems:
        err.print(f"  - {p}", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(EXIT_INPUT)


DataOpt = Annotated[Optional[Path], typer.Option(
    "--data", help="Panel file (.csv, .dta, .xlsx, .parquet), one row per city-year. Default: the bundled "
                   "synthetic demo (280 real cities x 2013-2022, synthetic numbers).")]
ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", help="Study config (TOML) mapping your column names to roles; see README. Default: the "
                     "paper's column names.")]


SAMPLER_HELP = ("nutpie (default), nutpie-jax (JAX log-density: pip install \"bayesnqp[jax]\"; on a GPU with a "
                "CUDA jaxlib), pymc or numpyro.")
# Sampler options shared by `run` and `grid`; None = not given, so a model spec's [sampler] value or the
# default applies (command line > spec > default).
ModelsOpt = Annotated[Optional[Path], typer.Option(
    "--models", help="A folder of your model specs (TOML): a file named after a bundled analysis (e.g. "
                     "bayes_table3_col4.toml) replaces it; a new bayes_* id of any builder runs as a new "
                     "analysis. See README, \"Your own model specs\".")]
DrawsOpt = Annotated[Optional[int], typer.Option(
    help="Posterior draws per chain [default: 1000, or the model spec's].", min=10, show_default=False)]
TuneOpt = Annotated[Optional[int], typer.Option(
    help="Tuning steps per chain [default: 500, or the model spec's].", min=0, show_default=False)]
ChainsOpt = Annotated[Optional[int], typer.Option(
    help="Number of chains [default: 4, or the model spec's].", min=1, show_default=False)]
SamplerOpt = Annotated[Optional[str], typer.Option(help=SAMPLER_HELP, show_default=False)]


@app.command()
@_stoppable
def run(
    data: DataOpt = None,
    config: ConfigOpt = None,
    out_dir: Annotated[Optional[Path], typer.Option(
        "--out", help="Output folder (default: reports/<data file name>). Replaced only when the run succeeds.")] = None,
    draws: DrawsOpt = None,
    tune: TuneOpt = None,
    chains: ChainsOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of every random step (sampling, permutations, simulation).")] = 20240601,
    sampler: SamplerOpt = None,
    models: ModelsOpt = None,
    quick: Annotated[bool, typer.Option("--quick", help="Few draws (300 x 2 chains) for a fast look; "
                                                        "diagnostics will flag low ESS.")] = False,
    no_bayes: Annotated[bool, typer.Option("--no-bayes", help="Only the data stage and the frequentist "
                                                                 "oracles: seconds instead of minutes.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Fail (exit 3) if any fit is flagged (r_hat > 1.01, "
                                                          "ESS < 400, divergences) or any analysis fails.")] = False,
) -> None:
    """Run every analysis the data allow and write index.html, summary.json, tables/, figures/, fits/."""
    _quiet_library_warnings()
    from .bayes.sampling import SAMPLERS

    if sampler is not None and sampler not in SAMPLERS:
        err.print(f"[bold red]error:[/] --sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}")
        raise typer.Exit(EXIT_INPUT)
    start = time.perf_counter()

    with err.status("starting") as status:
        def progress(message: str) -> None:
            elapsed = time.perf_counter() - start
            status.update(f"[{elapsed:6.0f}s] {message}")
            err.print(f"[dim][{elapsed:6.0f}s][/] {message}", highlight=False)

        try:
            if models is not None:
                from .bayes.spec import read_user_models

                read_user_models(models)  # every problem of the folder named before anything is written
            folder = _run_and_write(data, config, out_dir, progress, draws=draws, tune=tune, chains=chains,
                                    seed=seed, quick=quick, strict=strict, sampler=sampler, bayes=not no_bayes,
                                    models=models)
        except InputError as exc:
            status.stop()
            _fail_input(exc)
        except ConvergenceError as exc:
            status.stop()
            err.print(f"[bold red]strict mode:[/] {exc}", highlight=False, markup=False)
            raise typer.Exit(EXIT_STRICT) from None
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: the staging folder is already removed
            status.stop()
            _fail_interrupted(exc)
    out.print(f"report: {folder / 'index.html'}", highlight=False)
    out.print(f"summary: {folder / 'summary.json'}", highlight=False)


def _run_and_write(data: Path | None, config: Path | None, out_dir: Path | None,
                   progress: Callable[[str], None], **options) -> Path:
    """``load_study`` + ``run`` + ``write``, built straight in the hidden staging folder beside the output
    (renamed into place at the end, removed on any failure or signal)."""
    from . import api
    from .staging import clean_stale, staging_path
    from .study import check_out, default_out

    progress("reading and validating the data")
    study = api.load_study(data, config)
    out_path = Path(out_dir) if out_dir is not None else default_out(study)
    check_out(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(out_path)  # staging folders of runs that were killed; never those of a live run
    results = api.run(study, progress=progress, workdir=staging_path(out_path), _hard_exit_on_stuck_signal=True,
                      **options)
    try:
        return results.write(out_path)
    finally:
        results.close()


@app.command()
@_stoppable
def grid(
    analysis: Annotated[list[str], typer.Option(
        "--analysis", help="Analysis id to fit (repeat for several), e.g. bayes_table3_col4.")],
    data: DataOpt = None,
    config: ConfigOpt = None,
    controls: Annotated[Optional[list[str]], typer.Option(
        "--controls", help="A control set, comma-separated (repeat for several; '' for none). Default: the "
                           "study's controls.")] = None,
    seeds: Annotated[Optional[list[int]], typer.Option("--seed", help="Sampler seed (repeat for several).")] = None,
    draws: DrawsOpt = None,
    tune: TuneOpt = None,
    chains: ChainsOpt = None,
    sampler: SamplerOpt = None,
    scheduler: Annotated[str, typer.Option(
        help="Where the fits run: local (a Dask LocalCluster of --workers processes), serial (here, one "
             "after the other) or a Dask scheduler address such as tcp://host:8786. Needs "
             "pip install \"bayesnqp[dask]\" unless serial.")] = "local",
    workers: Annotated[int, typer.Option(help="Worker processes of the local cluster.", min=1)] = 2,
    models: ModelsOpt = None,
    out_file: Annotated[Path, typer.Option("--out", help="CSV of the posterior summary of every grid point.")]
        = Path("grid.csv"),
) -> None:
    """A specification grid: every analysis x control set x seed, fitted in parallel on Dask (the
    numbers are those of a serial run), summarised one row per grid point and term in a CSV."""
    _quiet_library_warnings()
    import pandas as pd

    from . import api
    from .bayes.sampling import SAMPLERS

    if sampler is not None and sampler not in SAMPLERS:
        err.print(f"[bold red]error:[/] --sampler must be one of {', '.join(SAMPLERS)}, not {sampler!r}")
        raise typer.Exit(EXIT_INPUT)
    sets = None if controls is None else [tuple(c.strip() for c in item.split(",") if c.strip())
                                          for item in controls]
    start = time.perf_counter()

    def progress(message: str) -> None:
        err.print(f"[dim][{time.perf_counter() - start:6.0f}s][/] {message}", highlight=False)

    try:
        unknown = api.unknown_analyses(analysis, models)  # before the data are read
        if unknown:
            raise ValueError(f"no such analysis: {', '.join(unknown)}")
        study = api.load_study(data, config)
        results = api.fit_grid(study, analysis, controls=sets, seeds=seeds, draws=draws, tune=tune,
                               chains=chains, sampler=sampler,  # type: ignore[arg-type]  # checked above
                               scheduler=scheduler, workers=workers, models=models,
                               progress=progress)
    except InputError as exc:
        _fail_input(exc)
    except (ValueError, ImportError) as exc:  # a bad grid or scheduler, or Dask not installed
        err.print(f"error: {exc}", highlight=False, markup=False)
        raise typer.Exit(EXIT_INPUT) from None
    table = pd.concat({(a, ",".join(c), s): r.tidy() for (a, c, s), r in results.items()},
                      names=["analysis", "controls", "seed"])
    out_file.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_file)
    out.print(f"grid: {len(results)} fits -> {out_file}", highlight=False)


@app.command()
@_stoppable
def validate(
    file: Annotated[Path, typer.Argument(help="Panel file to check (.csv, .dta, .xlsx, .parquet).")],
    config: ConfigOpt = None,
) -> None:
    """Check a panel file (and config) and report every problem; run nothing, write nothing."""
    _quiet_library_warnings()
    from .config import load_config
    from .data.intake import load_study

    try:
        study = load_study(file, load_config(config))
    except InputError as exc:
        _fail_input(exc)
    r = study.roles
    out.print(f"OK: {file}: {len(study.cities)} cities x {len(study.years)} years "
              f"({study.years[0]}-{study.years[-1]}), {len(study.frame)} rows.", highlight=False)
    out.print("outcome: " + (f"entropy index of {len(r.indicators)} indicators" if r.indicators
                             else f"column '{r.outcome_source}'"))
    out.print("treatment: " + (f"location quotient of '{r.employment[0]}' / '{r.employment[1]}'" if r.employment
                               else f"column '{r.treatment_source}'"))
    out.print(f"controls: {', '.join(r.controls) or 'none'}; mechanisms: {', '.join(r.mechanisms) or 'none'}; "
              f"splitters: {', '.join(r.splitters) or 'none'}; instrument: {r.instrument or 'none'}")
    out.print(f"spatial weights: {study.weights_source or 'none'}")
    for item in study.skipped:
        out.print(f"skipped: {item.reason}", highlight=False)


@app.command("demo-data")
def demo_data(
    out_file: Annotated[Path, typer.Option("--out", help="CSV file to write; truth.json is written beside it.")],
    seed: Annotated[int, typer.Option(help="Generator seed (the bundled demo uses the default).")] = 20130101,
) -> None:
    """Regenerate the synthetic demo panel (280 real cities x 2013-2022) and its generating truth."""
    from .demo import write_demo

    if out_file.suffix.lower() != ".csv":
        err.print("[bold red]error:[/] --out must name a .csv file")
        raise typer.Exit(EXIT_INPUT)
    write_demo(out_file, seed=seed)
    out.print(f"wrote {out_file} and {out_file.with_name('truth.json')}", highlight=False)

