"""Benchmark (run by hand, not in CI): spatial fits with this package's builders under nutpie against
PyMC's built-in spatial distributions / a dense log-determinant under PyMC's default NUTS.

* BYM2: ``bayesnqp.bayes.car.build_car_model`` (O(edges) ICAR CustomDist, hard per-component
  sum-to-zero) under nutpie vs the same BYM2 written with ``pm.ICAR`` (dense W, soft global sum-to-zero)
  under ``pm.sample``. Both on the largest connected component of the graph, since ``pm.ICAR`` cannot
  represent islands or several components.
* SDM: ``build_sdm_model`` (eigenvalue log-determinant) under nutpie vs the same likelihood with a dense
  ``log|det(I - rho W)|`` under ``pm.sample``.

Reports wall time, minimum bulk ESS over the reported quantities, ESS/s, max r_hat and divergences; writes
benchmarks/results/spatial.json. Usage: ``PYTHONPATH=src python benchmarks/bench_spatial.py [--draws N]
[--parts bym2_integrated,sdm]``. The default BYM2 is the integrated form (city effects integrated out of
the likelihood, drawn afterwards); the centred spectral form samples them, and the edge-list form is the
``noncentred`` option (what ``pm.ICAR`` also is), so the like-for-like ratio is ``ratio_bym2_ess_per_s``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import pymc as pm
import pytensor.tensor as pt

from bayesnqp.bayes import car, sdm
from bayesnqp.bayes.sampling import SamplerSettings, sample
from bayesnqp.bayes.spec import load_spec
from bayesnqp.data.weights import SpatialWeights

ROOT = Path(__file__).resolve().parent


def _weights() -> SpatialWeights:
    try:
        from bayesnqp.data.geography import load_geography

        w = load_geography().weights
    except (ImportError, FileNotFoundError):  # fall back to a lattice when the geography is missing
        side = 17
        edges = [(i * side + j, i * side + j + 1) for i in range(side) for j in range(side - 1)]
        edges += [(i * side + j, (i + 1) * side + j) for i in range(side - 1) for j in range(side)]
        w = SpatialWeights(tuple(f"{100000 + k}" for k in range(side * side)), np.array(edges))
    big = np.bincount(w.components).argmax()
    return w.subset([c for c, k in zip(w.ids, w.components) if k == big])


def _panel(w: SpatialWeights, t: int = 10, seed: int = 0, rho: float = 0.3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = w.n
    wd = w.row_standardised.toarray()
    x = rng.normal(size=(n, t, 2))
    mu = rng.normal(size=n)
    a = np.eye(n) - rho * wd
    y = np.stack([np.linalg.solve(a, x[:, k] @ [1.0, -0.5] + wd @ x[:, k] @ [0.5, 0.3] + mu + 0.1 * k
                                  + 0.5 * rng.normal(size=n)) for k in range(t)], axis=1)
    idx = pd.MultiIndex.from_product([list(w.ids), list(range(2013, 2013 + t))], names=["city", "year"])
    return pd.DataFrame({"nqp": y.ravel(), "agglomeration": x[..., 0].ravel(), "develop": x[..., 1].ravel()},
                        index=idx)


def _measure(label: str, fn, var_names: list[str], settings: SamplerSettings | None = None) -> dict:
    start = time.perf_counter()
    idata = fn()
    wall = time.perf_counter() - start
    post = idata.posterior[var_names]
    ess = az.ess(post, method="bulk")
    min_ess = float(min(np.min(ess[v].values) for v in ess.data_vars))
    rhat = az.rhat(post)
    max_rhat = float(max(np.max(rhat[v].values) for v in rhat.data_vars))
    div = int(idata.sample_stats["diverging"].sum()) if "diverging" in idata.sample_stats else -1
    out = {"label": label, "wall_s": wall, "min_ess_bulk": min_ess, "ess_per_s": min_ess / wall,
           "max_r_hat": max_rhat, "divergences": div}
    if settings is not None:
        out["settings"] = {"sampler": settings.sampler, "draws": settings.draws, "tune": settings.tune,
                           "chains": settings.chains}
    print(json.dumps(out), flush=True)
    return out


def _bym2_icar_reference(frame: pd.DataFrame, w: SpatialWeights) -> pm.Model:
    """The same BYM2 with pm.ICAR (single component, so a single zero-sum constraint is exact)."""
    y = frame["nqp"].to_numpy().reshape(w.n, -1)
    x = frame[["agglomeration", "develop"]].to_numpy().reshape(w.n, y.shape[1], 2)
    ys = (y - y.mean()) / y.std()
    xs = (x - x.reshape(-1, 2).mean(0)) / x.reshape(-1, 2).std(0)
    scale = float(car.bym2_scaling_factors(w)[0])
    coords = {"city": list(w.ids), "year": list(range(y.shape[1])), "coef": ["agglomeration", "develop"]}
    with pm.Model(coords=coords) as m:
        alpha = pm.Normal("alpha", 0, 1)
        beta = pm.Normal("beta_std", 0, 1, dims="coef")
        sigma_city = pm.HalfNormal("sigma_city", 1)
        rho = pm.Beta("rho", 1, 1)
        u = pm.ICAR("u", W=w.binary.toarray(), dims="city")
        v = pm.Normal("u_unstruct", 0, 1, dims="city")
        b = sigma_city * (pt.sqrt(rho / scale) * u + pt.sqrt(1 - rho) * v)
        gamma = pm.ZeroSumNormal("year_std", sigma=pm.HalfNormal("sigma_year", 1), dims="year")
        sigma = pm.HalfNormal("sigma_std", 1)
        pm.Normal("nqp", alpha + pt.tensordot(xs, beta, axes=[[2], [0]]) + b[:, None] + gamma[None, :], sigma,
                  observed=ys, dims=("city", "year"))
    return m


def _sdm_dense_reference(data: sdm.SdmData, w: SpatialWeights, spec) -> pm.Model:
    """build_sdm_model's likelihood with the log-determinant from a dense det inside the graph."""
    m = sdm.build_sdm_model(data, w, spec, "sdm")
    n, t = w.n, len(data.years)
    wd = w.row_standardised.toarray()
    with m:
        rho = m["rho"]
        dense = pt.log(pt.abs(pt.nlinalg.det(pt.eye(n) - rho * wd)))
        # replace the eigenvalue log-determinant by the dense one (same value, O(n^3) per gradient)
        m.potentials.remove(m["log_jacobian"])
        pm.Potential("log_jacobian_dense", (t - 1) * (dense - pt.log1p(-rho)))
    return m


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--tune", type=int, default=1000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--parts", default="bym2_integrated,bym2_centred,bym2_noncentred,bym2_reference,sdm,"
                                           "sdm_reference",
                        help="comma-separated subset to run (results of other parts already on disk are kept)")
    args = parser.parse_args(argv)
    w = _weights()
    frame = _panel(w)
    nut = SamplerSettings(draws=args.draws, tune=args.tune, chains=args.chains, seed=1)
    ref = nut.replace(sampler="pymc")
    # per-entry sampler settings are stored with each measurement (parts may be run separately)
    results: dict[str, dict] = {"n_regions": w.n, "n_edges": int(len(w.edges)), "years": 10}
    out = ROOT / "results" / "spatial.json"
    if out.is_file():  # parts run earlier are kept; the ones run now replace theirs
        results = {**json.loads(out.read_text()), **results}
    parts = set(args.parts.split(","))
    car_spec = load_spec("bayes_car")
    car_vars = ["beta_std", "rho", "sigma_city_std", "sigma_std"]

    def car_run(param: str):
        spec = car_spec.replace(options={**car_spec.options, "parametrisation": param})
        return lambda: sample(car.build_car_model(frame, ["develop"], w, spec, "bym2"), nut.replace(target_accept=0.9))

    if "bym2_integrated" in parts:
        results["bym2_integrated_nutpie"] = _measure("bym2 city effects integrated out (default), nutpie",
                                                     car_run("integrated"), car_vars, nut)
    if "bym2_centred" in parts:
        results["bym2_spectral_nutpie"] = _measure("bym2 spectral (centred), nutpie", car_run("centred"),
                                                   car_vars, nut)
    if "bym2_noncentred" in parts:
        results["bym2_nutpie"] = _measure("bym2 edge-list ICAR (non-centred), nutpie", car_run("noncentred"), car_vars, nut)
    if "bym2_reference" in parts:
        results["bym2_pm_icar_pymc"] = _measure(
            "bym2 pm.ICAR, PyMC NUTS", lambda: sample(_bym2_icar_reference(frame, w), ref.replace(target_accept=0.9)),
            ["beta_std", "rho", "sigma_city", "sigma_std"], ref)
    sdm_spec = load_spec("bayes_sdm")
    data = sdm.sdm_data(frame, ["agglomeration", "develop"], w)
    sdm_vars = ["beta_std", "theta_std", "rho", "sigma_std"]
    if "sdm" in parts:
        results["sdm_nutpie"] = _measure("sdm eigenvalue logdet, nutpie",
                                         lambda: sample(sdm.build_sdm_model(data, w, sdm_spec, "sdm"), nut), sdm_vars, nut)
    if "sdm_reference" in parts:
        results["sdm_dense_pymc"] = _measure("sdm dense logdet, PyMC NUTS",
                                             lambda: sample(_sdm_dense_reference(data, w, sdm_spec), ref), sdm_vars, ref)
    for key, a, b in (("ratio_bym2_ess_per_s", "bym2_nutpie", "bym2_pm_icar_pymc"),
                      ("ratio_bym2_spectral_ess_per_s", "bym2_spectral_nutpie", "bym2_pm_icar_pymc"),
                      ("ratio_bym2_integrated_ess_per_s", "bym2_integrated_nutpie", "bym2_pm_icar_pymc"),
                      ("ratio_sdm_ess_per_s", "sdm_nutpie", "sdm_dense_pymc")):
        if a in results and b in results:
            results[key] = results[a]["ess_per_s"] / results[b]["ess_per_s"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k.startswith("ratio")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
