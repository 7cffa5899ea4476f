"""Simulation-based calibration (Talts et al. 2018) of the honest column (4) model and the BYM2 model.

For each of N simulations: draw every parameter from the model's own prior, draw a data set from the
model's own likelihood given them, fit the model to it and record the rank of the prior draw among L
thinned posterior draws. If the sampler and the density agree with the generative model, each rank is
uniform on 0..L. Reported per parameter: the rank histogram (B bins), the chi-square statistic of the
bins against uniform counts (B - 1 degrees of freedom) with its p-value, and the mean of rank / L (0.5
when the posterior is not shifted against the prior draw).

* ``honest``: ``bayes_table3_col4`` (AR(1) errors, hierarchical log city scales, random city slopes, city
  effects integrated out) built once on a small template panel (``calibration_panel``, ar1_scales).
  The data scales (y centre and sd, x sd) stay at the template's values, so the prior is one fixed
  proper prior on the standardised scale; only the outcome is swapped between simulations (with_data).
  Data are drawn by the model's own random function (city effects at 0: the density is that of the
  within-city contrasts, which the flat-prior city effects do not change).
* ``bym2``: ``bayes_car`` in the centred spectral BYM2 form (``parametrisation = "centred"``, ZeroSumNormal
  year effects, hierarchical year sd) on a rook lattice. Its builder passes the observed outcome as a
  constant; here it is swapped for a data variable after the build, so one compiled model serves every
  simulation.
* ``bym2_integrated``: the default BYM2 form (city effects integrated out of the likelihood, drawn
  afterwards from their exact conditional) fitted to data simulated by the centred model above, so the
  check covers the integrated likelihood and the conditional draws of the city level together (one
  compiled model; the rotated outcome is swapped in with ``with_data``).

Run by hand (not in CI):  PYTHONPATH=src python benchmarks/bench_sbc.py [--sims 150]
[--models honest bym2 bym2_integrated]
Writes benchmarks/results/sbc.json and benchmarks/results/sbc.png.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

RESULTS = Path(__file__).parent / "results"
L = 99          # thinned posterior draws per fit: ranks 0..99, 100 values
BINS = 10       # 10 ranks per bin
DRAWS, TUNE, CHAINS = 500, 500, 2


def _ranks(prior_value: float, draws: np.ndarray) -> int:
    """Rank of the prior draw among L posterior draws spread evenly over the chains (thinning)."""
    flat = np.asarray(draws).reshape(-1)
    pick = np.round(np.linspace(0, flat.size - 1, L)).astype(int)
    return int((flat[pick] < prior_value).sum())


def honest_model(n_city: int, n_year: int, seed: int):
    from bayesnqp.bayes import panel
    from bayesnqp.bayes.spec import load_spec
    from bayesnqp.simulate import calibration_panel

    spec = load_spec("bayes_table3_col4")
    frame, _ = calibration_panel("ar1_scales", seed, n_city=n_city, n_year=n_year)
    pdata = panel.panel_data(frame, spec.outcome, spec.expand_terms(("develop",)))
    model = panel.build_panel_model(pdata, spec)
    params = {"beta_std[agglomeration]": ("beta_std", 0), "beta_std[develop]": ("beta_std", 1),
              "sigma_std": ("sigma_std", None), "phi": ("phi", None), "city_scale_sd": ("city_scale_sd", None),
              "slope_sd_std": ("slope_sd_std", None), "year_effect_std[0]": ("year_effect_std", 0),
              "city_scale_z[0]": ("city_scale_z", 0)}
    return model, "nqp", "y", params, spec


def lattice(rows: int, cols: int):
    from bayesnqp.data.weights import SpatialWeights

    ids = [f"{900000 + i:06d}" for i in range(rows * cols)]
    pairs = []
    for r in range(rows):
        for c in range(cols):
            k = r * cols + c
            if c + 1 < cols:
                pairs.append((ids[k], ids[k + 1]))
            if r + 1 < rows:
                pairs.append((ids[k], ids[k + cols]))
    return SpatialWeights.from_pairs(ids, pairs)


def bym2_template(rows: int, cols: int, n_year: int, seed: int, parametrisation: str):
    """The lattice, a template panel (standard-Normal columns) and the bayes_car spec in one form."""
    from bayesnqp import names
    from bayesnqp.bayes.spec import load_spec

    weights = lattice(rows, cols)
    rng = np.random.default_rng(seed)
    n = weights.n
    index = pd.MultiIndex.from_product([list(weights.ids), list(range(2013, 2013 + n_year))],
                                       names=[names.CITY, names.YEAR])
    frame = pd.DataFrame({names.NQP: rng.standard_normal(n * n_year),
                          names.AGGLOMERATION: rng.standard_normal(n * n_year),
                          "develop": rng.standard_normal(n * n_year)}, index=index)
    spec = load_spec("bayes_car")
    return weights, frame, spec.replace(options={**spec.options, "parametrisation": parametrisation})


def bym2_model(rows: int, cols: int, n_year: int, seed: int):
    import pymc as pm

    from bayesnqp import names
    from bayesnqp.bayes import car

    weights, frame, spec = bym2_template(rows, cols, n_year, seed, "centred")
    model = car.build_car_model(frame, ("develop",), weights, spec, kind="bym2")
    # the builder observes a constant; make it a data variable so one compilation serves every draw
    obs = model[spec.outcome]
    old = model.rvs_to_values[obs]
    with model:
        data = pm.Data("y_sbc", np.asarray(old.data), dims=(names.CITY, names.YEAR))
    model.rvs_to_values[obs] = data
    model.values_to_rvs.pop(old, None)
    model.values_to_rvs[data] = obs
    params = {"beta_std[agglomeration]": ("beta_std", 0), "beta_std[develop]": ("beta_std", 1),
              "alpha": ("alpha", None), "sigma_std": ("sigma_std", None),
              "sigma_city_std": ("sigma_city_std", None), "rho": ("rho", None),
              "sigma_year": ("sigma_year", None), "year_effect_std[0]": ("year_effect_std", 0),
              "city_level_std[0]": ("city_level_std", 0)}
    return model, spec.outcome, "y_sbc", params, spec


def run_integrated_bym2_sbc(sims: int, seed: int) -> dict[str, Any]:
    """SBC of the integrated BYM2: data from the centred model's prior predictive, fits of the integrated
    model, ranks of the generating parameters and of city 0's level c_0 = alpha + xbar_0 beta + b_0."""
    import nutpie
    import pymc as pm

    from bayesnqp.bayes import car

    generator, obs_name, _, params, spec = bym2_model(5, 5, 4, seed)
    prior = pm.sample_prior_predictive(draws=sims, model=generator, random_seed=seed)
    y_draws = prior.prior_predictive[obs_name].values[0]
    weights, frame, spec = bym2_template(5, 5, 4, seed, "integrated")
    basis = car.bym2_basis(weights, car.bym2_scaling_factors(weights))
    model = car.build_car_model(frame, ("develop",), weights, spec, kind="bym2", basis=basis)
    _, xs, _, _ = car.standardised_panel(frame, ("develop",), weights, spec)  # the template's, as the generator's
    xbar = xs.mean(axis=1)
    compiled = nutpie.compile_pymc_model(model)
    target_accept = float(spec.sampler.get("target_accept", 0.9))
    ranks: dict[str, list[int]] = {p: [] for p in params}
    fits = []
    t0 = time.perf_counter()
    for k in range(sims):
        t1 = time.perf_counter()
        rotated = car.IntegratedBym2Data.rotate(y_draws[k], xs, basis)
        fit = nutpie.sample(compiled.with_data(y_within=rotated.y_within, y_between=rotated.y_between),
                            draws=DRAWS, tune=TUNE, chains=CHAINS, cores=1, seed=seed + k, progress_bar=False,
                            target_accept=target_accept)
        car.draw_integrated_city_effects(fit, y_draws[k], xs, basis, 1.0, spec.outcome, list(weights.ids),
                                         seed=seed + k)
        post, stats = fit.posterior, fit.sample_stats
        level0 = post["alpha"].values + post["beta_std"].values @ xbar[0]
        for label, (var, i) in params.items():
            truth = prior.prior[var].values[0, k]
            if var == "city_level_std":
                draws = level0 + post["city_effect"].values[..., 0]
            else:
                draws = post[var].values
            if i is not None:
                truth = truth.reshape(-1)[i]
                if var != "city_level_std":
                    draws = draws.reshape(CHAINS, DRAWS, -1)[..., i]
            ranks[label].append(_ranks(float(truth), draws))
        fits.append(_fit_record(stats, time.perf_counter() - t1))
    return _run_record(f"{spec.id} (integrated)", "5 x 5 rook lattice (25 regions) x 4 years, simulated by the "
                       "centred model", sims, target_accept, time.perf_counter() - t0, ranks, fits)


