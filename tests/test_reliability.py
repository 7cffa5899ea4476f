"""The README's reliability promises, tested: mixed city ids are refused with suggestions; identical runs
give byte-identical summary.json; killed and interrupted runs leave no half-written output; a run writes
only where the README says."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import bayesnqp
from bayesnqp.cli import EXIT_INPUT, EXIT_INTERRUPTED, app
from bayesnqp.config import StudyConfig
from bayesnqp.data.geography import load_geography
from bayesnqp.data.intake import closest_adcode, load_study
from bayesnqp.errors import InputError
from bayesnqp.staging import GRACE_SECONDS, INTERRUPT_MESSAGE, clean_stale
from conftest import raw_panel, swallowed_interrupt_stages

runner = CliRunner()


# ---- mixed city ids ---------------------------------------------------------------------------------

def _bundled_ids(n: int) -> list[str]:
    # Every 20th city, so the panel is a spread-out subset of the 280 (contiguity need not be connected).
    return list(load_geography().cities.index[::20][:n])


def _typo_panel():
    """12 bundled cities, one adcode mistyped by one digit (city ends in '00'; the typo in '90')."""
    ids = _bundled_ids(12)
    frame = raw_panel(city_ids=ids)
    frame = frame.drop(columns=["city_name"])
    intended = ids[4]
    frame.loc[frame.city == intended, "city"] = intended[:4] + "9" + intended[5:]
    return frame, intended


def test_the_demo_with_one_adcode_replaced_is_refused(tmp_path):
    """The reported case: 279 of 280 ids match; the one city the panel lacks is the suggestion."""
    from bayesnqp.data.intake import demo_path
    import pandas as pd

    frame = pd.read_csv(demo_path(), dtype={"city": str}).drop(columns=["city_name"])
    frame.loc[frame.city == "330200", "city"] = "999999"
    path = tmp_path / "typo.csv"
    frame.to_csv(path, index=False)
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == EXIT_INPUT, res.output
    text = " ".join(res.output.split())
    assert "1 of 280 city ids are not in the bundled geography of the 280 cities while the other 279 are" in text
    assert "city 999999: city id not in the bundled geography; closest bundled city: 330200 宁波市 (Ningbo)" in text


def test_one_mistyped_adcode_is_refused_with_the_intended_city_suggested(raw_csv, tmp_path):
    frame, intended = _typo_panel()
    path = raw_csv(frame)
    res = runner.invoke(app, ["validate", str(path)])
    assert res.exit_code == EXIT_INPUT, res.output
    text = " ".join(res.output.split())
    name = load_geography().cities.loc[intended, "name_zh"]
    assert "1 of 12 city ids are not in the bundled geography of the 280 cities" in text
    typo = intended[:4] + "9" + intended[5:]
    assert f"city {typo}: city id not in the bundled geography; closest bundled city: {intended} {name}" in text
    out = tmp_path / "out"
    res = runner.invoke(app, ["run", "--no-bayes", "--data", str(path), "--out", str(out)])
    assert res.exit_code == EXIT_INPUT and not out.exists()


def test_mixed_ids_pass_when_the_config_says_the_panel_is_not_the_paper_geography(raw_csv, tmp_path):
    frame, _ = _typo_panel()
    path = raw_csv(frame)
    cfg = tmp_path / "off.toml"
    cfg.write_text('[spatial]\nenabled = "false"\n')
    assert runner.invoke(app, ["validate", str(path), "--config", str(cfg)]).exit_code == 0
    ids = sorted(frame.city.unique())
    edges = tmp_path / "edges.csv"
    edges.write_text("a,b\n" + "\n".join(f"{a},{b}" for a, b in zip(ids, ids[1:])) + "\n")
    cfg.write_text(f'[spatial]\nweights = "{edges}"\n')
    res = runner.invoke(app, ["validate", str(path), "--config", str(cfg)])
    assert res.exit_code == 0, res.output
    assert "spatial weights: " + str(edges) in " ".join(res.output.split())


def test_ids_that_are_all_foreign_are_a_different_study_not_a_typo(raw_csv):
    study = load_study(raw_csv(), StudyConfig())  # ids R01..R12: none is an adcode
    assert study.weights is None
    assert any(s.id == "spatial" and "not the bundled 280" in s.reason for s in study.skipped)


def test_every_unknown_id_is_listed_and_the_name_column_guides_the_suggestion(raw_csv):
    ids = _bundled_ids(12)
    frame = raw_panel(city_ids=ids)
    geo = load_geography().cities
    # Two typos; the second row still carries its true city name, which wins over the digits.
    frame.loc[frame.city == ids[0], "city"] = "11000"
    frame.loc[frame.city == ids[1], "city_name"] = geo.loc[ids[1], "name_zh"]
    frame.loc[frame.city == ids[1], "city"] = "000001"
    with pytest.raises(InputError) as info:
        load_study(raw_csv(frame), StudyConfig())
    by_city = {p.city: p.message for p in info.value.problems if p.city}
    assert set(by_city) == {"11000", "000001"}
    assert f"closest bundled city: {ids[1]} " in by_city["000001"]
    assert f"closest bundled city: {ids[0]} " in by_city["11000"]


def test_closest_adcode_prefers_few_edits_then_the_nearest_number():
    geo = load_geography().cities
    assert closest_adcode("330101", geo, list(geo.index)) == "330100"
    assert closest_adcode("330100", geo, list(geo.index)) == "330100"
    # One edit away from several codes: the numerically nearest of them.
    assert closest_adcode("330150", geo, ["330100", "330200", "110000"]) == "330100"


# ---- helpers for runs in their own process ----------------------------------------------------------

SRC = Path(bayesnqp.__file__).resolve().parents[1]
ONE_FIT = Path(__file__).with_name("one_fit_cli.py")


def isolated_env(root: Path) -> dict[str, str]:
    """Environment of a run whose every writable location (README, "Where a run writes") is under root.

    PYTHONHASHSEED is removed so the CLI's own pinning is what is tested; bytecode is not written so the
    interpreter itself does not add __pycache__ folders beside the installed modules.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    for name in ("home", "tmp", "cache", "config", "data", "mpl", "numba", "pytensor"):
        (root / name).mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(root / "home"), TMPDIR=str(root / "tmp"), XDG_CACHE_HOME=str(root / "cache"),
               XDG_CONFIG_HOME=str(root / "config"), XDG_DATA_HOME=str(root / "data"),
               MPLCONFIGDIR=str(root / "mpl"), NUMBA_CACHE_DIR=str(root / "numba"),
               PYTENSOR_FLAGS=f"base_compiledir={root / 'pytensor'}", MPLBACKEND="Agg",
               PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.pathsep.join([str(SRC), str(Path(__file__).parent), env.get("PYTHONPATH", "")]))
    return env


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bayesnqp", *args]


