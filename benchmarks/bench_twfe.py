"""Two-way panel model (Table 3 column 4): the package's model with nutpie against the same regression
written plainly in PyMC (non-centred city and year effects, PyMC's default NUTS).

The package's column (4) integrates the Normal city effects out analytically (options.city_effects =
"marginal"): it samples 26 parameters instead of 306 and draws the city effects afterwards from their
exact conditional; that post-sampling draw is timed separately and counted in the wall time.

Run by hand (not in CI):  PYTHONPATH=src python benchmarks/bench_twfe.py
Writes benchmarks/results/twfe.json. Same simulated 280 x 10 panel (city effects correlated with the
regressors), same draws/tune/chains, one process; reports wall time including compilation, sampling time,
minimum bulk ESS over the reported coefficients, ESS per second, r_hat, divergences, and the ratio.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import arviz as az
import numpy as np
import pymc as pm
import pyfixest as pf

from bayesnqp import simulate
from bayesnqp.bayes import panel
from bayesnqp.bayes.sampling import compile_nutpie
from bayesnqp.bayes.spec import load_spec
from bayesnqp.names import CONTROLS

DRAWS, TUNE, CHAINS, SEED = 1000, 1000, 4, 20240601
# Both samplers get the same number of parallel chains (PyMC would otherwise pick its own).
CORES = min(CHAINS, os.cpu_count() or 1)


def coef_stats(idata: az.InferenceData, var: str) -> dict[str, float]:
    post = idata.posterior[[var]]
    ess = az.ess(post, method="bulk")[var].values
    rhat = az.rhat(post)[var].values
    div = int(idata.sample_stats["diverging"].sum()) if "diverging" in idata.sample_stats else 0
    return {"min_ess_bulk": float(ess.min()), "max_r_hat": float(rhat.max()), "divergences": div}


def run_package(frame) -> tuple[dict, np.ndarray]:
    import nutpie

    spec = load_spec("bayes_table3_col4")
    pdata = panel.panel_data(frame, "nqp", spec.expand_terms(CONTROLS))
    t0 = time.perf_counter()
    model = panel.build_panel_model(pdata, spec)
    compiled = compile_nutpie(model)
    t1 = time.perf_counter()
    idata = nutpie.sample(compiled, draws=DRAWS, tune=TUNE, chains=CHAINS, seed=SEED, progress_bar=False,
                          cores=CORES)
    t2 = time.perf_counter()
    panel.draw_city_effects(idata, model, pdata, seed=SEED)
    t3 = time.perf_counter()
    stats = coef_stats(idata, "beta")
    out = {"city_effects": spec.options.get("city_effects", "sampled"),
           "free_parameters": int(sum(np.prod(model.initial_point()[v.name].shape) for v in model.value_vars)),
           "compile_s": t1 - t0, "sampling_s": t2 - t1, "city_effect_draw_s": t3 - t2, "wall_s": t3 - t0,
           **stats}
    out["ess_per_s_sampling"] = stats["min_ess_bulk"] / out["sampling_s"]
    out["ess_per_s_wall"] = stats["min_ess_bulk"] / out["wall_s"]
    return out, idata.posterior["beta"].mean(("chain", "draw")).values


def run_plain(frame) -> tuple[dict, np.ndarray]:
    """The same regression written plainly: non-centred city and year effects, PyMC's default NUTS."""
    pdata = panel.panel_data(frame, "nqp", ["agglomeration", *CONTROLS])
    Z = pdata.Z
    ym, ys = pdata.y.mean(), pdata.y.std()
    coords = {"city": list(pdata.cities), "year": list(pdata.years), "coef": list(pdata.terms)}
    t0 = time.perf_counter()
    with pm.Model(coords=coords):
        alpha = pm.Normal("alpha", 0, 1)
        b = pm.Normal("b", 0, 1, dims="coef")
        s_city = pm.HalfNormal("sigma_city", 1)
        s_year = pm.HalfNormal("sigma_year", 1)
        a_city = pm.Deterministic("city_effect", s_city * pm.Normal("z_city", 0, 1, dims="city"), dims="city")
        a_year = pm.Deterministic("year_effect", s_year * pm.Normal("z_year", 0, 1, dims="year"), dims="year")
        sigma = pm.HalfNormal("sigma", 1)
        mu = alpha + Z @ b + a_city[pdata.city_idx] + a_year[pdata.year_idx]
        pm.Normal("y", mu, sigma, observed=(pdata.y - ym) / ys)
        pm.Deterministic("beta", b * ys / pdata.x_sd, dims="coef")
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*BLAS.*")
            idata = pm.sample(draws=DRAWS, tune=TUNE, chains=CHAINS, random_seed=SEED, progressbar=False, cores=CORES,
                              compute_convergence_checks=False)
    t1 = time.perf_counter()
    stats = coef_stats(idata, "beta")
    sampling = float(idata.posterior.attrs.get("sampling_time", t1 - t0))
    out = {"wall_s": t1 - t0, "sampling_s": sampling, **stats}
    out["ess_per_s_sampling"] = stats["min_ess_bulk"] / sampling
    out["ess_per_s_wall"] = stats["min_ess_bulk"] / out["wall_s"]
    return out, idata.posterior["beta"].mean(("chain", "draw")).values


def main() -> None:
    frame, _ = simulate.simulate_panel(280, 10, seed=42, controls=CONTROLS)
    fe = pf.feols(f"nqp ~ agglomeration + {' + '.join(CONTROLS)} | city + year", data=frame.reset_index(),
                  vcov={"CRV1": "city"})
    package, b_pkg = run_package(frame)
    plain, b_plain = run_plain(frame)
    se = fe.se().to_numpy()
    result = {
        "panel": "simulated 280 cities x 10 years, city effects correlated with the regressors",
        "draws": DRAWS, "tune": TUNE, "chains": CHAINS, "cores": CORES,
        "load_average_1min_at_end": os.getloadavg()[0],
        "package_cre_nutpie": package, "plain_noncentred_pymc": plain,
        "ratio_ess_per_s_sampling": package["ess_per_s_sampling"] / plain["ess_per_s_sampling"],
        "ratio_ess_per_s_wall": package["ess_per_s_wall"] / plain["ess_per_s_wall"],
        "max_abs_z_vs_twfe": {"package": float(np.max(np.abs(b_pkg - fe.coef().to_numpy()) / se)),
                              "plain": float(np.max(np.abs(b_plain - fe.coef().to_numpy()) / se))},
    }
    out = Path(__file__).parent / "results" / "twfe.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