def run_sbc(which: str, sims: int, seed: int) -> dict[str, Any]:
    import nutpie
    import pymc as pm

    if which == "bym2_integrated":
        return run_integrated_bym2_sbc(sims, seed)
    if which == "honest":
        model, obs_name, data_name, params, spec = honest_model(30, 6, seed)
        panel_text = "30 cities x 6 years (template: calibration_panel ar1_scales)"
        target_accept = 0.8
    else:
        model, obs_name, data_name, params, spec = bym2_model(5, 5, 4, seed)
        panel_text = "5 x 5 rook lattice (25 regions) x 4 years"
        target_accept = float(spec.sampler.get("target_accept", 0.9)) if hasattr(spec, "sampler") else 0.9
    prior = pm.sample_prior_predictive(draws=sims, model=model, random_seed=seed)
    y_draws = prior.prior_predictive[obs_name].values[0]
    compiled = nutpie.compile_pymc_model(model)
    ranks: dict[str, list[int]] = {p: [] for p in params}
    fits = []
    t0 = time.perf_counter()
    for k in range(sims):
        t1 = time.perf_counter()
        fit = nutpie.sample(compiled.with_data(**{data_name: y_draws[k]}), draws=DRAWS, tune=TUNE, chains=CHAINS,
                            cores=1, seed=seed + k, progress_bar=False, target_accept=target_accept)
        post, stats = fit.posterior, fit.sample_stats
        for label, (var, i) in params.items():
            truth = prior.prior[var].values[0, k]
            draws = post[var].values
            if i is not None:
                truth, draws = truth.reshape(-1)[i], draws.reshape(CHAINS, DRAWS, -1)[..., i]
            ranks[label].append(_ranks(float(truth), draws))
        fits.append(_fit_record(stats, time.perf_counter() - t1))
    return _run_record(spec.id, panel_text, sims, target_accept, time.perf_counter() - t0, ranks, fits)