def one_fit_cli(*args: str) -> list[str]:
    return [sys.executable, str(ONE_FIT), *args]


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- bitwise reproducibility ------------------------------------------------------------------------

def test_two_identical_no_bayes_runs_write_byte_identical_summaries(tmp_path):
    """The demo, frequentist stage, two processes. Without the pinned hash seed the heterogeneity and
    fixed-effects numbers differed in the last digits from one process to the next."""
    env = isolated_env(tmp_path / "env")
    summaries = []
    for i in (1, 2):
        out = tmp_path / f"run{i}"
        done = subprocess.run(cli("run", "--no-bayes", "--out", str(out)), env=env, cwd=tmp_path,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        summaries.append((out / "summary.json").read_bytes())
        assert not (out / ".owner").exists()  # the staging marker stays behind the swap
        info = json.loads((out / "run.json").read_text())
        assert info["hash_randomization"] == 0 and "generated_at" in info
    assert summaries[0] == summaries[1]
    assert "generated_at" not in summaries[0].decode()
    # Nothing outside the output folders and the moved caches.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["env", "run1", "run2"]
    assert listing(tmp_path / "env" / "home") == [] and listing(tmp_path / "env" / "tmp") == []


def test_one_bayesian_fit_is_byte_identical_across_processes_and_writes_only_where_told(tmp_path, raw_csv):
    """A small fit in two processes, the first with a cold compile cache and the second with a warm one,
    gives the same summary.json and the same draws. Every location the run may write is moved under
    env/; HOME, TMPDIR and the working folder stay empty, the input file and bundled data unchanged."""
    from bayesnqp.paths import bundled

    data = raw_csv()
    env_root = tmp_path / "env"
    env = isolated_env(env_root)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = {kind: snapshot(bundled(kind)) for kind in ("geography", "demo", "models")}
    data_bytes = data.read_bytes()
    outputs, wrappers = [], []
    for i in (1, 2):
        out = tmp_path / f"fit{i}"
        done = subprocess.run(one_fit_cli("run", "--data", str(data), "--out", str(out), "--draws", "100",
                                          "--tune", "100", "--chains", "2", "--seed", "11"),
                              env=env, cwd=cwd, capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["failed"] == {} and "bayes_re" in summary["analyses"], summary["failed"]
        outputs.append(((out / "summary.json").read_bytes(), _draws(out / "fits")))
        # nutpie's C entry points are cached on disk by the first process and the second loads them
        # without rewriting them or adding any: every graph keeps its cache key across processes
        # (nutpie_disk_cache.order_broadcast_checks; before it, one of this run's graphs took a new key
        # in the warm process and was compiled again).
        wrappers.append({p.name: p.stat().st_mtime_ns for p in (env_root / "pytensor").rglob("*bayesnqp_nutpie_*")})
    assert wrappers[0] and wrappers[1] == wrappers[0]
    assert outputs[0][0] == outputs[1][0]
    assert outputs[0][1] == outputs[1][1]
    # Where the run wrote: the caches moved by the variables, nothing in HOME, TMPDIR or the cwd.
    assert listing(env_root / "home") == []
    assert listing(env_root / "tmp") == []
    assert listing(cwd) == []
    assert listing(env_root / "pytensor"), "PyTensor's compile cache did not follow base_compiledir"
    assert data.read_bytes() == data_bytes
    assert {kind: snapshot(bundled(kind)) for kind in before} == before


def _draws(fits: Path) -> dict[str, bytes]:
    """The posterior draws of every saved fit as raw bytes (netCDF files carry no timestamps we own,
    but compare the arrays so a library's file metadata cannot mask or fake a difference)."""
    import arviz as az

    out = {}
    for path in sorted(fits.glob("*.nc")):
        idata = az.from_netcdf(path)
        for name, var in idata.posterior.data_vars.items():
            out[f"{path.name}:{name}"] = np.ascontiguousarray(var.values).tobytes()
    assert out, f"no fits saved under {fits}"
    return out


# ---- killed and interrupted runs --------------------------------------------------------------------

class Running:
    """A CLI run in its own process whose stderr is read line by line (to act at a given stage)."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path):
        # Ctrl-C as in a terminal even when the suite itself was started with SIGINT ignored (a background
        # job of a non-interactive shell): the child starts with the default disposition
        self.proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.lines: "queue.Queue[str | None]" = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        with self.proc.stderr:
            for line in self.proc.stderr:
                self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, marker: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(f"process ended before {marker!r}:\n{''.join(self.stderr)[-3000:]}")
            self.stderr.append(line)
            if marker in line:
                return
        raise AssertionError(f"{marker!r} not seen within {timeout} s:\n{''.join(self.stderr)[-3000:]}")

    def finish(self, timeout: float) -> int:
        code = self.proc.wait(timeout=timeout)
        while (line := self.lines.get(timeout=10)) is not None:
            self.stderr.append(line)
        return code


def _previous_output(out: Path) -> dict[str, bytes]:
    out.mkdir()
    (out / "summary.json").write_text('{"previous": true}\n')
    (out / "tables").mkdir()
    (out / "tables" / "keep.csv").write_text("a,b\n1,2\n")
    return snapshot(out)


def _run_into_the_bayesian_stage(tmp_path: Path, data: Path) -> tuple[dict[str, str], Path, Any, "Running"]:
    """A CLI run over a previous output, caught while its first Bayesian fit is being built: returns the
    environment, the output folder, the previous output's snapshot and the running process."""
    env = isolated_env(tmp_path / "env")
    out = tmp_path / "out"
    previous = _previous_output(out)
    run = Running(cli("run", "--data", str(data), "--out", str(out), "--draws", "10", "--tune", "10",
                      "--chains", "1"), env, tmp_path)
    run.wait_for("bayes_table3")
    time.sleep(1.0)
    return env, out, previous, run


def test_sigkill_in_the_bayesian_stage_keeps_the_previous_output_and_the_next_run_cleans_up(tmp_path, raw_csv):
    data = raw_csv()
    env, out, previous, run = _run_into_the_bayesian_stage(tmp_path, data)
    run.proc.kill()
    assert run.finish(timeout=30) == -signal.SIGKILL
    assert snapshot(out) == previous, "the previous output changed"
    staging = tmp_path / f".out.partial-{run.proc.pid}"
    assert staging.is_dir(), "the run was not killed mid-way (no staging folder)"
    assert not (staging / "summary.json").exists()

    done = subprocess.run(cli("run", "--no-bayes", "--data", str(data), "--out", str(out)), env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not staging.exists(), "the stale staging folder of the dead process was not removed"
    assert json.loads((out / "summary.json").read_text())["settings"]["bayes"] is False
    assert not (out / "tables" / "keep.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []


def test_ctrl_c_stops_the_run_within_seconds_with_one_line_and_exit_130(tmp_path, raw_csv):
    _, out, previous, run = _run_into_the_bayesian_stage(tmp_path, raw_csv())
    seen = len(run.stderr)
    start = time.monotonic()
    run.proc.send_signal(signal.SIGINT)
    code = run.finish(timeout=60)
    elapsed = time.monotonic() - start
    after = [line.strip() for line in run.stderr[seen:] if line.strip()]
    assert code == EXIT_INTERRUPTED, "".join(run.stderr)[-3000:]
    assert elapsed < GRACE_SECONDS + 4, f"took {elapsed:.1f} s to stop"
    assert after[-1] == INTERRUPT_MESSAGE
    assert not any("Traceback" in line for line in run.stderr), "".join(run.stderr)
    assert snapshot(out) == previous
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []
    assert listing(tmp_path / "env" / "tmp") == []


STUCK = """
import sys
import time
import bayesnqp.study as study
from bayesnqp.cli import main

def stuck(ctx):
    # Native code that swallows KeyboardInterrupt and never returns to the run (the worst case). The
    # marker is written inside the try, so a signal right after it is swallowed too.
    announced = False
    while True:
        try:
            if not announced:
                announced = True
                sys.stderr.write("stuck in native code\\n")
                sys.stderr.flush()
            time.sleep(60)
        except KeyboardInterrupt:
            pass

study.STAGES = [study.STAGES[0], ("stuck", stuck)]
main()
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_run_stuck_where_signals_are_swallowed_is_still_stopped_by_the_watchdog(tmp_path, raw_csv, signum):
    data = raw_csv()
    env = isolated_env(tmp_path / "env")
    out = tmp_path / "out"
    run = Running([sys.executable, "-c", STUCK, "run", "--data", str(data), "--out", str(out)], env, tmp_path)
    run.wait_for("stuck in native code")
    start = time.monotonic()
    run.proc.send_signal(signum)
    code = run.finish(timeout=30)
    assert code == 128 + signum
    assert GRACE_SECONDS - 0.5 < time.monotonic() - start < GRACE_SECONDS + 4
    assert run.stderr[-1].strip() == INTERRUPT_MESSAGE
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []
    assert listing(tmp_path / "env" / "tmp") == []


def test_an_interrupt_swallowed_by_a_library_stops_the_run_at_the_next_step(tmp_path, raw_csv, monkeypatch,
                                                                              default_sigint):
    """nutpie catches KeyboardInterrupt and returns the draws so far; the run must still stop."""
    import bayesnqp.study as study

    stages, reached = swallowed_interrupt_stages(study)
    monkeypatch.setattr(study, "STAGES", stages)
    handler_before = signal.getsignal(signal.SIGINT)
    out = tmp_path / "out"
    res = runner.invoke(app, ["run", "--data", str(raw_csv()), "--out", str(out)])
    assert res.exit_code == EXIT_INTERRUPTED, res.output
    assert INTERRUPT_MESSAGE in res.output
    assert not reached and not out.exists()
    assert not list(tmp_path.glob(".out.*"))
    assert signal.getsignal(signal.SIGINT) is handler_before  # the run's handler is gone again


def test_clean_stale_restores_an_output_orphaned_between_the_two_renames(tmp_path):
    dead, dead_elsewhere = (subprocess.Popen([sys.executable, "-c", "pass"]) for _ in range(2))
    dead.wait()
    dead_elsewhere.wait()
    out = tmp_path / "out"
    old = tmp_path / f".out.old-{dead.pid}"
    old.mkdir()
    (old / "summary.json").write_text("{}")
    partial = tmp_path / f".out.partial-{dead.pid}"
    partial.mkdir()
    live = tmp_path / f".out.partial-{os.getpid()}"  # a live run's folder is never touched
    live.mkdir()
    other = tmp_path / f".other.partial-{dead.pid}"
    other.mkdir()
    remote = tmp_path / f".out.partial-{dead_elsewhere.pid}"  # a run on another machine sharing the folder
    remote.mkdir()
    (remote / ".owner").write_text("some-other-host\n")
    clean_stale(out)
    assert (out / "summary.json").read_text() == "{}"
    assert not old.exists() and not partial.exists()
    assert live.exists() and other.exists() and remote.exists()
