"""Cost per gradient at county size: each spatial-panel model family on the 280-region panel shape and on
the county-size panel (2,850 regions x 10 years, ``bayesnqp.simulate.county_panel``), side by side.

For each family and size: build the model as the package does, compile its log-density and gradient with
the numba backend (what nutpie samples), time repeated evaluations at the initial point, and record the
process's peak memory. The goal of the scale issue is at most 12x the cost for 10x the regions.

Families: column (4) iid (two-way, city effects integrated out), SAR and SDM (log-determinant from the
eigenvalues of W, effects outside the gradient), BYM2 (city effects integrated out, up to 3,000 regions) and
Leroux. Sampling time is not measured here: it is cost per gradient x gradients per draw, and the
second factor depends on the posterior, not the panel size.

Run by hand (not in CI):  PYTHONPATH=src python benchmarks/bench_county.py
Writes benchmarks/results/county.json.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("NUMBA_OPT", "1")  # as the command line compiles (read when numba is imported)
RESULTS = Path(__file__).parent / "results" / "county.json"
EVALS = 200


def panels() -> dict[str, Any]:
    from bayesnqp.simulate import county_graph, county_panel

    return {"280 x 10": county_panel(county_graph(n_regions=280, seed=5, n_islands=1), seed=5),
            "2850 x 10": county_panel(seed=5)}


def build(family: str, frame, weights):
    from bayesnqp.bayes import panel as bp
    from bayesnqp.bayes import car, sdm
    from bayesnqp.bayes.spec import load_spec

    if family == "col4_iid":
        spec = load_spec("bayes_table3_col4_iid")
        pdata = bp.panel_data(frame.set_index(["city", "year"]), spec.outcome, ["agglomeration", "develop"])
        return bp.build_panel_model(pdata, spec)
    if family in ("sar", "sdm"):
        spec = load_spec(f"bayes_{family}")
        data = sdm.sdm_data(frame.set_index(["city", "year"]), ["agglomeration", "develop"], weights)
        return sdm.build_sdm_model(data, weights, spec, model=family)
    kind = {"bym2": "bym2", "leroux": "leroux"}[family]
    spec = load_spec("bayes_car" if kind == "bym2" else "bayes_car_leroux")
    return car.build_car_model(frame.set_index(["city", "year"]), ["develop"], weights, spec, kind=kind)


def time_gradient(model) -> dict[str, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        began = time.perf_counter()
        fn = model.logp_dlogp_function(ravel_inputs=True, mode="NUMBA")
        fn.set_extra_values({})
        point = model.initial_point()
        x = np.concatenate([np.asarray(point[v.name], dtype=float).ravel() for v in fn._grad_vars])
        fn(x)
        compiled = time.perf_counter() - began
        began = time.perf_counter()
        for _ in range(EVALS):
            fn(x)
        per = (time.perf_counter() - began) / EVALS
    return {"compile_seconds": round(compiled, 2), "ms_per_gradient": round(1000 * per, 4),
            "parameters": int(x.size)}


def main() -> None:
    results: dict[str, Any] = {"what": __doc__.split("\n")[0], "evals": EVALS,
                               "machine": {"platform": platform.platform()}, "families": {}}
    data = panels()
    for family in ("col4_iid", "sar", "sdm", "bym2", "leroux"):
        row: dict[str, Any] = {}
        for size, (frame, weights, _) in data.items():
            try:
                row[size] = time_gradient(build(family, frame, weights))
            except Exception as exc:  # noqa: BLE001 - recorded, the other families still run
                row[size] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            row[size]["peak_rss_mb_so_far"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            print(family, size, row[size], flush=True)
        small, big = row.get("280 x 10", {}), row.get("2850 x 10", {})
        if "ms_per_gradient" in small and "ms_per_gradient" in big:
            row["ratio_2850_to_280"] = round(big["ms_per_gradient"] / small["ms_per_gradient"], 1)
        results["families"][family] = row
        RESULTS.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
