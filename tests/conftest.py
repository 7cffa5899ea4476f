"""Shared fixtures: a small raw panel in the paper's column names (not the demo), written to tmp files."""

from __future__ import annotations

import os

# Two shared cores: threaded BLAS oversubscribes them. Must be set before numpy is first imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# The optimisation level the command line uses (bayesnqp.cli.NUMBA_OPT_LEVEL): compiling at numba's default
# level 3 would double the suite's cold compile time. Subprocess runs inherit it.
os.environ.setdefault("NUMBA_OPT", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from bayesnqp import names  # noqa: E402


def raw_panel(n_cities: int = 12, years: range = range(2015, 2020), seed: int = 7,
              city_ids: list[str] | None = None) -> pd.DataFrame:
    """Raw columns for every role, with sane positive values; city ids 'R01'.. unless given."""
    rng = np.random.default_rng(seed)
    ids = city_ids or [f"R{i:02d}" for i in range(1, n_cities + 1)]
    rows = []
    size = rng.lognormal(0, 0.6, len(ids))
    for c, s in zip(ids, size):
        for y in years:
            total = 50 + 100 * s * rng.uniform(0.9, 1.1)
            row = {"city": c, "city_name": f"name {c}", "year": y, names.TOTAL_EMPLOYMENT: total,
                   names.DIGITAL_EMPLOYMENT: total * rng.uniform(0.01, 0.05) * s}
            for col in names.NQP_INDICATOR_NAMES:
                row[col] = s * rng.uniform(1, 3) * 100
            for col in (*names.CONTROLS, *names.MECHANISM_INDICATORS, *names.SPLITTERS):
                row[col] = rng.uniform(0.5, 2.0) * s
            row[names.DIST_HANGZHOU] = 100 + 50 * ids.index(c)
            rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture
def raw_csv(tmp_path):
    """Write a raw panel to CSV (optionally modified) and return its path."""

    def _write(frame: pd.DataFrame | None = None, name: str = "panel.csv"):
        frame = raw_panel() if frame is None else frame
        path = tmp_path / name
        frame.to_csv(path, index=False)
        return path

    return _write


def swallowed_interrupt_stages(study_module) -> tuple[list, list]:
    """The study's first stage, then a stage that receives Ctrl-C and swallows it (as nutpie does: it
    aborts sampling and returns the draws so far), then one that records whether the run went on.
    Returns (stages, reached)."""
    import signal
    import time

    reached: list[bool] = []

    def swallowing(ctx):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt:
            pass

    def later(ctx):
        reached.append(True)

    return [study_module.STAGES[0], ("swallowing", swallowing), ("later", later)], reached


@pytest.fixture
def default_sigint():
    """Python's own Ctrl-C handler for the test: a process started in the background by a
    non-interactive shell (as CI may start the suite) inherits SIGINT ignored, and then a signal the
    test sends itself would never arrive."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def require(module: str, why: str):
    """Import an optional dependency of a test: skip without it, except under CI (CI=true), where the
    test extra installs it and a missing one must fail rather than pass silently."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(f"{module} is not installed under CI ({why})")
        pytest.skip(f"{module} is not installed ({why})")
