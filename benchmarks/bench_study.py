"""The whole study, timed as a user runs it: the command line in fresh processes, per stage.

Runs (each a separate ``bayesnqp run`` process, so nothing is shared in memory):

* ``demo`` panel (280 cities x 10 years) and ``small`` panel (100 units x 8 years = 800 rows, the user's
  own ids, so no bundled geography and no spatial models; every Bayesian panel model runs on it);
* ``cold``: fresh, empty cache folders (PyTensor's compile cache, numba, matplotlib, XDG);
* ``warm``: a second process on the same cache folders;
* ``quick``: ``--quick`` on the warm caches;
* ``pymc``: the same Bayesian models through PyMC's default ``pm.sample`` (``--sampler pymc``) on the warm
  caches, the reference ratio.

Stage times come from each run's ``run.json`` (``stage_seconds``). ``cache_files_added`` is the net number of
files a run added to the cache folders: a warm or quick run that adds any compiled a model structure
again (the ``pymc`` mode compiles PyMC's C backend, so it adds files legitimately). Results are written after every run to
``benchmarks/results/study.json``, so a long run that is stopped keeps what it measured; runs of an
earlier invocation that this one does not repeat are kept (each record says when it was measured).

Run by hand (not in CI), on a machine with nothing else running:
    PYTHONPATH=src python benchmarks/bench_study.py [--panels demo,small] [--modes cold,warm,quick,pymc]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "study.json"
SMALL_UNITS, SMALL_YEARS = 100, 8


def cache_env(root: Path) -> dict[str, str]:
    """Every cache a run writes, moved under ``root`` (README, "Where a run writes")."""
    env = dict(os.environ)
    env.update({"PYTENSOR_FLAGS": f"base_compiledir={root / 'pytensor'}", "NUMBA_CACHE_DIR": str(root / "numba"),
                "MPLCONFIGDIR": str(root / "matplotlib"), "XDG_CACHE_HOME": str(root / "xdg"),
                "XDG_CONFIG_HOME": str(root / "xdg-config"), "XDG_DATA_HOME": str(root / "xdg-data")})
    # the tool limits BLAS threads itself; the benchmark must not help it
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(var, None)
    return env


def small_panel(folder: Path) -> list[str]:
    """100 units x 8 years cut from the demo, with the user's own ids (no bundled geography): returns the
    CLI arguments that select it."""
    import pandas as pd

    from bayesnqp.paths import bundled

    demo = pd.read_csv(bundled("demo") / "demo_panel.csv", dtype={"city": str})
    cities = sorted(demo["city"].unique())[:SMALL_UNITS]
    years = sorted(demo["year"].unique())[-SMALL_YEARS:]
    frame = demo[demo["city"].isin(cities) & demo["year"].isin(years)].copy()
    frame["city"] = frame["city"].map({c: f"U{i:03d}" for i, c in enumerate(cities)})
    frame = frame.drop(columns=[c for c in ("city_name", "province") if c in frame.columns])
    path = folder / "small_panel.csv"
    frame.to_csv(path, index=False)
    return ["--data", str(path)]


def cache_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0


def one_run(args: list[str], env: dict[str, str], out: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "bayesnqp", "run", *args, "--out", str(out)]
    began = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - began
    record: dict[str, Any] = {"command": " ".join(["bayesnqp", "run", *args]), "exit_code": done.returncode,
                              "wall_seconds": round(wall, 1)}
    if done.returncode != 0:
        record["stderr_tail"] = done.stderr[-2000:]
        return record
    info = json.loads((out / "run.json").read_text())
    record["stage_seconds"] = info.get("stage_seconds", {})
    summary = json.loads((out / "summary.json").read_text())
    fits = {k: v for k, v in summary.get("analyses", {}).items() if isinstance(v, dict) and "diagnostics" in v}
    record["bayesian_fits"] = len(fits)
    ess = [v["diagnostics"].get("min_ess_bulk") for v in fits.values()]
    ess = [e for e in ess if isinstance(e, (int, float))]
    record["min_ess_bulk"] = round(min(ess), 1) if ess else None
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--panels", default="demo,small")
    parser.add_argument("--modes", default="cold,warm,quick,pymc")
    opts = parser.parse_args()
    panels = opts.panels.split(",")
    modes = opts.modes.split(",")
    results: dict[str, Any] = {
        "what": "The full study through the command line, fresh processes, per stage (run.json stage_seconds).",
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "runs": {}, "complete": False}
    if RESULTS.exists():  # keep what an earlier invocation measured and this one does not repeat
        results["runs"] = json.loads(RESULTS.read_text()).get("runs", {})
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench_study_") as tmp:
        tmp_path = Path(tmp)
        for panel in panels:
            caches = tmp_path / f"caches_{panel}"
            env = cache_env(caches)
            base = [] if panel == "demo" else small_panel(tmp_path)
            for mode in modes:
                if mode == "cold":  # cold means empty caches, whatever ran before
                    shutil.rmtree(caches, ignore_errors=True)
                extra = {"cold": [], "warm": [], "quick": ["--quick"], "pymc": ["--sampler", "pymc"]}[mode]
                out = tmp_path / f"out_{panel}_{mode}"
                print(f"{panel} / {mode} ...", file=sys.stderr, flush=True)
                files_before = cache_files(caches)
                record = one_run(base + extra, env, out)
                record["cache_files_added"] = cache_files(caches) - files_before
                record["measured"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                record["invocation"] = results["started"]  # ratios pair only runs of one invocation
                results["runs"][f"{panel}/{mode}"] = record
                print(f"  {record['wall_seconds']} s (exit {record['exit_code']})", file=sys.stderr, flush=True)
                RESULTS.write_text(json.dumps(results, indent=2) + "\n")
        runs = results["runs"]
        ratios = {}
        for panel in ("demo", "small"):
            # side by side only: a record kept from an earlier invocation measured another version
            same = {m: runs[f"{panel}/{m}"]["wall_seconds"] for m in ("cold", "warm", "pymc")
                    if runs.get(f"{panel}/{m}", {}).get("invocation") == results["started"]}
            if "cold" in same and "warm" in same:
                ratios[f"{panel}: cold / warm"] = round(same["cold"] / same["warm"], 2)
            if "pymc" in same and "warm" in same:
                ratios[f"{panel}: pm.sample / nutpie (warm)"] = round(same["pymc"] / same["warm"], 2)
        results["ratios"] = ratios
        results["complete"] = all(runs.get(f"{p}/{m}", {}).get("invocation") == results["started"]
                                  for p in ("demo", "small") for m in ("cold", "warm", "quick", "pymc"))
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
