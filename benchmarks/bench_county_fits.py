"""Every Bayesian model family fitted in full at county size: wall time, peak memory and diagnostics.

The panel is ``bayesnqp.simulate.county_panel`` (2,850 regions x 10 years on a planar graph with three
components and six islands, a spatial Durbin process with two-way effects), with the columns the other
families need added here:

* ``dist_km``: a region-level distance whose interaction with the year trend moves agglomeration (the
  instrument of the IV model); the outcome is shifted by the same process's response to that movement
  (beta and theta through (I - rho W)^-1), so the panel stays a spatial Durbin panel;
* ``group_score``: a region-level splitter for the median-split group model;
* three mechanisms, each measured by two indicators, driven by agglomeration (the mediation model).

Each family runs in its own process, as the study fits it (bundled spec, default sampler settings: 4
chains x 1000 draws, the spec's tuning; column (4) and the group model also fit the reduced models their
leave-one-city-out LOO checks need), so its peak resident memory is its own. The issue's bounds: each
model within 10 minutes on 2 cores and 8 GB, held here to the whole process (import, simulation,
compile and sampling) and to its peak resident memory (``ru_maxrss``, Linux).

Run by hand (not in CI):  PYTHONPATH=src python benchmarks/bench_county_fits.py [--regions 2850] [--only sdm,sar]
Writes benchmarks/results/county_fits.json (after each family, so a stopped run keeps what it measured).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results" / "county_fits.json"
FAMILIES = ("col4_iid", "col4", "groups", "iv", "mediation", "bym2", "leroux", "sdm", "sar", "sem", "slx")
MECHANISMS = {"innovation": ("inno_a", "inno_b"), "factors": ("factor_a", "factor_b"),
              "industry": ("industry_a", "industry_b")}
BOUNDS = {"seconds": 600.0, "peak_rss_gb": 8.0}


def county_study(n_regions: int, seed: int = 5):
    """The county panel (indexed by region and year) with the IV, splitter and mechanism columns, and
    its weights."""
    from scipy.sparse import identity
    from scipy.sparse.linalg import splu

    from bayesnqp.simulate import COUNTY_REGIONS, county_graph, county_panel

    weights = None if n_regions == COUNTY_REGIONS else county_graph(n_regions=n_regions, seed=seed)
    frame, weights, truth = county_panel(weights, seed=seed)
    rng = np.random.default_rng(seed + 2)
    n, n_years = weights.n, frame["year"].nunique()
    dist = rng.uniform(50.0, 1500.0, n)
    trend = np.arange(n_years) - (n_years - 1) / 2
    shift = -0.0004 * (dist - dist.mean())[:, None] * trend[None, :]  # farther regions agglomerate slower
    w = weights.row_standardised
    response = splu((identity(n, format="csc") - truth["rho"] * w).tocsc()).solve(
        truth["beta"] * shift + truth["theta"] * (w @ shift))
    frame["agglomeration"] += shift.ravel()
    frame["nqp"] += response.ravel()
    frame["dist_km"] = np.repeat(dist, n_years)
    frame["group_score"] = np.repeat(rng.standard_normal(n), n_years)
    x = frame["agglomeration"].to_numpy()
    for k, pair in enumerate(MECHANISMS.values()):
        latent = (0.3 + 0.2 * k) * x + rng.standard_normal(len(frame))
        for j, column in enumerate(pair):
            frame[column] = (1.0 + 0.5 * j) * latent + 0.5 * rng.standard_normal(len(frame))
    return frame.set_index(["city", "year"]), weights


def _rounded(value: float, digits: int) -> float | None:
    return round(value, digits) if math.isfinite(value) else None


def fit_one(family: str, n_regions: int) -> dict[str, Any]:
    """Fit one family on the county panel in this process; its diagnostics."""
    from bayesnqp.bayes import car, groups, iv, mediation, panel, sdm
    from bayesnqp.bayes.sampling import SamplerSettings
    from bayesnqp.bayes.spec import load_spec

    frame, weights = county_study(n_regions)
    settings = SamplerSettings()
    controls = ["develop"]
    began = time.perf_counter()
    if family in ("col4_iid", "col4"):
        spec = load_spec("bayes_table3_col4_iid" if family == "col4_iid" else "bayes_table3_col4")
        results = [panel.fit_panel(frame, controls, settings, spec, None)]
    elif family == "groups":
        results = groups.fit_groups(frame, controls, ["group_score"], settings, None)
    elif family == "iv":
        results = [iv.fit_iv(frame, controls, "dist_km", settings, None)]
    elif family == "mediation":
        results = [mediation.fit_mediation(frame, controls, MECHANISMS, settings)]
    elif family in ("bym2", "leroux"):
        results = [car.fit_car(frame, controls, weights, settings, None, kind=family)]
    else:
        results = [sdm.fit_sdm(frame, controls, weights, settings, None, model=family)]
    seconds = time.perf_counter() - began
    d = results[0].diagnostics
    out = {"seconds": round(seconds, 1), "rows": len(frame), "max_r_hat": _rounded(d.max_r_hat, 4),
           "min_ess_bulk": _rounded(d.min_ess_bulk, 0), "divergences": d.divergences,
           "sampler_settings": json.loads(results[0].idata.attrs.get("sampler_settings", "{}")),
           "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2, 2)}
    if "error_options_loo" in results[0].extra:
        out["error_options_kept"] = {k: bool(v["kept"]) for k, v in results[0].extra["error_options_loo"].items()}
    return out


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    return {name: version(name) for name in ("bayesnqp", "pymc", "pytensor", "nutpie", "numba")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--regions", type=int, default=2850)
    parser.add_argument("--only", default=",".join(FAMILIES))
    parser.add_argument("--one", help=argparse.SUPPRESS)  # the child process: one family, JSON on stdout
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    unknown = sorted(set(args.only.split(",")) - set(FAMILIES))
    if unknown:
        parser.error(f"unknown families {unknown}; choose from {', '.join(FAMILIES)}")
    if args.one:
        print("RESULT " + json.dumps(fit_one(args.one, args.regions)), flush=True)
        return
    results: dict[str, Any] = {"what": __doc__.split("\n")[0], "regions": args.regions, "bounds": BOUNDS,
                               "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                               "versions": _versions(),
                               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "families": {}}
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "NUMBA_OPT": os.environ.get("NUMBA_OPT", "1")}
    for family in args.only.split(","):
        began = time.perf_counter()
        try:
            run = subprocess.run([sys.executable, __file__, "--one", family, "--regions", str(args.regions)],
                                 capture_output=True, text=True, env=env, timeout=3 * BOUNDS["seconds"])
            lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
            row = json.loads(lines[-1][7:]) if run.returncode == 0 and lines else \
                {"error": (run.stderr.strip().splitlines() or ["no output"])[-1][:400]}
            row["returncode"] = run.returncode  # -9: killed (for memory, say)
        except subprocess.TimeoutExpired:
            row = {"error": f"stopped after {3 * BOUNDS['seconds']:.0f} s"}
        # the bound is held to the whole process (import, simulation, compile and sampling), not the fit alone
        row["process_seconds"] = round(time.perf_counter() - began, 1)
        row["within_bounds"] = bool("seconds" in row and row["process_seconds"] <= BOUNDS["seconds"]
                                    and row["peak_rss_gb"] <= BOUNDS["peak_rss_gb"])
        results["families"][family] = row
        print(family, row, flush=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
