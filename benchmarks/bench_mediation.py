"""Time the joint latent-mediator SEM on a 280 x 10 panel (simulated, and the bundled demo if present).

For each panel: nutpie compile seconds, sampling seconds (4 chains x 1000 draws + 1000 tune, 2 cores),
minimum bulk / tail ESS and maximum r_hat over the reported quantities, divergences, ESS per second, and
the wall time of the whole ``fit_mediation`` call (sampling plus sensitivity grid, PPC and figures).
With ``--latent`` the same model with the 3 x n latent values sampled explicitly (non-centred) is timed
beside it, to show what marginalising eta buys.

    PYTHONPATH=src python benchmarks/bench_mediation.py [--latent] [--draws 1000]

Results go to benchmarks/results/mediation.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bayesnqp import simulate
from bayesnqp import names
from bayesnqp.bayes import mediation as med
from bayesnqp.bayes.sampling import SamplerSettings, compile_nutpie
from bayesnqp.checks.diagnostics import diagnose
from bayesnqp.paths import bundled

RESULTS = Path(__file__).resolve().parent / "results" / "mediation.json"


def demo_frame() -> pd.DataFrame | None:
    try:
        csv = bundled("demo") / "demo_panel.csv"
    except FileNotFoundError:
        return None
    if not csv.is_file():
        return None
    from bayesnqp.measures import entropy_weights, location_quotient

    raw = pd.read_csv(csv, dtype={names.CITY: str}).set_index([names.CITY, names.YEAR]).sort_index()
    raw[names.NQP] = entropy_weights(raw[list(names.NQP_INDICATOR_NAMES)].to_numpy())[1]
    raw[names.AGGLOMERATION] = location_quotient(raw[names.DIGITAL_EMPLOYMENT], raw[names.TOTAL_EMPLOYMENT])
    return raw


def latent_model(data: med.MediationData):
    """The same SEM with eta sampled (non-centred), for comparison only."""
    import pymc as pm
    import pytensor.tensor as pt

    k = len(data.mechanisms)
    mech_of = np.repeat(np.arange(k), 2)
    coords = {names.MECHANISM: list(data.mechanisms), names.INDICATOR: list(data.indicators),
              "obs": np.arange(len(data.x))}
    with pm.Model(coords=coords) as model:
        a = pm.Normal("a_std", 0, 1, dims=names.MECHANISM)
        b = pm.Normal("b_std", 0, 1, dims=names.MECHANISM)
        c = pm.Normal("c_std", 0, 1)
        lam_free = pm.Normal("loading_std", 0.5, 1, dims=names.MECHANISM)
        theta = pm.HalfNormal("theta", 1, dims=names.INDICATOR)
        sigma = pm.HalfNormal("sigma", 1)
        chol, _, _ = pm.LKJCholeskyCov("zeta", n=k, eta=2.0, sd_dist=pm.HalfNormal.dist(1.0, shape=k),
                                       compute_corr=True)
        raw = pm.Normal("eta_raw", 0, 1, dims=("obs", names.MECHANISM))
        eta = data.x[:, None] * a + raw @ chol.T
        lam = pt.stack([pt.ones(k), lam_free], axis=1).reshape((2 * k,))
        pm.Normal("m", eta[:, mech_of] * lam, theta, observed=data.z[:, :-1], dims=("obs", names.INDICATOR))
        pm.Normal("y", c * data.x + eta @ b, sigma, observed=data.z[:, -1], dims="obs")
    return model


def time_model(model, draws: int, tune: int, seed: int, var_names: list[str]) -> dict:
    import nutpie

    t0 = time.perf_counter()
    compiled = compile_nutpie(model)
    t1 = time.perf_counter()
    idata = nutpie.sample(compiled, draws=draws, tune=tune, chains=4, cores=2, seed=seed, progress_bar=False,
                          target_accept=0.9)
    t2 = time.perf_counter()
    diag = diagnose(idata, var_names)
    return {"compile_s": round(t1 - t0, 2), "sampling_s": round(t2 - t1, 2),
            "min_ess_bulk": round(diag.min_ess_bulk, 1), "min_ess_tail": round(diag.min_ess_tail, 1),
            "max_r_hat": round(diag.max_r_hat, 4), "divergences": diag.divergences,
            "min_ess_bulk_per_s": round(diag.min_ess_bulk / (t2 - t1), 1),
            "mean_leapfrog_steps": float(idata.sample_stats["n_steps"].mean())}


def bench_panel(label: str, frame: pd.DataFrame, draws: int, latent: bool) -> dict:
    data = med.prepare_mediation_data(frame, names.CONTROLS, names.MECHANISMS)
    out: dict = {"panel": label, "n": int(len(data.x)), "n_eff": data.n_eff}
    # ESS is judged on the sampled standardised parameters (the reported quantities are deterministic
    # functions of them and are diagnosed in the full fit below).
    params = ["a_std", "b_std", "c_std", "loading_std", "theta", "sigma"]
    out["marginalised"] = time_model(med.build_model(data), draws, draws, 1, params)
    t0 = time.perf_counter()
    result = med.fit_mediation(frame, names.CONTROLS, names.MECHANISMS,
                               SamplerSettings(draws=draws, tune=draws, chains=4, cores=2, seed=1))
    out["fit_mediation_wall_s"] = round(time.perf_counter() - t0, 2)
    d = result.diagnostics
    out["reported"] = {"min_ess_bulk": round(d.min_ess_bulk, 1), "min_ess_tail": round(d.min_ess_tail, 1),
                       "max_r_hat": round(d.max_r_hat, 4), "divergences": d.divergences,
                       "flags": list(d.flags)}
    out["estimates"] = {k: {"mean": float(r["mean"]), "ci": [float(r["ci_low"]), float(r["ci_high"])]}
                        for k, r in result.summary.iterrows()}
    out["sensitivity_thresholds"] = result.extra["sensitivity_thresholds"]["one_at_a_time"]
    if latent:
        out["latent_eta"] = time_model(latent_model(data), draws, draws, 1, params)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--latent", action="store_true", help="also time the explicit latent-eta model")
    args = parser.parse_args()
    runs = []
    frame, truth = simulate.simulate_mediation_panel(280, 10, seed=7)
    sim = bench_panel("simulated 280 x 10", frame, args.draws, args.latent)
    sim["truth"] = truth
    runs.append(sim)
    demo = demo_frame()
    if demo is not None:
        runs.append(bench_panel("demo", demo, args.draws, False))
    report = {"machine": platform.processor() or platform.machine(), "chains": 4, "cores": 2,
              "draws": args.draws, "tune": args.draws, "runs": runs}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, default=float))
    print(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