def _fit_record(stats: Any, seconds: float) -> dict[str, Any]:
    return {"seconds": seconds, "divergences": int(stats["diverging"].sum()),
            "step_size": float(stats["step_size"].mean()), "leapfrog_steps": float(stats["n_steps"].mean())}


def _run_record(model: str, panel: str, sims: int, target_accept: float, seconds: float,
                ranks: dict[str, list[int]], fits: list[dict[str, Any]]) -> dict[str, Any]:
    return {"model": model, "panel": panel, "simulations": sims, "posterior_draws": f"{CHAINS} x {DRAWS}",
            "tune": TUNE, "target_accept": target_accept, "thinned_draws": L, "bins": BINS,
            "seconds": seconds, "ranks": ranks,
            "fits": {"share_with_divergences": float(np.mean([f["divergences"] > 0 for f in fits])),
                     "mean_seconds": float(np.mean([f["seconds"] for f in fits])),
                     "mean_step_size": float(np.mean([f["step_size"] for f in fits])),
                     "mean_leapfrog_steps": float(np.mean([f["leapfrog_steps"] for f in fits]))}}


def uniformity(ranks: list[int]) -> dict[str, Any]:
    from scipy import stats

    counts = np.bincount(np.asarray(ranks) * BINS // (L + 1), minlength=BINS)
    expected = len(ranks) / BINS
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    return {"counts": counts.tolist(), "chi2": chi2, "df": BINS - 1, "p_value": float(stats.chi2.sf(chi2, BINS - 1)),
            "mean_rank_fraction": float(np.mean(ranks) / L)}


def figure(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from scipy import stats

    rows = [(m, p) for m, r in results.items() for p in r["uniformity"]]
    ncol = 5
    nrow = int(np.ceil(len(rows) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.6 * ncol, 2.0 * nrow), squeeze=False)
    for ax, (m, p) in zip(axes.ravel(), rows):
        u = results[m]["uniformity"][p]
        n = sum(u["counts"])
        ax.bar(np.arange(BINS), u["counts"], width=0.9, color="C0")
        lo, hi = stats.binom.ppf([0.005, 0.995], n, 1 / BINS)
        ax.axhspan(lo, hi, color="0.85", zorder=0)
        ax.axhline(n / BINS, color="k", lw=0.7)
        ax.set_title(f"{m}: {p}\nchi2 {u['chi2']:.1f}, p {u['p_value']:.2f}", fontsize=7)
        ax.set_xticks([])
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[len(rows):]:
        ax.axis("off")
    fig.suptitle("SBC rank histograms (grey: 99% band of a uniform bin count)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sims", type=int, default=150)
    parser.add_argument("--models", nargs="*", default=["honest", "bym2", "bym2_integrated"])
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--out", type=Path, default=RESULTS / "sbc.json")
    args = parser.parse_args()
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    warnings.filterwarnings("ignore")
    results: dict[str, Any] = {}
    if args.out.exists():  # models run separately accumulate in one file
        results = json.loads(args.out.read_text()).get("models", {})
    for which in args.models:
        res = run_sbc(which, args.sims, args.seed)
        res["uniformity"] = {p: uniformity(r) for p, r in res["ranks"].items()}
        results[which] = res
        for p, u in res["uniformity"].items():
            print(which, p, f"chi2 {u['chi2']:.1f} p {u['p_value']:.3f} mean rank {u['mean_rank_fraction']:.3f}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"what": __doc__.split("\n\n")[0], "models": results}, indent=1) + "\n")
        figure(results, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
